"""Inpaint dock widget: fill a painted mask (Labels layer) or missing slices -> `<source> inpainted`.

Slices follow ``napari_medvae.slices``: numbers are the index along the slice axis (the number napari
shows for that layer), axes are named axial / coronal / sagittal where the file's orientation is known.
"""

from __future__ import annotations

import functools

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import slices as sl
from . import _common
from ._common import JobBar, LayerCombo, get_model, layer_geometry, layer_spacing, need


def layer_direction(layer) -> tuple[float, ...] | None:
    """The direction cosines of a layer read from a file (its ``medvae_geometry``), else None (unknown)."""
    if not (layer.metadata or {}).get("medvae_geometry"):
        return None
    from ..errors import MedVAEError
    from ..io import Geometry

    try:
        geo = Geometry.from_layer_kwargs(layer.scale, layer.translate, layer.affine, layer.metadata)
    except MedVAEError:  # sheared by hand in napari: no anatomical names
        return None
    return geo.direction


def data_to_world_matrix(layer) -> np.ndarray:
    """The layer's homogeneous data -> world matrix (scale, translate, rotate, shear, affine), from public API."""
    n = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(n)), dtype=float)
    m = np.eye(n + 1)
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        m[:n, j] = np.asarray(layer.data_to_world(e), dtype=float) - origin
    m[:n, n] = origin
    return m


class AxisCombo(QComboBox):
    """Slice-axis choice named for the chosen layer: 'auto (thickest spacing)', then each array axis
    described as in ``slices.describe_axis`` (e.g. 'axial (file axis 2, napari axis 0)')."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setToolTip("the axis slices are taken along; auto = the axis with the largest voxel spacing. "
                        "Numbers: the file's voxel axis (as medvae's --axis) and napari's axis")
        self.set_direction(None)

    def set_direction(self, direction) -> None:
        """Relabel the axes for a layer's direction cosines (None: orientation unknown); keeps the choice."""
        current = self.value()
        self.blockSignals(True)
        self.clear()
        self.addItem("auto (thickest spacing)", None)
        for a in range(3):
            self.addItem(sl.describe_axis(a, direction), a)
        self.set_value(current)
        self.blockSignals(False)

    def value(self) -> int | None:
        """The chosen napari array axis, or None for auto."""
        return self.currentData() if self.count() else None

    def set_value(self, array_axis: int | None) -> None:
        idx = self.findData(array_axis) if array_axis is not None else 0
        self.setCurrentIndex(max(idx, 0))


@functools.lru_cache(maxsize=1)
def paint_labels_class():
    """The PaintLabels layer class, made on first use: importing napari.layers costs 0.7 s at plugin import."""
    from napari.layers import Labels

    class PaintLabels(Labels):
        """A Labels layer whose 2D painting lands on the slice napari shows, also on a tilted (oblique) grid.

        napari cuts a layer with a rotated affine as if it were not rotated out of the screen plane (its
        "non-orthogonal slicing" warning) but maps mouse positions with the full rotation, so a brush
        stroke lands on another slice than the one on screen and stays invisible. Here world -> data in a
        2D view follows the display: the sliced dimensions as napari slices them, the on-screen ones as
        napari draws them. Axis-aligned layers (and 3D views) are unchanged.
        """

        def world_to_data(self, position):
            data = super().world_to_data(position)
            si = self._slice_input
            if si.ndisplay != 2 or si.is_orthogonal(self._data_to_world.inverse):
                return data
            n = self.ndim
            pos = np.asarray(position, dtype=float)
            p = pos[-n:] if len(pos) >= n else np.concatenate([np.zeros(n - len(pos)), pos])
            m = data_to_world_matrix(self)
            inv = np.linalg.inv(m)
            nd, disp = list(si.not_displayed), list(si.displayed)
            out = np.array(data, dtype=float)
            out[nd] = inv[np.ix_(nd, nd)] @ p[nd] + inv[nd, n]
            out[disp] = np.linalg.solve(m[np.ix_(disp, disp)], p[disp] - m[disp, n])
            return out

    return PaintLabels


class InpaintWidget(QWidget):
    """Fill the non-zero voxels of a Labels layer, or whole missing slices (typed, on screen or auto-detected)."""

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
        self.slices.setToolTip("slice numbers along the slice axis, e.g. 40, 41, 57 or 40-45 or 40 to 45; "
                               "'auto' = the blank slices")
        self.detect_btn = QPushButton("Detect blank")
        self.detect_btn.setToolTip("find blank slices along the axis and list them here")
        self.axis = AxisCombo()
        self.current_btn = QPushButton("Current slice")
        self.current_btn.setToolTip("the slice on screen (and the slices around it, see ±), along the axis you "
                                    "are scrolling through")
        self.around = QSpinBox()
        self.around.setRange(0, 100)
        self.around.setPrefix("± ")
        self.around.setSuffix(" slices")
        self.around.setToolTip("also take this many slices on each side of the current slice")
        self.only_filled = QCheckBox("Show only the filled voxels")
        self.symmetry = QCheckBox("Use the other hemisphere (mirror image)")
        self.symmetry.setChecked(True)
        self.symmetry.setToolTip("painted masks: the fill also follows the mirror image across the brain's plane of "
                                 "symmetry where it is known; untick when the other side is abnormal there. It has an "
                                 "effect only on volumes near the model's grid (about 1 mm for real_t1, 2 mm for "
                                 "synthetic_mni); other scans get the classical fill, which does not use it")
        self.run_btn = QPushButton("Inpaint")
        self.job = JobBar()
        self.job.lock(self.run_btn, self.new_mask_btn, self.detect_btn, self.current_btn)
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
        crow = QHBoxLayout()
        crow.addWidget(self.current_btn)
        crow.addWidget(self.around)
        form.addRow("", crow)
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
        self.current_btn.clicked.connect(self.use_current_slice)
        self.run_btn.clicked.connect(self.run)
        self.mask_mode.toggled.connect(self.symmetry.setEnabled)  # the mirror image serves painted masks only
        self.source.currentTextChanged.connect(self._source_changed)
        napari_viewer.layers.events.inserted.connect(self._source_changed)
        self._source_changed()

    def _source_changed(self, *_) -> None:
        layer = self.source.layer()
        self.axis.set_direction(None if layer is None else layer_direction(layer))

    def new_mask(self) -> None:
        """Add an empty Labels layer on the image's grid (scale, translate, affine), ready for painting."""
        layer = self.source.layer()
        if not need(layer):
            return
        lab = paint_labels_class()(np.zeros(layer.data.shape, dtype=np.uint8), name=f"{layer.name} mask",
                          **layer_geometry(layer))
        self.viewer.add_layer(lab)
        lab.mode = "paint"
        lab.brush_size = 6
        self.mask.refresh()
        self.mask.setCurrentText(lab.name)
        self.mask_mode.setChecked(True)

    def use_current_slice(self) -> None:
        """Write the slice on screen (± the chosen range) into the Slices field and pick its axis."""
        from napari.utils.notifications import show_error

        layer = self.source.layer()
        if not need(layer):
            return
        dims = self.viewer.dims
        direction = layer_direction(layer)
        if dims.ndisplay != 2:
            show_error("medvae: the current slice needs the 2D view; switch the viewer to 2D first")
            return
        offset = dims.ndim - layer.ndim
        sliced = [d - offset for d in dims.not_displayed if d - offset >= 0]
        if len(sliced) != 1:
            show_error(f"medvae: the view cuts '{layer.name}' along {len(sliced)} axes; show two of its axes on "
                       "screen to pick a slice")
            return
        a = sliced[0]
        chosen = self.axis.value()
        if chosen is not None and chosen != a:
            show_error(f"medvae: the view shows slices along {sl.describe_axis(a, direction)}, but the slice axis is "
                       f"{sl.describe_axis(chosen, direction)}; set the slice axis to 'auto' or to the one on screen")
            return
        n = int(layer.data.shape[a])
        idx = int(np.floor(sl.shown_slice(data_to_world_matrix(layer), dims.point, a) + 0.5))
        if not 0 <= idx < n:
            show_error(f"medvae: the slice on screen ({idx}) lies outside '{layer.name}' (slices 0-{n - 1} along "
                       f"{sl.describe_axis(a, direction)}); move the slider onto the image")
            return
        self.axis.set_value(a)
        self.slices.setText(sl.format_slices(sl.slices_around(idx, self.around.value(), n)))
        self.slice_mode.setChecked(True)

    def detect(self) -> None:
        """Find blank slices (engine.detect_blank_slices) and write them into the Slices field."""
        layer = self.source.layer()
        if not need(layer):
            return
        data = layer.data
        spacing = layer_spacing(layer)
        axis = self.axis.value()
        direction = layer_direction(layer)

        def job(progress, cancel):
            from ..engine import detect_blank_slices
            from ..engine.prep.preprocess import check_axis

            ax = check_axis(axis, spacing)
            return detect_blank_slices(np.asarray(data), ax), ax

        def done(result) -> None:
            from napari.utils.notifications import show_info

            idx, ax = result
            self.slice_mode.setChecked(True)
            self.slices.setText(sl.format_slices(idx) if idx else "auto")
            where = sl.describe_axis(ax, direction)
            show_info(f"medvae: {len(idx)} blank slice(s) along {where}" + ("" if idx else "; type slice numbers or "
                                                                                          "use 'Current slice'"))

        self.job.start("detect blank slices", job, done, viewer=self.viewer, sources=(layer,))

    def run(self) -> None:
        """Start inpainting on the image and mask/slices chosen now (recorded at start)."""
        from napari.utils.notifications import show_error, show_info

        from ..errors import MedVAEError

        layer = self.source.layer()
        if not need(layer):
            return
        data = layer.data
        mask = None
        indices: list[int] | str = "auto"
        mlayer = None
        direction = layer_direction(layer)
        if self.mask_mode.isChecked():
            mlayer = self.mask.layer()
            if mlayer is None:
                show_error("medvae: choose or create a mask (Labels) layer, or switch to missing slices")
                return
            if tuple(mlayer.data.shape) != tuple(layer.data.shape):
                show_error(f"medvae: the mask '{mlayer.name}' has shape {tuple(mlayer.data.shape)}, the image "
                           f"{tuple(layer.data.shape)}; paint on a mask made with 'New mask to paint'")
                return
            mask = np.asarray(mlayer.data) != 0
        else:
            try:
                indices = sl.parse_slices(self.slices.text())
            except MedVAEError as exc:
                show_error(f"medvae: {exc}")
                return
        axis = self.axis.value()
        geo = layer_geometry(layer, keep_dtype=True)  # on the source's intensity scale
        spacing = layer_spacing(layer)
        name = f"{layer.name} inpainted"
        only_filled = self.only_filled.isChecked()
        symmetry = self.symmetry.isChecked()
        force = _common.force()

        def job(progress, cancel):
            from .. import service
            from ..engine import detect_blank_slices
            from ..engine.ops.inpaint import slices_mask
            from ..engine.prep.preprocess import check_axis

            vol = np.asarray(data)
            m, ax = mask, axis
            if m is None:  # slices -> a mask here, so that "only the filled voxels" knows them
                ax = check_axis(axis, spacing)
                if indices == "auto":
                    idx = detect_blank_slices(vol, ax)
                    if not idx:
                        return ("nothing", ax)
                else:
                    idx = sl.check_slices(indices, vol.shape, ax, direction)
                m = slices_mask(vol.shape, idx, ax)
            request = service.InpaintRequest(axis=ax, symmetry=symmetry, only_filled=only_filled, force=force,
                                             skull_strip="never")
            return service.run(request, vol, spacing, model=get_model(), mask=m, progress=progress,
                               cancel=cancel).volume

        def done(result) -> None:
            if isinstance(result, tuple):
                show_info(f"medvae: no blank slices along {sl.describe_axis(result[1], direction)}: nothing to fill. "
                          "Type slice numbers, or use 'Current slice'")
                return
            self.viewer.add_image(result, name=name, colormap="gray", **geo)

        self.job.start("inpaint", job, done, viewer=self.viewer, sources=(layer, mlayer))
