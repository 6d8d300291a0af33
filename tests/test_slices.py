"""napari_medvae.slices: the one convention for slice numbers and axes (widgets, CLI, messages)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medvae import slices as sl
from napari_medvae.errors import InputError

LPS_DIAG = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # the sample data's direction (RAS on disk)


def _rot_x(deg: float) -> tuple[float, ...]:
    """Direction cosines of a volume tilted by ``deg`` about the left-right axis (y and z mixed)."""
    t = np.deg2rad(deg)
    return tuple(np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]).ravel())


@pytest.mark.parametrize("text, expected", [
    ("40", [40]),
    ("40,41, 57", [40, 41, 57]),
    ("40-45", [40, 41, 42, 43, 44, 45]),
    ("40 to 45", [40, 41, 42, 43, 44, 45]),
    ("40 TO 42; 57", [40, 41, 42, 57]),
    ("40..42", [40, 41, 42]),
    ("40–42", [40, 41, 42]),  # an en dash, as word processors write ranges
    ("57, 40-41, 40", [40, 41, 57]),  # sorted, no repeats
    (" auto ", "auto"),
    ("AUTO", "auto"),
])
def test_parse_slices_reads_numbers_ranges_and_auto(text, expected):
    assert sl.parse_slices(text) == expected


@pytest.mark.parametrize("text, msg", [
    ("1,x", "could not read 'x'"),
    ("45-40", "ends before it starts"),
    ("", "no slice numbers"),
    (" , ", "no slice numbers"),
    ("-3", "start at 0"),
    ("4.5", "could not read '4.5'"),
    ("40 to", "could not read"),
])
def test_parse_slices_refuses_with_a_message_without_cli_flags(text, msg):
    with pytest.raises(InputError, match=msg) as err:
        sl.parse_slices(text)
    assert "--" not in str(err.value)  # the GUI shows these messages as they are


def test_format_slices_is_compact_and_reads_back():
    idx = [60, 30, 44, 45, 46, 47, 2]
    text = sl.format_slices(idx)
    assert text == "2, 30, 44-47, 60"
    assert sl.parse_slices(text) == sorted(idx)


def test_slices_around_clips_at_the_volume_ends():
    assert sl.slices_around(10, 2, 50) == [8, 9, 10, 11, 12]
    assert sl.slices_around(1, 3, 50) == [0, 1, 2, 3, 4]
    assert sl.slices_around(48, 3, 50) == [45, 46, 47, 48, 49]
    assert sl.slices_around(7, 0, 50) == [7]
    with pytest.raises(InputError, match="outside the volume"):
        sl.slices_around(50, 1, 50)
    with pytest.raises(InputError, match="0 or more"):
        sl.slices_around(5, -1, 50)


def test_check_slices_names_the_axis_both_ways():
    assert sl.check_slices([5, 3, 5], (94, 116, 98), 0, LPS_DIAG) == [3, 5]
    with pytest.raises(InputError) as err:
        sl.check_slices([5, 94, 95, 300], (94, 116, 98), 0, LPS_DIAG)
    msg = str(err.value)
    assert "94-95, 300 out of range" in msg and "axial (file axis 2, napari axis 0) has 94 slices, numbered 0-93" in msg


def test_plane_names_from_direction_cosines():
    # array axes are (z, y, x): file axes k, j, i
    assert sl.plane_names(LPS_DIAG) == ("axial", "coronal", "sagittal")
    assert sl.plane_names(_rot_x(20)) == ("axial", "coronal", "sagittal")  # a typical oblique tilt: still named
    assert sl.plane_names(_rot_x(45)) == (None, None, "sagittal")  # halfway between axial and coronal: not named
    # a sagittal acquisition stored with the left-right axis last in the file (array axis 0)
    sag = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert sl.plane_names(sag) == ("sagittal", "axial", "coronal")
    assert sl.plane_names(None) == (None, None, None)


def test_describe_axis_gives_the_name_and_both_numbers():
    assert sl.describe_axis(0, LPS_DIAG) == "axial (file axis 2, napari axis 0)"
    assert sl.describe_axis(2, LPS_DIAG) == "sagittal (file axis 0, napari axis 2)"
    assert sl.describe_axis(1, None) == "file axis 1 (napari axis 1)"
    assert sl.describe_axis(0, _rot_x(45)) == "file axis 2 (napari axis 0)"


@pytest.mark.parametrize("value, direction, expected", [
    (None, LPS_DIAG, None),
    ("auto", LPS_DIAG, None),
    (0, None, 2),  # file axis i = napari axis 2
    ("2", None, 0),
    ("axial", LPS_DIAG, 0),
    ("Coronal", LPS_DIAG, 1),
    ("sagittal", (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 0),
])
def test_parse_axis_numbers_are_file_axes_and_names_follow_the_geometry(value, direction, expected):
    assert sl.parse_axis(value, direction) == expected


@pytest.mark.parametrize("value, direction, msg", [
    ("5", LPS_DIAG, "must be 'auto', axial, coronal, sagittal or a file axis 0, 1 or 2, not '5'"),
    ("sideways", LPS_DIAG, "not 'sideways'"),
    ("axial", None, "no orientation"),
    ("coronal", _rot_x(45), r"tilted \(oblique\).*file axis 2 \(napari axis 0\)"),
])
def test_parse_axis_refuses_clearly(value, direction, msg):
    with pytest.raises(InputError, match=msg) as err:
        sl.parse_axis(value, direction)
    assert "--" not in str(err.value)


def test_shown_slice_uses_the_sliced_dimension_only():
    # axis-aligned: the plain inverse (scale 2, translate -10 in z)
    m = np.diag([2.0, 1.0, 1.0, 1.0])
    m[0, 3] = -10.0
    assert sl.shown_slice(m, (0.0, 5.0, 7.0), 0) == pytest.approx(5.0)
    assert sl.shown_slice(m, (3.0, 0.0, 0.0, 0.0), 0) == pytest.approx(5.0)  # a 4D viewer: the last 3 dims
    # tilted: the on-screen coordinates (y, x) do not move the slice number, as napari slices
    t = np.deg2rad(20)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]
    a = sl.shown_slice(r, (4.0, 0.0, 0.0), 0)
    b = sl.shown_slice(r, (4.0, 30.0, -8.0), 0)
    assert a == pytest.approx(b)
    assert a == pytest.approx(np.linalg.inv(r)[0, 0] * 4.0)


def test_default_axis_is_the_engines():
    from napari_medvae.engine.prep.preprocess import default_axis

    for spacing in [(1, 1, 1), (2, 1, 1), (1, 3, 1), (1, 1, 5), (1, 2, 2), (2.0, 2.0005, 1.0), (0.9, 0.9, 0.91)]:
        assert sl.default_axis(spacing) == default_axis(spacing), spacing
