"""Anomaly review widget: heatmap + candidates, threshold without re-running, table jump-to."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import assert_same_grid, dock, open_volume, wait_layer

pytestmark = pytest.mark.napari


def test_anomaly_heatmap_candidates_threshold_and_jump(make_napari_viewer, qtbot, sample_dir, monkeypatch):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_lesion.nii.gz")
    before = np.array(src.data, copy=True)
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.run_btn.click()
    heat = wait_layer(qtbot, viewer, "mni_t1_lesion anomaly", w.job)
    labels = viewer.layers["mni_t1_lesion candidates"]
    assert heat.colormap.name == "inferno" and heat.blending == "additive"
    assert tuple(heat.contrast_limits) == (0.0, 2.0)
    assert_same_grid(heat, src)
    assert_same_grid(labels, src)
    np.testing.assert_array_equal(src.data, before)

    n = w.table.rowCount()
    assert n >= 1 and labels.data.max() == n
    assert w.table.item(0, 0).text() == "1" and float(w.table.item(0, 2).text()) > 1.0
    assert w.table.item(0, 4).text() == "yes"  # the strongest lesion peaks above any healthy brain
    assert "the highest seen in healthy brains" in w.summary.text()

    import napari_medvae.engine as engine

    def no_network(*a, **k):
        raise AssertionError("re-thresholding must not run the network")

    monkeypatch.setattr(engine, "anomaly", no_network)
    w.slider.setValue(400)  # threshold 4.0, through the slider
    assert w.threshold.value() == pytest.approx(4.0)
    qtbot.waitUntil(lambda: w.summary.text().endswith("above 4.00") or "above 4.00;" in w.summary.text(), timeout=5000)
    assert w.table.rowCount() <= n and labels.data.max() == w.table.rowCount()
    w.threshold.setValue(1.0)
    qtbot.waitUntil(lambda: w.table.rowCount() == n, timeout=5000)
    assert w.table.item(0, 4).text() == "yes"  # re-thresholding keeps the healthy comparison

    w.table.setCurrentCell(0, 0)  # as a click on the first row
    world = heat.data_to_world(w.candidates[0]["centroid_voxel_zyx"])
    np.testing.assert_allclose(viewer.dims.point, world, atol=max(heat.scale))
    assert labels.selected_label == 1


def test_uncalibrated_volumes_are_flagged(make_napari_viewer, qtbot):
    from napari_medvae.engine import synth

    tpl = synth.load_templates(2.0)
    img, _, _ = synth.make_subject(tpl, 9001, contrast="t2")  # a contrast the model never saw
    viewer = make_napari_viewer()
    src = viewer.add_image(img, name="t2 subject", scale=tpl.spacing)
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.run_btn.click()
    wait_layer(qtbot, viewer, "t2 subject anomaly", w.job)
    assert "⚠ the model reconstructs this volume" in w.summary.text()
    w.threshold.setValue(2.0)  # re-thresholding keeps the warning
    qtbot.waitUntil(lambda: "above 2.00" in w.summary.text(), timeout=5000)
    assert "⚠" in w.summary.text()


def test_uncertainty_on_request(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.uncertainty.setChecked(True)
    w.samples.setValue(2)
    w.run_btn.click()
    unc = wait_layer(qtbot, viewer, "mni_t1_healthy uncertainty", w.job)
    assert_same_grid(unc, src)
    assert float(unc.data.min()) >= 0 and float(unc.data.max()) > 0
