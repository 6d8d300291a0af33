"""Anomaly review dock widget: heatmap overlay, candidate labels, threshold slider, candidate table."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

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

SLIDER_STEPS = 100  # slider ticks per heatmap unit
CANDIDATE_COLOUR = "cyan"  # one colour for every candidate outline: it stands out on the inferno heatmap
# the pop-up: napari shows one elided line of about 42 characters; the full warning is in the summary
NOTIFY_UNCALIBRATED = "medvae: heatmap unreliable (see widget)"


class AnomalyWidget(QWidget):
    """Anomaly heatmap and candidates above a threshold (1.0 = the model's calibrated healthy limit).

    Moving the threshold re-labels the existing heatmap (engine.threshold_candidates): no network run.
    Clicking a table row moves the viewer to that candidate's centroid. The last column says whether a
    candidate's peak is above the highest one the model found in healthy brains (when its calibration has one):
    a fixed number of the model, so the threshold does not change the answer. Candidates are drawn as outlines
    in one colour, so the lesion under them stays visible; the image stays the selected layer.
    """

    COLUMNS = ("#", "mm³", "peak", "voxels", "> healthy")
    VOXELS = 3  # the voxels column: shown only when a voxel is not 1 mm³ (else it repeats mm³)
    TIPS = ("candidate label (1 = highest peak)", "size in mm³", "peak heatmap score (1.0 = calibrated threshold)",
            "size in voxels", "yes: the candidate's peak is above the highest peak the model found in healthy "
            "calibration brains, a fixed number of the model (the threshold does not change it)")

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.source = LayerCombo(napari_viewer, Image)
        self.brain = LayerCombo(napari_viewer, Labels, allow_none=True)
        self.brain.setToolTip("optional brain mask; (none) = the engine's automatic mask (heads with skull: "
                              "the extracted brain, see Skull stripping)")
        self.axis = axis_combo()
        self.skull = skull_combo()
        self.uncertainty = QCheckBox("Uncertainty map too")
        self.uncertainty.setToolTip("per-voxel standard deviation over posterior samples of the model")
        self.samples = QSpinBox()
        self.samples.setRange(2, 64)
        self.samples.setValue(8)
        self.samples.setSuffix(" samples")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 20.0)
        self.threshold.setSingleStep(0.1)
        self.threshold.setValue(1.0)
        self.threshold.setToolTip("candidate threshold in heatmap units; 1.0 = calibrated on healthy volumes")
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(int(0.05 * SLIDER_STEPS), int(5.0 * SLIDER_STEPS))
        self.slider.setValue(SLIDER_STEPS)
        self.run_btn = QPushButton("Compute anomaly map")
        self.job = JobBar()
        self.job.lock(self.run_btn)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        for j, tip in enumerate(self.TIPS):
            self.table.horizontalHeaderItem(j).setToolTip(tip)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        # numbers as wide as they need (never cut to "49…"); the last column takes what is left
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip("click a row to go to that candidate")
        form = QFormLayout()
        form.addRow("Image", self.source)
        form.addRow("Brain mask", self.brain)
        form.addRow("Slice axis", self.axis)
        form.addRow("Skull stripping", self.skull)
        trow = QHBoxLayout()
        trow.addWidget(self.slider)
        trow.addWidget(self.threshold)
        form.addRow("Threshold", trow)
        lay = QVBoxLayout(self)
        lay.addWidget(scope_label())
        lay.addLayout(form)
        urow = QHBoxLayout()
        urow.addWidget(self.uncertainty)
        urow.addWidget(self.samples)
        lay.addLayout(urow)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.job)
        lay.addWidget(self.summary)
        lay.addWidget(self.table)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(self.rethreshold)
        self.run_btn.clicked.connect(self.run)
        self.slider.valueChanged.connect(lambda v: self.threshold.setValue(v / SLIDER_STEPS))
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.table.cellClicked.connect(self.jump_to)
        self.table.currentCellChanged.connect(lambda row, *_: self.jump_to(row))
        self.heat_layer = None
        self.labels_layer = None
        self.candidates: list[dict] = []
        self._spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
        self._healthy_peak: float | None = None
        self._healthy_regions: int | None = None  # regions above the healthy peak: fixed for a heatmap
        self._warning = ""  # the engine's warning for the current heatmap (its calibration does not hold)

    def run(self) -> None:
        """Compute the heatmap (and optional uncertainty) of the image chosen now (recorded at start)."""
        layer = self.source.layer()
        if not need(layer):
            return
        data = layer.data
        blayer = self.brain.layer()
        brain = None if blayer is None else np.asarray(blayer.data) != 0
        geo = layer_geometry(layer)
        spacing = layer_spacing(layer)
        name = layer.name
        thr = self.threshold.value()
        axis = axis_value(self.axis)
        with_unc = self.uncertainty.isChecked()
        samples = self.samples.value()
        force = _common.force()
        skull = self.skull.currentText()
        direction, origin = layer_direction_origin(layer)  # (None, origin 0) for a layer that is no 3D volume

        def job(progress, cancel):
            from .. import service

            request = service.AnomalyRequest(axis=axis, force=force, skull_strip=skull, threshold=thr,
                                             uncertainty_samples=samples if with_unc else None)
            res = service.run(request, data, spacing, model=get_model(), direction=direction, origin=origin,
                              brain_mask=brain, progress=progress, cancel=cancel)
            return res, healthy_regions(res.heatmap, spacing, res.healthy_peak)

        def done(out) -> None:
            from napari.utils.colormaps import DirectLabelColormap

            res, regions = out
            unc = res.uncertainty  # 0 outside an extracted brain (the model saw no more)
            extracted = res.brain_mask if res.extracted else None
            self._spacing = spacing
            self._healthy_peak = res.healthy_peak
            self._healthy_regions = regions
            self.heat_layer = self.viewer.add_image(
                res.heatmap, name=f"{name} anomaly", colormap="inferno", blending="additive",
                contrast_limits=(0.0, 2.0 * thr), **geo)
            one_colour = DirectLabelColormap(color_dict={None: CANDIDATE_COLOUR, 0: "transparent"})
            self.labels_layer = self.viewer.add_labels(res.labels, name=f"{name} candidates", opacity=1.0,
                                                       colormap=one_colour, **geo)
            self.labels_layer.contour = 1  # outlines: the lesion inside stays visible
            self.labels_layer.mode = "pan_zoom"  # no paint tool armed on a result layer
            if unc is not None:
                self.viewer.add_image(unc, name=f"{name} uncertainty", colormap="viridis", blending="additive", **geo)
            if extracted is not None:
                add_brain_layer(self.viewer, extracted, name, geo)
            if layer in self.viewer.layers:  # the new layers took the selection: give it back to the image
                self.viewer.layers.selection.active = layer
            self._warning = " ".join(res.warnings)
            if self._warning:  # the full text is in the summary; a pop-up shows one short line only
                from napari.utils.notifications import show_warning

                show_warning(NOTIFY_UNCALIBRATED)
            self._show(res.candidates, thr)

        self.job.start("anomaly", job, done, viewer=self.viewer, sources=(layer, blayer))

    def _threshold_changed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * SLIDER_STEPS))
        self.slider.blockSignals(False)
        self._debounce.start()

    def rethreshold(self) -> None:
        """Re-label the existing heatmap at the current threshold (no network run); update the table."""
        from ..engine.ops.anomaly import threshold_candidates

        if self.heat_layer is None or self.heat_layer not in self.viewer.layers:
            return
        value = self.threshold.value()
        labels, rows = threshold_candidates(np.asarray(self.heat_layer.data), self._spacing, value,
                                            healthy_peak=self._healthy_peak)
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            self.labels_layer.data = labels
        self._show(rows, value)

    def _show(self, rows: list[dict], threshold: float) -> None:
        self.candidates = rows
        hp = self._healthy_peak
        self.table.setColumnHidden(self.VOXELS, bool(np.isclose(np.prod(self._spacing), 1.0)))
        last = self.table.horizontalHeaderItem(len(self.COLUMNS) - 1)
        last.setToolTip(self.TIPS[-1] if hp is None else self.TIPS[-1].replace(
            "the highest peak", f"{hp:.2f}, the highest peak"))
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        from ..service import table_row  # "> healthy": peak above the model's healthy peak, not the threshold

        for i, r in enumerate(rows):
            for j, v in enumerate(table_row(r)):
                item = QTableWidgetItem(f"{v:.2f}" if isinstance(v, float) else str(v))
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.blockSignals(False)
        lines = [f"{len(rows)} candidate(s) above {threshold:.2f}"
                 + (f"; highest peak {rows[0]['peak']:.2f}" if rows else "")]
        if hp is not None and self._healthy_regions is not None:
            lines.append(f"{self._healthy_regions} region(s) peak above {hp:.2f}, the highest seen in healthy "
                         "brains (fixed: the threshold does not change this count)")
        if self._warning:
            lines.append(f"⚠ {self._warning}")
        self.summary.setText("\n".join(lines))

    def jump_to(self, row: int, _col: int = 0) -> None:
        """Move the viewer (slice position and camera centre) to the candidate's centroid, in world mm."""
        if not 0 <= row < len(self.candidates) or self.heat_layer is None:
            return
        zyx = self.candidates[row]["centroid_voxel_zyx"]
        world = tuple(float(c) for c in self.heat_layer.data_to_world(zyx))
        self.viewer.dims.set_point(range(len(world)), world)
        self.viewer.camera.center = world if self.viewer.dims.ndisplay == 3 else world[-2:]
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            self.labels_layer.selected_label = self.candidates[row]["label"]


def healthy_regions(heatmap: np.ndarray, spacing, healthy_peak: float | None) -> int | None:
    """How many candidate regions the heatmap has above the model's healthy peak (None: the model has none).

    The candidates at threshold ``healthy_peak``: a count that does not depend on the threshold slider
    (raising the threshold can split one candidate into several, each still above the healthy peak).
    """
    if healthy_peak is None:
        return None
    from ..engine.ops.anomaly import threshold_candidates

    return len(threshold_candidates(heatmap, spacing, float(healthy_peak))[1])
