"""Anomaly review widget: heatmap + candidates, threshold without re-running, table jump-to."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import Notifications, assert_same_grid, dock, open_volume, wait_layer

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
    assert not w.table.isColumnHidden(w.VOXELS)  # 2 mm voxels: 8 mm³ each, so voxels say something new

    import napari_medvae.engine as engine

    def no_network(*a, **k):
        raise AssertionError("re-thresholding must not run the network")

    monkeypatch.setattr(engine, "anomaly", no_network)
    w.slider.setValue(400)  # threshold 4.0, through the slider
    assert w.threshold.value() == pytest.approx(4.0)
    qtbot.waitUntil(lambda: w.summary.text().splitlines()[0].split(";")[0].endswith("above 4.00"), timeout=5000)
    assert w.table.rowCount() <= n and labels.data.max() == w.table.rowCount()
    w.threshold.setValue(1.0)
    qtbot.waitUntil(lambda: w.table.rowCount() == n, timeout=5000)
    assert w.table.item(0, 4).text() == "yes"  # re-thresholding keeps the healthy comparison

    w.table.setCurrentCell(0, 0)  # as a click on the first row
    world = heat.data_to_world(w.candidates[0]["centroid_voxel_zyx"])
    np.testing.assert_allclose(viewer.dims.point, world, atol=max(heat.scale))
    assert labels.selected_label == 1


def test_uncalibrated_volumes_are_flagged(make_napari_viewer, qtbot):
    from napari_medvae.engine.training import synth

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


# ------------------------------------------------------------------------------------------------
# the display (issue 33, item 5), on a made-up heatmap: no network run


def _fake_anomaly(monkeypatch, heat: np.ndarray, spacing, healthy_peak: float | None = 3.0,
                  warnings: tuple[str, ...] = ()) -> None:
    """engine.anomaly returns ``heat`` (and its candidates at the threshold asked for)."""
    import napari_medvae.engine as engine
    from napari_medvae.engine.ops.anomaly import AnomalyResult, threshold_candidates

    def anomaly(model, volume, sp, *, threshold=1.0, **kw):
        labels, rows = threshold_candidates(heat, sp, threshold, healthy_peak=healthy_peak)
        return AnomalyResult(heat.copy(), labels, rows, threshold, healthy_peak, None, list(warnings))

    monkeypatch.setattr(engine, "anomaly", anomaly)


def _two_peak_heatmap() -> np.ndarray:
    """One blob above 1.0 with two peaks (5 and 6, saddle 2): raising the threshold past 2 splits it in two."""
    heat = np.zeros((20, 40, 40), np.float32)
    heat[6:14, 8:32, 14:26] = 2.0
    heat[7:13, 9:15, 15:25] = 5.0
    heat[7:13, 25:31, 15:25] = 6.0
    return heat


def _run(viewer, qtbot, w, name: str):
    w.source.setCurrentText(name)
    w.run_btn.click()
    return wait_layer(qtbot, viewer, f"{name} candidates", w.job)


def test_candidates_are_one_colour_outlines_and_the_image_stays_selected(make_napari_viewer, qtbot, monkeypatch):
    _fake_anomaly(monkeypatch, _two_peak_heatmap(), (1.0, 1.0, 1.0))
    viewer = make_napari_viewer()
    src = viewer.add_image(np.ones((20, 40, 40), np.float32), name="scan")
    w = dock(viewer, "Anomaly review")
    w.threshold.setValue(4.0)  # two candidates
    labels = _run(viewer, qtbot, w, "scan")
    assert labels.data.max() == 2
    assert labels.contour > 0 and labels.opacity == 1.0  # outlines: the lesion inside them stays visible
    np.testing.assert_allclose(labels.colormap.map(1), labels.colormap.map(2))  # one colour, not random ones
    assert labels.colormap.map(0)[3] == 0  # background transparent
    assert viewer.layers.selection.active is src and labels not in viewer.layers.selection
    assert labels.mode == "pan_zoom"  # no paint tool armed
    w.threshold.setValue(1.0)  # re-thresholding keeps the look
    qtbot.waitUntil(lambda: labels.data.max() == 1, timeout=5000)
    assert labels.contour > 0 and labels.mode == "pan_zoom"


def test_above_healthy_count_does_not_depend_on_the_threshold(make_napari_viewer, qtbot, monkeypatch):
    _fake_anomaly(monkeypatch, _two_peak_heatmap(), (1.0, 1.0, 1.0), healthy_peak=3.0)
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((20, 40, 40), np.float32), name="scan")
    w = dock(viewer, "Anomaly review")
    _run(viewer, qtbot, w, "scan")
    fixed = "2 region(s) peak above 3.00"
    assert w.table.rowCount() == 1 and w.table.item(0, 4).text() == "yes"  # one blob at 1.0, peak 6 > 3
    assert fixed in w.summary.text() and "does not change" in w.summary.text()
    w.threshold.setValue(4.0)  # the blob splits into two candidates, both above 3
    qtbot.waitUntil(lambda: w.table.rowCount() == 2, timeout=5000)
    assert [w.table.item(i, 4).text() for i in range(2)] == ["yes", "yes"]
    assert fixed in w.summary.text()  # the same count at any threshold
    w.threshold.setValue(5.5)  # only the peak of 6 is left as a candidate; the count stays
    qtbot.waitUntil(lambda: w.table.rowCount() == 1, timeout=5000)
    assert fixed in w.summary.text()
    tip = w.table.horizontalHeaderItem(4).toolTip()
    assert "3.00" in tip and "threshold does not change it" in tip


def test_voxels_column_only_when_a_voxel_is_not_one_cubic_mm(make_napari_viewer, qtbot, monkeypatch):
    heat = _two_peak_heatmap()
    viewer = make_napari_viewer()
    viewer.add_image(np.ones(heat.shape, np.float32), name="1 mm")
    viewer.add_image(np.ones(heat.shape, np.float32), name="2 mm", scale=(2.0, 1.0, 1.0))
    w = dock(viewer, "Anomaly review")
    _fake_anomaly(monkeypatch, heat, (1.0, 1.0, 1.0))
    _run(viewer, qtbot, w, "1 mm")
    assert w.table.isColumnHidden(w.VOXELS)  # mm³ and voxels would be the same numbers
    assert not w.table.isColumnHidden(1) and w.table.item(0, 1).text() == str(int((heat > 1).sum()))
    _fake_anomaly(monkeypatch, heat, (2.0, 1.0, 1.0))
    _run(viewer, qtbot, w, "2 mm")
    assert not w.table.isColumnHidden(w.VOXELS)
    assert int(w.table.item(0, 1).text()) == 2 * int(w.table.item(0, w.VOXELS).text())
    header = w.table.horizontalHeader()
    for j in range(w.table.columnCount() - 1):  # numbers are never cut short ("49…"); the last column stretches
        assert header.sectionSize(j) >= w.table.sizeHintForColumn(j), f"column {w.COLUMNS[j]} is too narrow"


def test_uncalibrated_warning_pop_up_is_complete_and_the_widget_has_the_full_text(make_napari_viewer, qtbot,
                                                                                  monkeypatch):
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QLabel

    from napari_medvae.engine.ops.anomaly import ratio_warning

    full = ratio_warning(2.4)
    _fake_anomaly(monkeypatch, _two_peak_heatmap(), (1.0, 1.0, 1.0), warnings=(full,))
    viewer = make_napari_viewer(show=True)  # pop-ups are drawn only on a shown window
    viewer.add_image(np.ones((20, 40, 40), np.float32), name="scan")
    w = dock(viewer, "Anomaly review")
    note = Notifications()
    try:
        _run(viewer, qtbot, w, "scan")
        qtbot.waitUntil(lambda: bool(note.messages), timeout=5000)
        qtbot.wait(300)
    finally:
        note.close()
    assert f"⚠ {full}" in w.summary.text() and w.summary.wordWrap()
    toasts = [t for t in viewer.window._qt_window.findChildren(NapariQtNotification)
              if t.message.text().startswith("medvae:")]
    assert toasts, "no pop-up"
    shown = QLabel.text(toasts[-1].message)  # what the one-line pop-up shows (napari elides it)
    assert shown == toasts[-1].message.text() and "…" not in shown, f"the pop-up is cut off: {shown!r}"
    assert "see widget" in shown
