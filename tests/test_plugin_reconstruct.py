"""Reconstruct & Denoise widget: new layers on the source's grid, source untouched, buttons locked."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import assert_same_grid, dock, open_volume, wait_layer

pytestmark = pytest.mark.napari


def test_denoise_then_reconstruct_add_new_layers(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_noisy.nii.gz")
    before = np.array(src.data, copy=True)
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    w.denoise_btn.click()
    assert not w.denoise_btn.isEnabled() and not w.reconstruct_btn.isEnabled()  # locked while running
    assert w.job.cancel_btn.isEnabled()
    den = wait_layer(qtbot, viewer, "mni_t1_noisy denoised", w.job)
    assert w.denoise_btn.isEnabled() and not w.job.cancel_btn.isEnabled()
    w.reconstruct_btn.click()
    rec = wait_layer(qtbot, viewer, "mni_t1_noisy reconstruction", w.job)
    for layer in (den, rec):
        assert_same_grid(layer, src)
        assert np.isfinite(layer.data).all()
    assert not np.array_equal(den.data, before)
    np.testing.assert_array_equal(src.data, before)


def test_target_layer_is_recorded_at_start(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    other = open_volume(viewer, sample_dir / "mni_t1_noisy.nii.gz")
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    w.reconstruct_btn.click()
    w.source.setCurrentText(other.name)  # changing the choice mid-job does not retarget it
    wait_layer(qtbot, viewer, "mni_t1_healthy reconstruction", w.job)
    assert "mni_t1_noisy reconstruction" not in viewer.layers
