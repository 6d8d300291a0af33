"""Inpaint widget: missing slices (auto-detected) and a painted mask."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import assert_same_grid, dock, open_volume, wait_layer

pytestmark = pytest.mark.napari

BLANK = [30, 44, 45, 46, 60]  # the blank axial slices of sample_data/mni_t1_missing.nii.gz


def test_detect_blank_slices_fills_the_field(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_missing.nii.gz")
    w = dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.detect_btn.click()
    qtbot.waitUntil(lambda: w.slices.text() != "auto", timeout=60_000)
    assert [int(i) for i in w.slices.text().split(",")] == BLANK
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
