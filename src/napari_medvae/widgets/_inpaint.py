"""Inpaint dock widget: fill a painted mask (Labels layer) or missing slices -> `<source> inpainted`."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from . import _common
from ._common import (
    JobBar,
    LayerCombo,
    axis_combo,
    axis_value,
    get_model,
    layer_geometry,
    layer_spacing,
    need,
)


class InpaintWidget(QWidget):
    """Fill the non-zero voxels of a Labels layer, or whole missing slices (typed or auto-detected)."""

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
        self.new_mask_btn.setToolTip("adds an empty Labels layer on the image's grid, in paint mode")
        self.slices = QLineEdit("auto")
        self.slices.setToolTip("slice indices along the axis, e.g. 40,41,57 or 40-45; 'auto' = blank slices")
        self.detect_btn = QPushButton("Detect blank")
        self.detect_btn.setToolTip("find blank slices along the axis and list them here")
        self.axis = axis_combo()
        self.only_filled = QCheckBox("Show only the filled voxels")
        self.symmetry = QCheckBox("Use the other hemisphere (mirror image)")
        self.symmetry.setChecked(True)
        self.symmetry.setToolTip("painted masks: the fill also follows the mirror image across the brain's plane of "
                                 "symmetry where it is known; untick when the other side is abnormal there")
        self.run_btn = QPushButton("Inpaint")
        self.job = JobBar()
        self.job.lock(self.run_btn, self.new_mask_btn, self.detect_btn)
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
        srow = QHBoxLayout()
        srow.addWidget(self.slices)
        srow.addWidget(self.detect_btn)
        form.addRow("Slices", srow)
        form.addRow("Slice axis", self.axis)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.only_filled)
        lay.addWidget(self.symmetry)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.job)
        lay.addStretch()
        self.new_mask_btn.clicked.connect(self.new_mask)
        self.detect_btn.clicked.connect(self.detect)
        self.run_btn.clicked.connect(self.run)
        self.mask_mode.toggled.connect(self.symmetry.setEnabled)  # the mirror image serves painted masks only

    def new_mask(self) -> None:
        """Add an empty Labels layer on the image's grid, ready for painting."""
        layer = self.source.layer()
        if not need(layer):
            return
        geo = layer_geometry(layer)
        lab = self.viewer.add_labels(np.zeros(layer.data.shape, dtype=np.uint8), name=f"{layer.name} mask", **geo)
        lab.mode = "paint"
        lab.brush_size = 6
        self.mask.refresh()
        self.mask.setCurrentText(lab.name)
        self.mask_mode.setChecked(True)

    def detect(self) -> None:
        """Find blank slices (engine.detect_blank_slices) and write them into the Slices field."""
        layer = self.source.layer()
        if not need(layer):
            return
        data = layer.data
        spacing = layer_spacing(layer)
        axis = axis_value(self.axis)

        def job(progress, cancel):
            from ..engine import detect_blank_slices
            from ..engine.preprocess import check_axis

            ax = check_axis(axis, spacing)
            return detect_blank_slices(np.asarray(data), ax)

        def done(idx: list[int]) -> None:
            from napari.utils.notifications import show_info

            self.slice_mode.setChecked(True)
            self.slices.setText(",".join(str(i) for i in idx) if idx else "auto")
            show_info(f"medvae: {len(idx)} blank slice(s) found" + ("" if idx else "; type indices to fill"))

        self.job.start("detect blank slices", job, done, viewer=self.viewer, sources=(layer,))

    def run(self) -> None:
        """Start inpainting on the image and mask/slices chosen now (recorded at start)."""
        from napari.utils.notifications import show_error

        from ..cli import parse_slices
        from ..errors import MedVAEError

        layer = self.source.layer()
        if not need(layer):
            return
        data = layer.data
        mask = None
        indices: list[int] | str = "auto"
        mlayer = None
        if self.mask_mode.isChecked():
            mlayer = self.mask.layer()
            if mlayer is None:
                show_error("medvae: choose or create a mask (Labels) layer, or switch to missing slices")
                return
            mask = np.asarray(mlayer.data) != 0
        else:
            try:
                indices = parse_slices(self.slices.text())
            except MedVAEError as exc:
                show_error(f"medvae: {exc}")
                return
        axis = axis_value(self.axis)
        geo = layer_geometry(layer, keep_dtype=True)
        spacing = layer_spacing(layer)
        name = f"{layer.name} inpainted"
        only_filled = self.only_filled.isChecked()
        symmetry = self.symmetry.isChecked()
        force = _common.force()

        def job(progress, cancel):
            from ..engine import inpaint
            from ..engine.inpaint import resolve_missing_slices, slices_mask

            vol = np.asarray(data)
            m, ax = mask, axis
            if m is None:  # slices -> a mask here, so that "only the filled voxels" knows them
                idx, ax = resolve_missing_slices(vol, spacing, indices, axis)
                m = slices_mask(vol.shape, idx, ax)
            out = inpaint(get_model(), vol, spacing, mask=m, axis=ax, symmetry=symmetry, force=force, progress=progress,
                          cancel=cancel)
            if only_filled:
                out = np.where(m, out, 0).astype(out.dtype)
            return out

        def done(result) -> None:
            self.viewer.add_image(result, name=name, colormap="gray", **geo)

        self.job.start("inpaint", job, done, viewer=self.viewer, sources=(layer, mlayer))
