"""montage: cuts oriented as a radiologist reads them, side letters from the geometry, colour overlays."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medvae.errors import InputError
from napari_medvae.io import Geometry
from napari_medvae.montage import Overlay, Panel, colormap, plan_cut, render, take
from napari_medvae.service import save_png

RAS_AS_LPS = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)  # a NIfTI stored RAS (as the sample data), read in LPS


def _marked(shape=(8, 10, 12)) -> np.ndarray:
    v = np.zeros(shape, dtype=np.float32)
    v[2, 3, -1] = 1.0  # the last voxel along array x (file axis i), low z, low y
    return v


@pytest.mark.parametrize(("direction", "screen_side"), [(RAS_AS_LPS, "left"), (Geometry().direction, "right")])
def test_axial_cut_puts_the_patients_right_on_the_screens_left(direction, screen_side):
    geo = Geometry(direction=direction)
    v = _marked()
    cut = plan_cut(geo, v.shape, 0, 2)
    assert (cut.plane, cut.left, cut.right) == ("axial", "R", "L")
    img = take(v, cut)
    assert img.shape == (10, 12)
    col = int(np.argwhere(img)[0][1])
    # array x+ is the patient's right in RAS files (shown on the left), the patient's left in LPS ones
    assert (col == 0) if screen_side == "left" else (col == 11)


def test_coronal_cut_has_superior_at_the_top():
    geo = Geometry(direction=RAS_AS_LPS, spacing=(3.0, 1.0, 1.0))
    v = np.zeros((8, 10, 12), dtype=np.float32)
    v[7, 4, 5] = 1.0  # highest z: superior
    cut = plan_cut(geo, v.shape, 1, 4)
    assert (cut.plane, cut.left, cut.right, cut.pixel_mm) == ("coronal", "R", "L", (3.0, 1.0))
    assert tuple(np.argwhere(take(v, cut))[0]) == (0, 6)  # top row; x flipped (12 - 1 - 5)


def test_a_volume_stored_sagittally_is_cut_by_its_true_planes():
    # array x runs inferior->superior, array y anterior->posterior... stored as file axes (i, j, k) = (S, P, L)
    direction = (0, 0, 1.0, 0, 1.0, 0, 1.0, 0, 0)  # columns: i -> z(S), j -> y(P), k -> x(L)
    geo = Geometry(direction=direction)
    v = np.zeros((6, 7, 8), dtype=np.float32)
    assert plan_cut(geo, v.shape, 0, 1).plane == "sagittal"  # array z = file k = left-right
    cut = plan_cut(geo, v.shape, 2, 1)  # array x = file i = superior-inferior: an axial cut
    assert (cut.plane, cut.left, cut.right) == ("axial", "R", "L")
    v[5, 0, 1] = 1.0  # the patient's far left (array z = 5), anterior (array y = 0)
    assert tuple(np.argwhere(take(v, cut))[0]) == (0, 5)  # anterior at the top, the left on the right


@pytest.mark.parametrize(("axis", "index", "msg"), [(3, 0, "cut axis must be 0, 1 or 2"), (0, 8, "outside 0..7"),
                                                    (1, -1, "outside 0..9")])
def test_bad_cuts_are_refused(axis, index, msg):
    with pytest.raises(InputError, match=msg):
        plan_cut(Geometry(), (8, 10, 12), axis, index)


def test_colormap_ends_and_unknown_name():
    c = colormap(np.array([-1.0, 0.0, 1.0, 5.0]), "inferno")
    assert c.dtype == np.uint8 and c.shape == (4, 3)
    assert tuple(c[0]) == tuple(c[1]) == (0, 0, 4) and tuple(c[2]) == tuple(c[3]) == (252, 255, 164)
    with pytest.raises(InputError, match="colour map must be one of inferno, viridis, not 'jet'"):
        colormap(np.zeros(2), "jet")


def test_overlay_is_coloured_above_its_level_and_grey_below(tmp_path):
    v = np.full((4, 20, 20), 50.0, dtype=np.float32)
    heat = np.zeros_like(v)
    heat[:, :, 10:] = 3.0  # half the slice far above the limit, half at 0
    o = Overlay(heat, "inferno", 0, 4, show_from=0.5, opaque_at=1.0, label="score", ticks=[(1.0, "1.0")])
    geo = Geometry()
    img = render([Panel("t", v, plan_cut(geo, v.shape, 0, 1), (0, 100), overlay=o)], columns=1, box=(200, 200))
    a = np.asarray(img).astype(int)
    mid = a[24 + 100]  # the middle row of the image box (below the 24-pixel title)
    left, right = mid[14 + 40], mid[14 + 160]
    assert left[0] == left[1] == left[2]  # no overlay: grey
    assert right[0] - right[2] > 40  # heat 3 of 4 in inferno: orange
    out = save_png(img, tmp_path / "m.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*.tmp"))


def test_render_refuses_no_panels():
    with pytest.raises(InputError, match="at least one panel"):
        render([])
