"""Open napari (a real window; run under Xvfb on a headless machine), run every widget on the sample data
and save a screenshot of each to docs/screenshots/ (anomaly_real_head.png: the real head with skull in sample_data).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Screenshots need ``show=True``: an unshown viewer renders black images.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
SAMPLES = ROOT / "sample_data"
PLUGIN = "napari-medvae"


def pump(seconds: float = 0.4) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait(pred, timeout: float = 600.0) -> None:
    t = time.time()
    while not pred():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.time() - t > timeout:
            raise TimeoutError("widget job did not finish")
    pump()


def shot(viewer, name: str) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    OUT.mkdir(parents=True, exist_ok=True)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):  # stale pop-ups
        toast.close()
    pump()
    viewer.screenshot(str(OUT / f"{name}.png"), canvas_only=False)
    print("wrote", OUT / f"{name}.png", flush=True)


def reset(viewer) -> None:
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()
    viewer.canvas.grid.enabled = False
    viewer.dims.order = (0, 1, 2)


def anomaly(viewer) -> None:
    """The synthetic lesion sample: candidates as cyan outlines on the heatmap, the image kept selected."""
    viewer.open_sample(PLUGIN, "lesion")
    viewer.layers["mni_t1_lesion truth"].visible = False
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly review")
    w.source.setCurrentText("mni_t1_lesion")
    w.run_btn.click()
    wait(lambda: "mni_t1_lesion candidates" in viewer.layers and not w.job.running)
    viewer.reset_view()
    w.table.setCurrentCell(0, 0)  # as a radiologist clicking the first candidate: the view jumps there
    shot(viewer, "anomaly")


def anomaly_real_head(viewer) -> None:
    """A real T1 with skull: the widget extracts the brain ('<source> brain', outlined), the heatmap stays inside."""
    layer = viewer.open(str(SAMPLES / "real_t1_head_ds011_sub-01_2mm.nii.gz"), plugin=PLUGIN)[0]
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly review")
    w.source.setCurrentText(layer.name)
    assert w.skull.currentText() == "auto"
    w.run_btn.click()
    wait(lambda: f"{layer.name} brain" in viewer.layers and not w.job.running)
    viewer.reset_view()
    if w.table.rowCount():
        w.table.setCurrentCell(0, 0)  # the view jumps to the highest candidate
    shot(viewer, "anomaly_real_head")


def progress(viewer) -> None:
    """A long job running: progress in the widget and in napari's activity dock, Cancel enabled."""
    viewer.open_sample(PLUGIN, "healthy")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly review")
    w.source.setCurrentText("mni_t1_healthy")
    w.uncertainty.setChecked(True)
    w.run_btn.click()
    viewer.window._qt_window.statusBar()._toggle_activity_dock(True)
    wait(lambda: w.job.state[0] >= 0.3 * w.job.state[1])
    shot(viewer, "progress")
    w.job.cancel_btn.click()
    wait(lambda: not w.job.running)
    viewer.window._qt_window.statusBar()._toggle_activity_dock(False)


def denoise(viewer) -> None:
    viewer.open_sample(PLUGIN, "noisy")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct & Denoise")
    w.source.setCurrentText("mni_t1_noisy")
    w.denoise_btn.click()
    wait(lambda: "mni_t1_noisy denoised" in viewer.layers and not w.job.running)
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    shot(viewer, "denoise")


def inpaint(viewer) -> None:
    viewer.open_sample(PLUGIN, "missing")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    w.source.setCurrentText("mni_t1_missing")
    w.axis.set_value(0)  # named anatomically: 'axial (file axis 2, napari axis 0)'
    w.around.setValue(1)  # 'Current slice' ± 1 is offered beside the field; the blank slices are detected here
    w.detect_btn.click()
    wait(lambda: w.slices.text() != "auto" and not w.job.running)
    w.run_btn.click()
    wait(lambda: "mni_t1_missing inpainted" in viewer.layers and not w.job.running)
    src = viewer.layers["mni_t1_missing"]
    viewer.dims.order = (1, 0, 2)  # coronal plane: the missing axial slices show as dark lines
    viewer.dims.set_point(1, src.data_to_world((0, 55, 0))[1])
    viewer.camera.orientation2d = ("up", "right")  # superior at the top, as radiologists read a coronal slice
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    shot(viewer, "inpaint")
    viewer.camera.orientation2d = ("down", "right")


def generate(viewer) -> None:
    """Two volumes from the prior, placed on a reference image ('Place on'); grid: reference beside the samples."""
    viewer.open_sample(PLUGIN, "healthy")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    w.n.setValue(2)
    w.reference.setCurrentText("mni_t1_healthy")
    w.btn.click()
    wait(lambda: any(la.name.startswith("medvae samples") for la in viewer.layers) and not w.job.running)
    samples = next(la for la in viewer.layers if la.name.startswith("medvae samples"))
    assert np.isfinite(samples.data).all()
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    shot(viewer, "generate")


def model(viewer, tmp: Path) -> None:
    """Fine-tune for a few steps (loss curves), then show the shipped model's card again."""
    viewer.open_sample(PLUGIN, "healthy")
    viewer.open(str(SAMPLES / "mni_t1_lesion_truth.nii.gz"), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    wait(lambda: not w.job.running)
    for i in range(w.layers.count()):
        w.layers.item(i).setCheckState(Qt.CheckState.Checked)
    w.steps.setValue(12)
    w.out.setText(str(tmp / "finetuned"))
    w.train_btn.click()
    wait(lambda: not w.job.running)
    # back to the shipped model: its card (what every user sees first) beside the fine-tuning run's loss curves
    w.path.setText("")
    w.load_btn.click()
    wait(lambda: not w.job.running)
    viewer.reset_view()
    shot(viewer, "model")


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    pump(1.0)
    for step in (anomaly, anomaly_real_head, progress, denoise, inpaint, generate):
        step(viewer)
        reset(viewer)
    with tempfile.TemporaryDirectory() as tmp:
        model(viewer, Path(tmp))  # last: fine-tuning replaces the session's model
    viewer.close()


if __name__ == "__main__":
    main()
    sys.exit(0)
