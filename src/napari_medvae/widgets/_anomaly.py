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
    axis_combo,
    axis_value,
    get_model,
    layer_geometry,
    layer_spacing,
    need,
)

SLIDER_STEPS = 100  # slider ticks per heatmap unit


class AnomalyWidget(QWidget):
    """Anomaly heatmap and candidates above a threshold (1.0 = the model's calibrated healthy limit).

    Moving the threshold re-labels the existing heatmap (engine.threshold_candidates): no network run.
    Clicking a table row moves the viewer to that candidate's centroid. The last column says whether a
    candidate's peak is above the highest one the model found in healthy brains (when its calibration has one).
    """

    COLUMNS = ("label", "mm³", "peak", "voxels", "> healthy")
    TIPS = ("candidate label (1 = highest peak)", "size in mm³", "peak heatmap score (1.0 = calibrated threshold)",
            "size in voxels", "peak above the highest candidate peak of the model's healthy calibration brains")

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.source = LayerCombo(napari_viewer, Image)
        self.brain = LayerCombo(napari_viewer, Labels, allow_none=True)
        self.brain.setToolTip("optional brain mask; (none) = the engine's automatic mask")
        self.axis = axis_combo()
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
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        for j, tip in enumerate(self.TIPS):
            self.table.horizontalHeaderItem(j).setToolTip(tip)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(len(self.COLUMNS) - 1, QHeaderView.ResizeToContents)
        self.table.setToolTip("click a row to go to that candidate")
        form = QFormLayout()
        form.addRow("Image", self.source)
        form.addRow("Brain mask", self.brain)
        form.addRow("Slice axis", self.axis)
        trow = QHBoxLayout()
        trow.addWidget(self.slider)
        trow.addWidget(self.threshold)
        form.addRow("Threshold", trow)
        lay = QVBoxLayout(self)
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

        def job(progress, cancel):
            from ..engine import anomaly, uncertainty

            model = get_model()
            vol = np.asarray(data)
            res = anomaly(model, vol, spacing, brain_mask=brain, axis=axis, threshold=thr, force=force,
                          progress=progress, cancel=cancel)
            unc = None
            if with_unc:
                unc = uncertainty(model, vol, spacing, samples=samples, axis=axis, force=force, progress=progress,
                                  cancel=cancel)
            return res, unc

        def done(out) -> None:
            res, unc = out
            self._spacing = spacing
            self._healthy_peak = res.healthy_peak
            self.heat_layer = self.viewer.add_image(
                res.heatmap, name=f"{name} anomaly", colormap="inferno", blending="additive",
                contrast_limits=(0.0, 2.0 * thr), **geo)
            self.labels_layer = self.viewer.add_labels(res.labels, name=f"{name} candidates", opacity=0.5, **geo)
            if unc is not None:
                self.viewer.add_image(unc, name=f"{name} uncertainty", colormap="viridis", blending="additive", **geo)
            self._warning = " ".join(res.warnings)
            if self._warning:
                from napari.utils.notifications import show_warning

                show_warning(f"medvae: {self._warning}")
            self._show(res.candidates, thr)

        self.job.start("anomaly", job, done, viewer=self.viewer, sources=(layer, blayer))

    def _threshold_changed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * SLIDER_STEPS))
        self.slider.blockSignals(False)
        self._debounce.start()

    def rethreshold(self) -> None:
        """Re-label the existing heatmap at the current threshold (no network run); update the table."""
        from ..engine.anomaly import threshold_candidates

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
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            above = r.get("above_healthy")
            seen = "n/a" if above is None else ("yes" if above else "no")
            for j, v in enumerate((r["label"], round(r["volume_mm3"]), r["peak"], r["voxels"], seen)):
                item = QTableWidgetItem(f"{v:.2f}" if isinstance(v, float) else str(v))
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.blockSignals(False)
        top = f"; highest peak {rows[0]['peak']:.2f}" if rows else ""
        hp = self._healthy_peak
        if hp is not None:
            n = sum(bool(r.get("above_healthy")) for r in rows)
            top += f"; {n} peak above {hp:.2f}, the highest seen in healthy brains"
        warn = f"\n⚠ {self._warning}" if self._warning else ""
        self.summary.setText(f"{len(rows)} candidate(s) above {threshold:.2f}{top}{warn}")

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
