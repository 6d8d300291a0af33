"""Slice numbers and slice axes, one convention for the napari widgets, the CLI and every message.

* A **slice number** is the index along the slice axis: the same number in the file's voxel grid,
  in napari's array and in the engine (the array only reverses the order of the axes, never an axis).
* A **slice axis** is named anatomically where the geometry allows it: ``axial`` (slices across the
  head-foot direction), ``coronal`` (front-back) or ``sagittal`` (left-right), from the file's
  direction cosines (the axis must lie within about 37 degrees of that direction: its largest
  cosine is at least ``NAME_MIN_COSINE``). Its number is the **file axis** (i, j, k = 0, 1, 2, as
  ``medvae --axis`` takes it); napari's array axis is ``2 - file axis``. Messages give both:
  ``axial (file axis 2, napari axis 0)``.

Messages here never quote command-line flags: the GUI shows them as they are, the CLI prefixes
the flag. Imports numpy only (no Qt, napari or torch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from .errors import InputError

#: slices across physical x (left-right), y (back-front) and z (foot-head), the LPS order of
#: ``io.Geometry.direction``'s rows
PLANE_NAMES: tuple[str, str, str] = ("sagittal", "coronal", "axial")
#: an axis is named after a plane only when its direction lies this close to the plane's normal
NAME_MIN_COSINE = 0.8

_RANGE = re.compile(r"^(-?\d+)\s*(?:-|–|to|\.\.)\s*(-?\d+)$", re.IGNORECASE)
_NUMBER = re.compile(r"^-?\d+$")


# ---------------------------------------------------------------------------------------------
# slice numbers


def parse_slices(text: str) -> list[int] | Literal["auto"]:
    """Slice numbers typed by a user, sorted and without repeats; ``'auto'`` stays ``'auto'``.

    Accepts single numbers and ranges separated by commas (or semicolons): ``40``, ``40,41,57``,
    ``40-45``, ``40 to 45``, ``40..45`` (ranges include both ends), e.g. ``30, 44 to 46, 60``.
    """
    raw = str(text).strip()
    if raw.lower() == "auto":
        return "auto"
    idx: set[int] = set()
    for part in filter(None, (p.strip() for p in re.split(r"[,;]", raw))):
        m = _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise InputError(f"slice range {part!r} ends before it starts; write it as {hi}-{lo}")
            idx.update(range(lo, hi + 1))
        elif _NUMBER.match(part):
            idx.add(int(part))
        else:
            raise InputError(f"slice numbers must be whole numbers or ranges separated by commas (e.g. 40, 41, 57 "
                             f"or 40-45 or 40 to 45) or 'auto'; could not read {part!r} in {raw!r}")
    if not idx:
        raise InputError("no slice numbers given; type e.g. 40, 41, 57 or 40-45, or 'auto' for the blank slices")
    neg = sorted(i for i in idx if i < 0)
    if neg:
        raise InputError(f"slice numbers start at 0; {neg} cannot be used")
    return sorted(idx)


def format_slices(indices: Iterable[int]) -> str:
    """``[30, 44, 45, 46, 60]`` -> ``'30, 44-46, 60'`` (what :func:`parse_slices` reads back)."""
    idx = sorted({int(i) for i in indices})
    parts: list[str] = []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(parts)


def slices_around(centre: int, radius: int, n: int) -> list[int]:
    """Slices ``centre - radius`` .. ``centre + radius`` that exist on an axis of ``n`` slices."""
    if radius < 0:
        raise InputError(f"the range around a slice must be 0 or more slices, not {radius}")
    if not 0 <= centre < n:
        raise InputError(f"slice {centre} is outside the volume (0-{n - 1})")
    return list(range(max(0, centre - radius), min(n - 1, centre + radius) + 1))


def check_slices(indices: Sequence[int], shape: Sequence[int], array_axis: int,
                 direction: Sequence[float] | None = None) -> list[int]:
    """``indices`` if every one lies on the volume along ``array_axis``, else a message naming the axis."""
    n = int(shape[array_axis])
    bad = sorted({int(i) for i in indices if not 0 <= int(i) < n})
    if bad:
        raise InputError(f"slice(s) {format_slices(bad)} out of range: {describe_axis(array_axis, direction)} "
                         f"has {n} slices, numbered 0-{n - 1}")
    return sorted({int(i) for i in indices})


# ---------------------------------------------------------------------------------------------
# slice axes


def plane_names(direction: Sequence[float] | None) -> tuple[str | None, str | None, str | None]:
    """The anatomical plane of the slices along each **napari array axis** (0, 1, 2), or None.

    ``direction``: 9 direction cosines, row-major, LPS rows and file-axis columns
    (``io.Geometry.direction``); None (orientation unknown) names nothing. An axis whose largest
    cosine is below ``NAME_MIN_COSINE`` (an oblique axis, e.g. 45 degrees between two planes)
    is not named.
    """
    if direction is None:
        return (None, None, None)
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    names: list[str | None] = []
    for array_axis in range(3):
        col = np.abs(d[:, 2 - array_axis])
        k = int(np.argmax(col))
        names.append(PLANE_NAMES[k] if col[k] >= NAME_MIN_COSINE else None)
    return (names[0], names[1], names[2])


def describe_axis(array_axis: int, direction: Sequence[float] | None = None) -> str:
    """``'axial (file axis 2, napari axis 0)'``, or ``'file axis 2 (napari axis 0)'`` when not nameable."""
    name = plane_names(direction)[array_axis]
    nums = f"file axis {2 - array_axis}, napari axis {array_axis}"
    return f"{name} ({nums})" if name else f"file axis {2 - array_axis} (napari axis {array_axis})"


def default_axis(spacing: Sequence[float]) -> int:
    """The automatic slice axis (napari array axis): the largest voxel spacing, ties -> the first array axis.

    The engine's rule (``engine.prep.preprocess.default_axis``, tests check they agree), here without importing torch.
    """
    sp = np.asarray(spacing, dtype=float)
    return int(np.flatnonzero(np.isclose(sp, sp.max(), rtol=1e-3))[0])


def parse_axis(value: str | int | None, direction: Sequence[float] | None = None) -> int | None:
    """A user's slice axis -> napari array axis (None = automatic: the thickest voxel spacing).

    ``value``: ``None``/``'auto'``; a file axis ``0``, ``1``, ``2`` (i, j, k); or ``'axial'``,
    ``'coronal'``, ``'sagittal'``, resolved with ``direction`` (see :func:`plane_names`).
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("0", "1", "2"):
        return 2 - int(text)
    if text in PLANE_NAMES:
        names = plane_names(direction)
        if text in names:
            return names.index(text)
        if direction is None:
            raise InputError(f"this volume has no orientation, so no axis can be called {text}; give the file "
                             "axis as 0, 1 or 2 instead")
        known = ", ".join(describe_axis(a, direction) for a in range(3))
        raise InputError(f"no axis of this volume is {text}: it is tilted (oblique) and its axes are {known}; "
                         "give the file axis as 0, 1 or 2 instead")
    raise InputError(f"the slice axis must be 'auto', axial, coronal, sagittal or a file axis 0, 1 or 2, not {value!r}")


# ---------------------------------------------------------------------------------------------
# what napari shows


def shown_slice(data_to_world: np.ndarray, world_point: Sequence[float], array_axis: int) -> float:
    """The slice number along ``array_axis`` that napari shows at ``world_point`` (2D view, that axis sliced).

    ``data_to_world``: the layer's (n+1) x (n+1) homogeneous matrix (scale, translate, affine together;
    napari's ``layer._data_to_world.affine_matrix``). napari cuts a layer at the data coordinate given by
    the world-to-data transform restricted to the sliced dimension, leaving the on-screen
    dimensions out (it cannot show an oblique cut); this reproduces that, so the number is the slice
    on screen even when other layers of another extent or scale set the slider's range. For an
    axis-aligned layer it equals ``layer.world_to_data(world_point)[array_axis]``.
    """
    m = np.asarray(data_to_world, dtype=float)
    n = m.shape[0] - 1
    inv = np.linalg.inv(m)
    point = np.asarray(world_point, dtype=float)[-n:]
    a = int(array_axis)
    return float(inv[a, a] * point[a] + inv[a, n])


__all__ = [
    "NAME_MIN_COSINE",
    "PLANE_NAMES",
    "check_slices",
    "default_axis",
    "describe_axis",
    "format_slices",
    "parse_axis",
    "parse_slices",
    "plane_names",
    "shown_slice",
    "slices_around",
]
