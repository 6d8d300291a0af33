"""Close napari while every widget's job runs, then exit: run as a subprocess by test_plugin_close.py.

Phase 1 (the reported crash): dock the Model widget (it loads the model in a worker) and close the
viewer at once; the load goes on in the background and its result must be dropped quietly.
Phase 2: a second viewer with every widget running a job at the same time (model training,
reconstruct, denoise, inpaint, anomaly + uncertainty, generate); close the viewer while they run and
let the interpreter exit. Prints the jobs running at close, the training output path and the time of
the close on stdout; the process must exit 0 with no Qt abort, after training saved what it learnt.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def wait(cond, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            print(f"timed out waiting for {what}", flush=True)
            sys.exit(3)
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    import napari
    from qtpy.QtCore import Qt

    from napari_medvae.widgets import (
        AnomalyWidget,
        GenerateWidget,
        InpaintWidget,
        ModelWidget,
        ReconstructWidget,
    )

    # phase 1: the Model widget starts loading the model when docked; close the viewer straight away
    v1 = napari.Viewer(show=True)
    m1 = ModelWidget(v1)
    v1.window.add_dock_widget(m1, name="Model")
    assert m1.job.running, "the Model widget should be loading the model"
    v1.close()
    print("phase 1: viewer closed while the model loaded", flush=True)

    # phase 2: every widget's job at once
    v = napari.Viewer(show=True)
    layers = v.open(str(SAMPLE / "mni_t1_healthy.nii.gz"), plugin="napari-medvae")
    src = layers[0]
    mask = np.zeros(src.data.shape, dtype=np.uint8)
    mask[40:60, 50:70, 40:60] = 1
    v.add_labels(mask, name="mask", scale=src.scale, translate=src.translate)
    v.open(str(SAMPLE / "mni_t1_lesion_truth.nii.gz"), plugin="napari-medvae")  # a second training volume
    # reconstruct and denoise get the volume at 1 mm (8x the voxels): at 2 mm a fast machine finishes
    # them before the close, and the point is to close while they run
    fine = v.add_image(src.data.repeat(2, 0).repeat(2, 1).repeat(2, 2), name="fine", scale=np.asarray(src.scale) / 2,
                       translate=src.translate)

    def add(widget, name):
        v.window.add_dock_widget(widget, name=name)
        return widget

    model = add(ModelWidget(v), "Model")
    wait(lambda: not model.job.running, what="the model load")
    recon = add(ReconstructWidget(v), "Reconstruct")
    denoise = add(ReconstructWidget(v), "Denoise")
    inpaint = add(InpaintWidget(v), "Inpaint")
    anomaly = add(AnomalyWidget(v), "Anomaly")
    generate = add(GenerateWidget(v), "Generate")
    for w in (inpaint, anomaly):
        w.source.setCurrentText(src.name)
    for w in (recon, denoise):
        w.source.setCurrentText(fine.name)
    inpaint.mask.setCurrentText("mask")
    anomaly.uncertainty.setChecked(True)
    generate.n.setValue(16)
    for i in range(model.layers.count()):
        model.layers.item(i).setCheckState(Qt.CheckState.Checked)
    model.steps.setValue(10_000)
    out = Path(tempfile.mkdtemp(prefix="medvae_close_")) / "tuned"
    model.out.setText(str(out))

    jobs = {"train": (model, model.train_btn), "reconstruct": (recon, recon.reconstruct_btn),
            "denoise": (denoise, denoise.denoise_btn), "inpaint": (inpaint, inpaint.run_btn),
            "anomaly+uncertainty": (anomaly, anomaly.run_btn), "generate": (generate, generate.btn)}
    for _, button in jobs.values():
        button.click()
    wait(lambda: all(w.job.running for w, _ in jobs.values()), what="every job to start")
    t0 = time.monotonic()
    wait(lambda: time.monotonic() - t0 > 0.5 or not all(w.job.running for w, _ in jobs.values()))
    running = [name for name, (w, _) in jobs.items() if w.job.running]
    print("running at close:", ", ".join(running), flush=True)
    v.close()
    print(f"train output: {out}", flush=True)
    print(f"closed at {time.time():.3f}; exiting", flush=True)


if __name__ == "__main__":
    main()
