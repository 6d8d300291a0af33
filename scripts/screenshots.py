"""Open napari (a real window; run under Xvfb on a headless machine), run every widget on the sample data
and save a screenshot of each to docs/screenshots/.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PLUGIN = "napari-medvae"


def wait(pred, timeout: float = 180.0) -> None:
    t = time.time()
    while not pred():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.time() - t > timeout:
            raise TimeoutError("widget job did not finish")
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.resize(1500, 950)
    for _ in range(10):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / f"{name}.png"), canvas_only=False)
    print("wrote", OUT / f"{name}.png")


def main() -> None:
    viewer = napari.Viewer(show=True)

    _, model = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    model.device.setCurrentText("auto")
    model.load_btn.click()
    wait(lambda: "medvae-default" in model.card.text())
    shot(viewer, "model")
    viewer.window.remove_dock_widget("all")

    viewer.open_sample(PLUGIN, "lesion")
    src = viewer.layers["mni_t1_lesion"]
    _, an = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly review")
    an.source.setCurrentText(src.name)
    an.run_btn.click()
    wait(lambda: "mni_t1_lesion candidates" in viewer.layers and not an.job.running)
    viewer.layers["mni_t1_lesion truth"].visible = False
    an.table.selectRow(0)
    an.jump_to(0)
    shot(viewer, "anomaly")
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()

    viewer.open_sample(PLUGIN, "noisy")
    _, rec = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct & Denoise")
    rec.source.setCurrentText("mni_t1_noisy")
    rec.denoise_btn.click()
    wait(lambda: "mni_t1_noisy denoised" in viewer.layers and not rec.job.running)
    viewer.grid.enabled = True
    viewer.reset_view()
    shot(viewer, "denoise")
    viewer.grid.enabled = False
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()

    viewer.open_sample(PLUGIN, "missing")
    _, inp = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    inp.source.setCurrentText("mni_t1_missing")
    inp.slice_mode.setChecked(True)
    inp.run_btn.click()
    wait(lambda: "mni_t1_missing inpainted" in viewer.layers and not inp.job.running)
    viewer.dims.set_point(0, viewer.layers["mni_t1_missing"].data_to_world((45, 0, 0))[0])
    viewer.dims.ndisplay = 2
    viewer.layers["mni_t1_missing"].visible = True
    viewer.grid.enabled = True
    viewer.reset_view()
    shot(viewer, "inpaint")
    viewer.grid.enabled = False
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()

    _, gen = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    gen.n.setValue(1)
    gen.btn.click()
    wait(lambda: any(la.name.startswith("medvae samples") for la in viewer.layers) and not gen.job.running)
    shot(viewer, "generate")
    assert np.isfinite(viewer.layers[0].data).all()
    viewer.close()


if __name__ == "__main__":
    main()
    sys.exit(0)
