"""Reconstruct & Denoise dock widget: source image -> `<source> reconstruction` / `<source> denoised`."""

from __future__ import annotations

from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ._common import JobBar, LayerCombo, get_model, layer_geometry, layer_spacing


class ReconstructWidget(QWidget):
    """Healthy reconstruction or structure-preserving denoising of an image layer (new layer; source untouched)."""

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self.source = LayerCombo(napari_viewer, Image)
        self.reconstruct_btn = QPushButton("Reconstruct")
        self.denoise_btn = QPushButton("Denoise")
        self.job = JobBar()
        self.job.lock(self.reconstruct_btn, self.denoise_btn)
        form = QFormLayout()
        form.addRow("Image", self.source)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reconstruct_btn)
        buttons.addWidget(self.denoise_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.job)
        lay.addStretch()
        self.reconstruct_btn.clicked.connect(lambda: self.run("reconstruction"))
        self.denoise_btn.clicked.connect(lambda: self.run("denoised"))

    def run(self, kind: str) -> None:
        """Start the job on the layer selected now (recorded: changing the selection later has no effect)."""
        from napari.utils.notifications import show_error

        layer = self.source.layer()
        if layer is None:
            show_error("medvae: choose an image layer first")
            return
        data = layer.data
        geo = layer_geometry(layer)
        name = f"{layer.name} {kind}"
        spacing = layer_spacing(layer)

        def job(progress, cancel):
            import numpy as np

            from ..engine import denoise, reconstruct

            fn = reconstruct if kind == "reconstruction" else denoise
            return fn(get_model(), np.asarray(data), spacing, progress=progress, cancel=cancel)

        def done(result):
            self.viewer.add_image(result, name=name, colormap="gray", **geo)

        self.job.start(kind, job, done)
