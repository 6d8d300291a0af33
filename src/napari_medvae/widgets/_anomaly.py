"""Anomaly review dock widget: heatmap overlay, candidate labels, threshold slider, candidate table."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._common import JobBar, LayerCombo, get_model, layer_geometry, layer_spacing


class AnomalyWidget(QWidget):
    """Run the anomaly map; review candidates above a threshold (1.0 = the model's calibrated healthy limit)."""

    COLUMNS = ("label", "size (mm³)", "peak score", "voxels")

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.source = LayerCombo(napari_viewer, Image)
        self.brain = LayerCombo(napari_viewer, Labels, allow_none=True)
        self.uncertainty = QCheckBox("Also compute the uncertainty map (8 posterior samples)")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 50.0)
        self.threshold.setSingleStep(0.1)
        self.threshold.setValue(1.0)
        self.threshold.setToolTip("candidate threshold in heatmap units; 1.0 = calibrated on healthy volumes")
        self.run_btn = QPushButton("Compute anomaly map")
        self.job = JobBar()
        self.job.lock(self.run_btn)
        self.summary = QLabel("")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        form = QFormLayout()
        form.addRow("Image", self.source)
        form.addRow("Brain mask", self.brain)
        form.addRow("Threshold", self.threshold)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.uncertainty)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.job)
        lay.addWidget(self.summary)
        lay.addWidget(self.table)
        self.run_btn.clicked.connect(self.run)
        self.threshold.valueChanged.connect(self.rethreshold)
        self.table.cellClicked.connect(self.jump_to)
        self.heat_layer = None
        self.labels_layer = None
        self.candidates: list[dict] = []
        self._spacing = (1.0, 1.0, 1.0)

    def run(self) -> None:
        from napari.utils.notifications import show_error

        layer = self.source.layer()
        if layer is None:
            show_error("medvae: choose an image layer first")
            return
        data = np.asarray(layer.data)
        blayer = self.brain.layer()
        brain = None if blayer is None else np.asarray(blayer.data) != 0
        geo = layer_geometry(layer)
        spacing = layer_spacing(layer)
        name = layer.name
        thr = self.threshold.value()
        with_unc = self.uncertainty.isChecked()

        def job(progress, cancel):
            from ..engine import anomaly, uncertainty

            model = get_model()
            res = anomaly(model, data, spacing, brain_mask=brain, threshold=thr, progress=progress, cancel=cancel)
            unc = uncertainty(model, data, spacing, samples=8, progress=progress, cancel=cancel) if with_unc else None
            return res, unc

        def done(out):
            res, unc = out
            self._spacing = spacing
            self.heat_layer = self.viewer.add_image(
                res.heatmap, name=f"{name} anomaly", colormap="inferno", blending="additive",
                contrast_limits=(0.0, max(2.0, float(np.percentile(res.heatmap, 99.99)))), **geo)
            self.labels_layer = self.viewer.add_labels(res.labels, name=f"{name} candidates", opacity=0.5, **geo)
            if unc is not None:
                self.viewer.add_image(unc, name=f"{name} uncertainty", colormap="viridis", blending="additive",
                                      visible=False, **geo)
            self._show(res.candidates)

        self.job.start("anomaly", job, done)

    def rethreshold(self, value: float) -> None:
        """Re-threshold the existing heatmap (no network run): update labels and the table."""
        from ..engine.anomaly import threshold_candidates

        if self.heat_layer is None or self.heat_layer not in self.viewer.layers:
            return
        labels, rows = threshold_candidates(np.asarray(self.heat_layer.data), self._spacing, value)
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            self.labels_layer.data = labels
        self._show(rows)

    def _show(self, rows: list[dict]) -> None:
        self.candidates = rows
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            for j, v in enumerate((r["label"], r["volume_mm3"], r["peak"], r["voxels"])):
                item = QTableWidgetItem(f"{v:.2f}" if isinstance(v, float) else str(v))
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(i, j, item)
        top = f"; highest peak {rows[0]['peak']:.2f}" if rows else ""
        self.summary.setText(f"{len(rows)} candidate(s) above {self.threshold.value():.2f}{top}")

    def jump_to(self, row: int, _col: int = 0) -> None:
        """Move the viewer to the candidate's centroid (world coordinates of the heatmap layer)."""
        if not 0 <= row < len(self.candidates) or self.heat_layer is None:
            return
        zyx = self.candidates[row]["centroid_voxel_zyx"]
        world = self.heat_layer.data_to_world(zyx)
        self.viewer.dims.set_point(range(len(world)), tuple(world))
        self.viewer.camera.center = tuple(world)
        if self.labels_layer is not None:
            self.labels_layer.selected_label = self.candidates[row]["label"]
