"""Inpaint dock widget: fill a painted mask (Labels layer) or missing slices -> `<source> inpainted`."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ._common import JobBar, LayerCombo, get_model, layer_geometry, layer_spacing


class InpaintWidget(QWidget):
    """Fill the non-zero voxels of a Labels layer, or whole missing slices (indices or auto-detected)."""

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.source = LayerCombo(napari_viewer, Image)
        self.mask_mode = QRadioButton("Painted mask")
        self.slice_mode = QRadioButton("Missing slices")
        self.mask_mode.setChecked(True)
        self.mask = LayerCombo(napari_viewer, Labels)
        self.new_mask_btn = QPushButton("New mask to paint")
        self.slices = QLineEdit("auto")
        self.slices.setToolTip("slice indices along the axis, e.g. 40,41,57 or 40-45, or 'auto' for blank slices")
        self.axis = QComboBox()
        self.axis.addItems(["auto (thickest)", "0", "1", "2"])
        self.axis.setToolTip("array axis (as napari shows it) along which slices are missing")
        self.only_filled = QCheckBox("Show only the filled voxels")
        self.run_btn = QPushButton("Inpaint")
        self.job = JobBar()
        self.job.lock(self.run_btn, self.new_mask_btn)
        form = QFormLayout()
        form.addRow("Image", self.source)
        modes = QHBoxLayout()
        modes.addWidget(self.mask_mode)
        modes.addWidget(self.slice_mode)
        form.addRow(modes)
        mrow = QHBoxLayout()
        mrow.addWidget(self.mask)
        mrow.addWidget(self.new_mask_btn)
        form.addRow("Mask", mrow)
        form.addRow("Slices", self.slices)
        form.addRow("Axis", self.axis)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.only_filled)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.job)
        lay.addStretch()
        self.new_mask_btn.clicked.connect(self.new_mask)
        self.run_btn.clicked.connect(self.run)

    def new_mask(self) -> None:
        """Add an empty Labels layer on the image's grid, ready for painting."""
        from napari.utils.notifications import show_error

        layer = self.source.layer()
        if layer is None:
            show_error("medvae: choose an image layer first")
            return
        geo = layer_geometry(layer)
        lab = self.viewer.add_labels(np.zeros(layer.data.shape, dtype=np.uint8), name=f"{layer.name} mask", **geo)
        lab.mode = "paint"
        lab.brush_size = 6
        self.mask.refresh()
        self.mask.setCurrentText(lab.name)
        self.mask_mode.setChecked(True)

    def run(self) -> None:
        from napari.utils.notifications import show_error

        from ..cli import parse_slices
        from ..errors import MedVAEError

        layer = self.source.layer()
        if layer is None:
            show_error("medvae: choose an image layer first")
            return
        data = np.asarray(layer.data)
        kw: dict = {}
        if self.mask_mode.isChecked():
            mlayer = self.mask.layer()
            if mlayer is None:
                show_error("medvae: choose or create a mask (Labels) layer, or switch to missing slices")
                return
            kw["mask"] = np.asarray(mlayer.data) != 0
        else:
            try:
                kw["missing_slices"] = parse_slices(self.slices.text())
            except MedVAEError as exc:
                show_error(f"medvae: {exc}")
                return
            ax = self.axis.currentText()
            kw["axis"] = None if ax.startswith("auto") else int(ax)
        geo = layer_geometry(layer)
        spacing = layer_spacing(layer)
        name = f"{layer.name} inpainted"
        only_filled = self.only_filled.isChecked()

        def job(progress, cancel):
            from ..engine import InputError, detect_blank_slices, inpaint
            from ..engine.inpaint import slices_mask
            from ..engine.preprocess import check_axis

            mask, axis = kw.get("mask"), kw.get("axis")
            if mask is None:  # resolve slices to a mask here so "only filled voxels" knows them
                axis = check_axis(axis, spacing)
                idx = kw["missing_slices"]
                if idx == "auto":
                    idx = detect_blank_slices(data, axis)
                    if not idx:
                        raise InputError(f"no blank slices found along axis {axis}; nothing to inpaint")
                mask = slices_mask(data.shape, idx, axis)
            out = inpaint(get_model(), data, spacing, mask=mask, axis=axis, progress=progress, cancel=cancel)
            if only_filled:
                out = np.where(mask, out, 0).astype(np.float32)
            return out

        def done(result):
            self.viewer.add_image(result, name=name, colormap="gray", **geo)

        self.job.start("inpaint", job, done)
