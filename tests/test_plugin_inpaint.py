"""Inpaint widget: missing slices (auto-detected) and a painted mask."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import Notifications, assert_same_grid, dock, open_volume, wait_layer

from napari_medvae.slices import parse_slices

pytestmark = pytest.mark.napari

BLANK = [30, 44, 45, 46, 60]  # the blank axial slices of sample_data/mni_t1_missing.nii.gz


def test_detect_blank_slices_fills_the_field(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_missing.nii.gz")
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.detect_btn.click()
    qtbot.waitUntil(lambda: w.slices.text() != "auto", timeout=60_000)
    assert parse_slices(w.slices.text()) == BLANK
    assert w.slices.text() == "30, 44-46, 60"  # as compact as the user would type it
    assert w.slice_mode.isChecked()


def test_inpaint_missing_slices_only_filled_voxels(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_missing.nii.gz")
    before = np.array(src.data, copy=True)
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.slice_mode.setChecked(True)
    w.slices.setText("auto")
    w.only_filled.setChecked(True)
    w.run_btn.click()
    assert not w.run_btn.isEnabled()
    out = wait_layer(qtbot, viewer, "mni_t1_missing inpainted", w.job)
    assert_same_grid(out, src)
    filled = [z for z in range(out.data.shape[0]) if out.data[z].any()]
    assert filled == BLANK
    np.testing.assert_array_equal(src.data, before)


def test_inpaint_painted_mask_keeps_other_voxels(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    before = np.array(src.data, copy=True)
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.new_mask_btn.click()
    mask = viewer.layers["mni_t1_healthy mask"]
    assert_same_grid(mask, src)
    assert mask.mode == "paint" and w.mask.currentText() == mask.name
    mask.data[40:44, 50:60, 40:50] = 1
    w.run_btn.click()
    out = wait_layer(qtbot, viewer, "mni_t1_healthy inpainted", w.job)
    keep = mask.data == 0
    np.testing.assert_array_equal(out.data[keep], before[keep].astype(out.dtype))
    assert np.abs(out.data[~keep] - before[~keep]).max() > 0
    np.testing.assert_array_equal(src.data, before)


def test_inpaint_without_the_other_hemisphere(make_napari_viewer, qtbot, sample_dir, monkeypatch):
    """The "other hemisphere" box is on by default; unticked, the fill does not look at the mirror image."""
    from napari_medvae.engine.classical import kriging

    calls = []
    real = kriging.mirror_image
    monkeypatch.setattr(kriging, "mirror_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.new_mask_btn.click()
    viewer.layers["mni_t1_healthy mask"].data[40:44, 50:56, 40:46] = 1
    assert w.symmetry.isChecked() and w.symmetry.isEnabled()
    w.slice_mode.setChecked(True)
    assert not w.symmetry.isEnabled()  # missing slices: the box does not apply
    w.mask_mode.setChecked(True)
    assert w.symmetry.isEnabled()
    w.run_btn.click()
    wait_layer(qtbot, viewer, "mni_t1_healthy inpainted", w.job)
    assert len(calls) == 1
    viewer.layers.remove("mni_t1_healthy inpainted")
    w.symmetry.setChecked(False)
    w.run_btn.click()
    wait_layer(qtbot, viewer, "mni_t1_healthy inpainted", w.job)
    assert len(calls) == 1


# ---- slices where the user sees them ----------------------------------------------------------


def _with_wider_layer(viewer, sample_dir):
    """The sample with blank slices, and a second layer of another extent and scale that moves the slider's range."""
    src = open_volume(viewer, sample_dir / "mni_t1_missing.nii.gz")
    viewer.add_image(np.zeros((30, 8, 8), np.float32), name="wide", scale=(3.0, 2.0, 2.0), translate=(-250.0, 0.0, 0.0))
    viewer.layers.selection.active = src
    return src


def test_axis_choices_are_named_anatomically(make_napari_viewer, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_missing.nii.gz")
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    items = [w.axis.itemText(i) for i in range(w.axis.count())]
    assert items == ["auto (thickest spacing)", "axial (file axis 2, napari axis 0)",
                     "coronal (file axis 1, napari axis 1)", "sagittal (file axis 0, napari axis 2)"]
    plain = viewer.add_image(np.zeros((20, 20, 20), np.float32), name="no orientation")
    w.source.setCurrentText(plain.name)
    assert w.axis.itemText(1) == "file axis 2 (napari axis 0)"  # an array without a file: not named


def test_current_slice_is_the_slice_on_screen_not_the_slider_step(make_napari_viewer, sample_dir):
    viewer = make_napari_viewer()
    src = _with_wider_layer(viewer, sample_dir)
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    viewer.dims.set_point(0, float(src.data_to_world((42, 0, 0))[0]))
    assert viewer.dims.current_step[0] != 42  # the slider counts from the wider layer's first slice
    assert round(float(src.world_to_data(viewer.dims.point)[0])) == 42
    w.current_btn.click()
    assert w.slices.text() == "42" and w.axis.value() == 0 and w.slice_mode.isChecked()
    w.around.setValue(2)
    w.current_btn.click()
    assert parse_slices(w.slices.text()) == [40, 41, 42, 43, 44]
    viewer.dims.set_point(0, float(src.data_to_world((1, 0, 0))[0]))
    w.current_btn.click()
    assert w.slices.text() == "0-3"  # clipped at the volume's first slice


def test_current_slice_refuses_an_axis_not_on_screen_and_errors_name_no_cli_flags(make_napari_viewer, qtbot,
                                                                                   sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_missing.nii.gz")
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.axis.set_value(1)  # coronal, while the view scrolls through axial slices
    w.slices.setText("7")
    note = Notifications()
    try:
        w.current_btn.click()
        qtbot.waitUntil(lambda: bool(note.messages), timeout=5000)
        assert w.slices.text() == "7"
        assert "the view shows slices along axial (file axis 2, napari axis 0)" in note.messages[-1]
        w.slice_mode.setChecked(True)
        w.slices.setText("1, x")
        w.run_btn.click()
        qtbot.waitUntil(lambda: len(note.messages) >= 2, timeout=5000)
        w.slices.setText("5, 500")
        w.axis.set_value(0)
        w.run_btn.click()
        qtbot.waitUntil(lambda: len(note.messages) >= 3, timeout=60_000)
        qtbot.waitUntil(lambda: not w.job.running, timeout=60_000)
    finally:
        note.close()
    assert "could not read 'x'" in note.messages[1]
    assert "500 out of range: axial (file axis 2, napari axis 0) has 94 slices" in note.messages[2]
    assert not any("--" in m for m in note.messages), note.messages
    assert "mni_t1_missing inpainted" not in viewer.layers


def test_auto_without_blank_slices_says_nothing_to_fill(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.slice_mode.setChecked(True)
    w.slices.setText("auto")
    note = Notifications()
    try:
        w.run_btn.click()
        qtbot.waitUntil(lambda: not w.job.running, timeout=60_000)
        qtbot.waitUntil(lambda: bool(note.messages), timeout=5000)
    finally:
        note.close()
    assert "no blank slices along axial (file axis 2, napari axis 0): nothing to fill" in note.messages[-1]
    assert [lay.name for lay in viewer.layers] == [src.name] and w.job.outcome == "done"


# ---- painting on a tilted (oblique) volume ----------------------------------------------------


def test_painting_on_an_oblique_volume_lands_on_the_slice_on_screen(make_napari_viewer, qtbot, sample_dir, tmp_path):
    """napari slices a rotated layer as if unrotated out of the screen plane but maps the mouse with the full rotation;
    the new mask must take paint where it is drawn: on the image's slice on screen, under the cursor."""
    import warnings

    from napari_medvae.io import Geometry, read_volume, write_volume

    vol, _ = read_volume(sample_dir / "mni_t1_healthy.nii.gz")
    t = np.deg2rad(20)  # a FLAIR-like tilt about the left-right axis
    d = np.array([[-1, 0, 0], [0, -np.cos(t), -np.sin(t)], [0, -np.sin(t), np.cos(t)]])
    path = tmp_path / "oblique.nii.gz"
    write_volume(path, vol, Geometry(spacing=(2.0, 2.0, 2.0), origin=(98.0, 134.0, -72.0), direction=tuple(d.ravel())))
    viewer = make_napari_viewer()
    warnings.filterwarnings("ignore", message="Non-orthogonal slicing")
    src = open_volume(viewer, path)
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.new_mask_btn.click()
    mask = viewer.layers["oblique mask"]
    assert_same_grid(mask, src)
    np.testing.assert_allclose(mask._data_to_world.affine_matrix, src._data_to_world.affine_matrix)
    viewer.dims.set_point(0, float(viewer.dims.point[0]) + 6.0)
    # a brush stroke away from the centre of the view, where the tilt moves the plain world -> data slice most
    pos = np.array(viewer.dims.point, float)
    pos[1] += 30.0
    pos[2] -= 10.0
    mask.brush_size = 3
    mask.paint(mask.world_to_data(pos), 1)  # what napari's paint brush does with a mouse event at pos
    painted = np.argwhere(mask.data)
    assert len(painted)
    shown = int(np.round(src._data_slice.point[0]))  # the image's slice on screen, as napari computes it
    assert set(painted[:, 0]) == {shown}
    # under the cursor: where napari draws the image's voxels on screen (its displayed 2D transform)
    yx = src._transforms.simplified.set_slice([1, 2]).inverse(pos[1:])
    assert np.abs(painted[:, 1:].mean(axis=0) - yx).max() < 1.0
    mask.refresh()
    view = np.asarray(mask._slice.image.raw)  # what napari shows of the mask now
    assert view[int(np.round(yx[0])), int(np.round(yx[1]))] == 1
