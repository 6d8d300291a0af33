"""PNG montages for people who read scans: 2D cuts oriented as a radiologist expects, colour overlays
with a colour bar in the map's own units, and orientation letters on every panel.

Cuts follow the volume's direction cosines (io.Geometry, LPS): axial and coronal panels are shown in the
radiological convention (the patient's right on the left of the screen, anterior or superior at the top),
sagittal panels with anterior on the left. The letters on each panel's sides are computed from the geometry,
so an unusually stored volume shows its true sides. No Qt, no matplotlib: Pillow and NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .io import Geometry

# colour maps sampled at 9 evenly spaced points (matplotlib's inferno and viridis), interpolated linearly
_CMAPS = {
    "inferno": [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85), (227, 89, 51),
                (249, 140, 10), (249, 201, 50), (252, 255, 164)],
    "viridis": [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129),
                (92, 200, 99), (170, 220, 50), (253, 231, 37)],
}
_POS, _NEG = "LPS", "RAI"  # the letter at the positive / negative end of LPS axis x, y, z
_PLANE = {0: "sagittal", 1: "coronal", 2: "axial"}  # plane perpendicular to the dominant LPS axis


def colormap(values: np.ndarray, name: str) -> np.ndarray:
    """RGB uint8 (..., 3) of ``values`` in 0..1 (clipped) through colour map ``name`` (inferno, viridis)."""
    if name not in _CMAPS:
        raise InputError(f"colour map must be one of {', '.join(_CMAPS)}, not {name!r}")
    stops = np.asarray(_CMAPS[name], dtype=np.float32)
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).round().astype(np.uint8)


def _dominant(v: np.ndarray) -> tuple[int, int]:
    """(LPS axis, sign) that a physical direction points along most."""
    k = int(np.argmax(np.abs(v)))
    return k, (1 if v[k] >= 0 else -1)


@dataclass(frozen=True)
class Cut:
    """How a 2D cut of a (z, y, x) volume is shown: array axes down and across the screen, their flips."""

    axis: int  # the array axis held fixed
    index: int
    rows: int  # array axis shown top to bottom
    cols: int  # array axis shown left to right
    flip_rows: bool
    flip_cols: bool
    plane: str  # axial / coronal / sagittal
    left: str  # patient side at the screen's left and right edges (R, L, A, P, S, I)
    right: str
    pixel_mm: tuple[float, float]  # (row, column) spacing on screen


def plan_cut(geometry: Geometry, shape: Sequence[int], axis: int, index: int) -> Cut:
    """Orient the cut of a (z, y, x) volume at ``index`` along array ``axis`` for a radiologist (see module doc)."""
    if axis not in (0, 1, 2):
        raise InputError(f"cut axis must be 0, 1 or 2 (array z, y, x), not {axis!r}")
    if not 0 <= index < shape[axis]:
        raise InputError(f"cut index {index} is outside 0..{shape[axis] - 1} along array axis {axis}")
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    vec = {a: d[:, 2 - a] for a in range(3)}  # LPS direction of array axis a (column j = file axis j = array 2 - j)
    plane_axis, _ = _dominant(vec[axis])
    a, b = (x for x in range(3) if x != axis)
    # down the screen: superior-inferior if the plane has it, else anterior-posterior (axial cuts)
    up = 2 if plane_axis != 2 else 1
    rows = a if abs(vec[a][up]) >= abs(vec[b][up]) else b
    cols = b if rows == a else a
    rk, rs = _dominant(vec[rows])
    # top of the screen: superior (z+, S) or anterior (y-, A): flip when increasing rows already go there
    flip_rows = (rs > 0) if rk == 2 else (rs < 0)
    ck, cs = _dominant(vec[cols])
    # screen right: patient left (x+, L) in axial/coronal cuts; posterior (y+, P) in sagittal ones
    flip_cols = cs < 0  # so the screen's right is the positive end (L or P) and its left the negative (R or A)
    sp = geometry.spacing
    return Cut(axis, int(index), rows, cols, flip_rows, flip_cols, _PLANE[plane_axis], _NEG[ck], _POS[ck],
               (float(sp[rows]), float(sp[cols])))


def take(volume: np.ndarray, cut: Cut) -> np.ndarray:
    """The 2D cut of ``volume`` (z, y, x) as shown on screen (rows down, columns across), float32."""
    img = np.take(np.asarray(volume), cut.index, axis=cut.axis).astype(np.float32)
    if cut.rows > cut.cols:  # remaining axes come out in array order: put ``rows`` first
        img = img.T
    if cut.flip_rows:
        img = img[::-1]
    if cut.flip_cols:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


@dataclass
class Overlay:
    """A map shown in colour over the grey image: opaque where it matters, transparent where it does not.

    Alpha rises linearly from 0 at ``show_from`` to ``opacity`` at ``opaque_at`` (map units); colours span
    ``vmin``..``vmax``; the colour bar is labelled with ``label`` and ticks at ``ticks`` (value, text).
    """

    data: np.ndarray
    cmap: str
    vmin: float
    vmax: float
    show_from: float
    opaque_at: float
    label: str
    ticks: Sequence[tuple[float, str]] = ()
    opacity: float = 0.85


@dataclass
class Panel:
    """One tile: a grey 3D volume cut as ``cut`` says, with an optional colour overlay and row marks."""

    title: str
    volume: np.ndarray
    cut: Cut
    grey_range: tuple[float, float]
    overlay: Overlay | None = None
    mark_rows: np.ndarray | None = None  # bool (z, y, x): rows of the cut to mark at both edges (e.g. missing slices)
    outline: np.ndarray | None = None  # bool (z, y, x): region whose edge is drawn
    caption: str = ""


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _render_image(p: Panel, box: tuple[int, int]):
    """The panel's image (RGB, Pillow), scaled to fit ``box`` (w, h) with square millimetres."""
    from PIL import Image
    from scipy.ndimage import binary_erosion

    grey = take(p.volume, p.cut)
    lo, hi = p.grey_range
    g = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None] * 255, 3, axis=2)
    if p.overlay is not None:
        o = p.overlay
        m = take(o.data, p.cut)
        col = colormap((m - o.vmin) / max(o.vmax - o.vmin, 1e-9), o.cmap).astype(np.float32)
        alpha = np.clip((m - o.show_from) / max(o.opaque_at - o.show_from, 1e-9), 0, 1)[..., None] * o.opacity
        rgb = rgb * (1 - alpha) + col * alpha
    h_mm, w_mm = grey.shape[0] * p.cut.pixel_mm[0], grey.shape[1] * p.cut.pixel_mm[1]
    scale = min(box[0] / w_mm, box[1] / h_mm)
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    img = Image.fromarray(rgb.round().astype(np.uint8)).resize(size, Image.BICUBIC)
    if p.outline is not None:
        mask = take(p.outline, p.cut) > 0
        big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        edge = big & ~binary_erosion(big, iterations=2)
        arr = np.asarray(img).copy()
        arr[edge] = (0, 220, 255)
        img = Image.fromarray(arr)
    return img, size


def render(panels: Sequence[Panel], columns: int = 4, box: tuple[int, int] = (300, 330)):
    """All panels on one canvas (Pillow RGB image): title above each, colour bar or caption below."""
    from PIL import Image, ImageDraw

    if not panels:
        raise InputError("a montage needs at least one panel")
    title_h, foot_h, pad = 24, 44, 14
    tile_w, tile_h = box[0] + 2 * pad, title_h + box[1] + foot_h
    n_rows = (len(panels) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile_w, n_rows * tile_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    f_title, f_small, f_side = _font(15), _font(12), _font(16)
    for i, p in enumerate(panels):
        x0, y0 = (i % columns) * tile_w, (i // columns) * tile_h
        draw.text((x0 + pad, y0 + 4), p.title, fill=(255, 255, 255), font=f_title)
        img, (w, h) = _render_image(p, box)
        ix, iy = x0 + pad + (box[0] - w) // 2, y0 + title_h + (box[1] - h) // 2
        canvas.paste(img, (ix, iy))
        # orientation letters at mid-height of both sides, and the plane's name
        for letter, x, anchor in ((p.cut.left, ix + 3, "lm"), (p.cut.right, ix + w - 3, "rm")):
            draw.text((x, iy + h // 2), letter, fill=(255, 230, 0), font=f_side, anchor=anchor,
                      stroke_width=2, stroke_fill=(0, 0, 0))
        draw.text((ix + w - 3, iy + 3), p.cut.plane, fill=(200, 200, 200), font=f_small, anchor="ra")
        if p.mark_rows is not None:
            rows = np.flatnonzero(take(p.mark_rows, p.cut).any(axis=1))
            n = take(p.mark_rows, p.cut).shape[0]
            for r in rows:  # a cyan arrow head on both edges, pointing at the marked row
                yc = iy + (r + 0.5) * h / n
                draw.polygon([(ix - 7, yc - 4), (ix - 7, yc + 4), (ix - 1, yc)], fill=(0, 220, 255))
                draw.polygon([(ix + w + 7, yc - 4), (ix + w + 7, yc + 4), (ix + w + 1, yc)], fill=(0, 220, 255))
        fy = y0 + title_h + box[1] + 4
        if p.overlay is not None:
            _colour_bar(draw, p.overlay, x0 + pad + 10, fy, box[0] - 20, f_small)
        if p.caption:
            draw.text((x0 + pad, fy + (26 if p.overlay is not None else 2)), p.caption, fill=(200, 200, 200),
                      font=f_small)
    return canvas


def _colour_bar(draw, o: Overlay, x: int, y: int, width: int, font) -> None:
    """A horizontal colour bar of ``o`` (transparent part hatched grey) with its ticks and label above it."""
    vals = o.vmin + (o.vmax - o.vmin) * (np.arange(width) + 0.5) / width
    cols = colormap((vals - o.vmin) / max(o.vmax - o.vmin, 1e-9), o.cmap)
    bar_y, bar_h = y + 14, 8
    for k, c in enumerate(cols):
        faint = vals[k] < o.show_from
        draw.line([(x + k, bar_y), (x + k, bar_y + bar_h)], fill=(60, 60, 60) if faint else tuple(int(v) for v in c))
    draw.text((x, y), o.label, fill=(255, 255, 255), font=font)
    for v, text in o.ticks:
        tx = x + round((v - o.vmin) / max(o.vmax - o.vmin, 1e-9) * (width - 1))
        draw.line([(tx, bar_y - 2), (tx, bar_y + bar_h + 2)], fill=(255, 255, 255))
        draw.text((tx, bar_y + bar_h + 3), text, fill=(255, 255, 255), font=font,
                  anchor="ma" if 0 < tx - x < width - 1 else ("la" if tx - x <= 0 else "ra"))
