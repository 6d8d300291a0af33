"""Jobs: Cancel stops quickly and leaves no layer; errors become notifications, not tracebacks."""

from __future__ import annotations

import time

import numpy as np
import pytest
from plugin_helpers import TIMEOUT_MS, Notifications, dock, open_volume

pytestmark = pytest.mark.napari


def test_cancel_mid_job_leaves_no_layer(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.uncertainty.setChecked(True)  # a long job: anomaly + 8 posterior passes
    note = Notifications()
    try:
        w.run_btn.click()
        qtbot.waitUntil(lambda: w.job.state[0] > 0, timeout=TIMEOUT_MS)  # the network is running
        t0 = time.perf_counter()
        w.job.cancel_btn.click()
        qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT_MS)
        stopped = time.perf_counter() - t0
    finally:
        note.close()
    print(f"cancel stopped the job after {stopped:.2f} s")
    # Cancel lands between batches of slices: ~0.4-1.7 s per batch of 32 on a loaded 2-core CPU
    assert stopped < 5.0, f"cancel took {stopped:.1f} s"
    assert [layer.name for layer in viewer.layers] == ["mni_t1_healthy"]
    assert w.run_btn.isEnabled() and not w.job.cancel_btn.isEnabled()
    assert any("cancelled" in msg for msg in note.messages)
    assert w.job.outcome == "cancelled" and w.job.bar.format() == "cancelled" and w.job.bar.value() == 0


def test_bad_input_gives_a_notification_and_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="flat")
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText("flat")
    note = Notifications()
    try:
        w.reconstruct_btn.click()
        qtbot.waitUntil(lambda: not w.job.running and bool(note.messages), timeout=TIMEOUT_MS)
    finally:
        note.close()
    assert note.messages[0].startswith("medvae: ") and "3D" in note.messages[0]
    assert [layer.name for layer in viewer.layers] == ["flat"]
    assert w.job.outcome == "failed" and w.job.bar.format() == "failed"


def test_no_image_layer_is_a_notification(make_napari_viewer):
    viewer = make_napari_viewer()
    note = Notifications()
    try:
        for title, button in (("Reconstruct & Denoise", "denoise_btn"), ("Inpaint", "run_btn"),
                              ("Anomaly review", "run_btn")):
            getattr(dock(viewer, title), button).click()
    finally:
        note.close()
    assert len(note.messages) == 3 and all("choose an image layer" in m for m in note.messages)
    assert len(viewer.layers) == 0


def test_progress_shows_in_activity_dock_and_its_cancel_works(make_napari_viewer, qtbot, sample_dir):
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    viewer = make_napari_viewer()
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.uncertainty.setChecked(True)
    w.run_btn.click()
    dialog = viewer.window._qt_window._activity_dialog

    def ours():
        bars = [b for b in dialog.findChildren(QtLabeledProgressBar)
                if b.description_label.text().startswith("medvae: anomaly")]
        return bars[0] if bars else None

    qtbot.waitUntil(lambda: ours() is not None and ours().qt_progress_bar.value() > 0, timeout=TIMEOUT_MS)
    assert w.job.bar.value() > 0  # the widget's own bar too
    ours().cancel_button.click()
    qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["mni_t1_healthy"]


def test_unusual_volume_is_refused_until_forced_in_model_widget(make_napari_viewer, qtbot, sample_dir):
    from napari_medvae.io import read_volume

    arr, geo = read_volume(sample_dir / "mni_t1_healthy.nii.gz")
    ct_like = arr.astype(np.float32) * 4 - 1000  # negative values: CT-like, unlike the T1 training data
    viewer = make_napari_viewer()
    viewer.add_image(ct_like, name="ct", **geo.napari_kwargs())
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText("ct")
    note = Notifications()
    try:
        w.reconstruct_btn.click()
        qtbot.waitUntil(lambda: not w.job.running and bool(note.messages), timeout=TIMEOUT_MS)
        assert "out-of-distribution" in note.messages[0] and "Run on unusual volumes" in note.messages[0]
        assert "ct reconstruction" not in viewer.layers
        m.force.setChecked(True)
        w.reconstruct_btn.click()
        qtbot.waitUntil(lambda: "ct reconstruction" in viewer.layers and not w.job.running, timeout=TIMEOUT_MS)
        # a finished job reads "done" on a full bar, not "0%"
        assert w.job.outcome == "done" and w.job.bar.format() == "done"
        assert w.job.bar.value() == w.job.bar.maximum() == 1
    finally:
        note.close()
        m.force.setChecked(False)


def test_bad_checkpoint_path_is_a_notification(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    label = m.device_label.text()
    (tmp_path / "weights.pt").write_bytes(b"not a safetensors file")
    m.path.setText(str(tmp_path / "weights.pt"))
    note = Notifications()
    try:
        m.load_btn.click()
        qtbot.waitUntil(lambda: not m.job.running and bool(note.messages), timeout=TIMEOUT_MS)
    finally:
        note.close()
    assert note.messages[0].startswith("medvae: ") and "unexpected" not in note.messages[0]
    assert m.device_label.text() == label and m.load_btn.isEnabled()
