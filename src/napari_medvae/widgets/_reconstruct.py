"""Reconstruct & Denoise dock widget: source image -> `<source> reconstruction` / `<source> denoised`."""

from __future__ import annotations

from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from . import _common
from ._common import (
    JobBar,
    LayerCombo,
    add_brain_layer,
    axis_combo,
    axis_value,
    get_model,
    layer_direction_origin,
    layer_geometry,
    layer_spacing,
    need,
    scope_label,
    skull_combo,
)


class ReconstructWidget(QWidget):
    """Healthy-looking reconstruction, or structure-preserving denoising, of an image layer (a new layer)."""

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self.source = LayerCombo(napari_viewer, Image)
        self.axis = axis_combo()
        self.skull = skull_combo()
        self.reconstruct_btn = QPushButton("Reconstruct")
        self.reconstruct_btn.setToolTip("the model's healthy-looking version of the volume")
        self.denoise_btn = QPushButton("Denoise")
        self.denoise_btn.setToolTip("remove noise, keep anatomy and lesions")
        self.job = JobBar()
        self.job.lock(self.reconstruct_btn, self.denoise_btn)
        form = QFormLayout()
        form.addRow("Image", self.source)
        form.addRow("Slice axis", self.axis)
        form.addRow("Skull stripping", self.skull)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reconstruct_btn)
        buttons.addWidget(self.denoise_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(scope_label())
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.job)
        lay.addStretch()
        self.reconstruct_btn.clicked.connect(lambda: self.run("reconstruction"))
        self.denoise_btn.clicked.connect(lambda: self.run("denoised"))

    def run(self, kind: str) -> None:
        """Start ``kind`` ('reconstruction' | 'denoised') on the layer selected now (recorded at start)."""
        layer = self.source.layer()
        if not need(layer):
            return
        data = layer.data
        geo = layer_geometry(layer, keep_dtype=True)
        name = f"{layer.name} {kind}"
        spacing = layer_spacing(layer)
        axis = axis_value(self.axis)
        force = _common.force()
        skull = self.skull.currentText()
        direction, origin = layer_direction_origin(layer)  # (None, origin 0) for a layer that is no 3D volume
        source_name = layer.name

        def job(progress, cancel):
            from .. import service

            op = service.ReconstructRequest if kind == "reconstruction" else service.DenoiseRequest
            res = service.run(op(axis=axis, force=force, skull_strip=skull), data, spacing, model=get_model(),
                              direction=direction, origin=origin, progress=progress, cancel=cancel)
            return res.volume, res.brain_mask

        def done(out) -> None:
            result, mask = out
            self.viewer.add_image(result, name=name, colormap="gray", **geo)
            if mask is not None:
                add_brain_layer(self.viewer, mask, source_name, geo)

        self.job.start(kind, job, done, viewer=self.viewer, sources=(layer,))
