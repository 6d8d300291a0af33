"""Model dock widget: choose the model and device, see its card, train or fine-tune with a live loss plot."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QPainter, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _common
from ._common import JobBar, set_model, warning_label


class LossPlot(QWidget):
    """A minimal live plot of training (white) and validation (orange) loss."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(90)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.steps = 1

    def reset(self, steps: int) -> None:
        self.train, self.val, self.steps = [], [], max(1, steps)
        self.update()

    def add(self, info: dict) -> None:
        self.train.append((int(info["step"]), float(info["loss"])))
        if "val_loss" in info:
            self.val.append((int(info["step"]), float(info["val_loss"])))
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.black)
        values = [v for _, v in self.train] + [v for _, v in self.val]
        if len(values) < 2:
            return
        lo, hi = min(values), max(values)
        w, h = self.width(), self.height()

        def pt(step: float, v: float) -> QPointF:
            return QPointF(w * step / self.steps, h - 4 - (h - 8) * (v - lo) / max(hi - lo, 1e-9))

        p.setPen(QPen(Qt.white, 1))
        for (s0, v0), (s1, v1) in zip(self.train, self.train[1:], strict=False):
            p.drawLine(pt(s0, v0), pt(s1, v1))
        p.setPen(QPen(Qt.darkYellow, 2))
        for (s0, v0), (s1, v1) in zip(self.val, self.val[1:], strict=False):
            p.drawLine(pt(s0, v0), pt(s1, v1))


class ModelWidget(QWidget):
    """Pick the shipped default or a checkpoint, a device, and (re)train on healthy volumes."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.path = QLineEdit()
        self.path.setPlaceholderText("shipped default model")
        self.browse = QPushButton("Browse…")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.load_btn = QPushButton("Load model")
        self.device_label = QLabel(_common.device_label_text())
        self.warning = warning_label()
        self.card = QLabel("")
        self.card.setWordWrap(True)
        self.card.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("folder of healthy volumes (.nii.gz, .nrrd, .mha, …)")
        self.data_browse = QPushButton("Browse…")
        self.out = QLineEdit(str(Path.home() / "medvae_models" / "finetuned"))
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(300)
        self.train_btn = QPushButton("Fine-tune current model")
        self.plot = LossPlot()
        self.job = JobBar()
        self.job.cancel_btn.setText("Stop")
        self.job.lock(self.load_btn, self.train_btn)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(self.browse)
        form.addRow("Model", row)
        form.addRow("Device", self.device)
        drow = QHBoxLayout()
        drow.addWidget(self.data_dir)
        drow.addWidget(self.data_browse)
        tform = QFormLayout()
        tform.addRow("Healthy data", drow)
        tform.addRow("Steps", self.steps)
        tform.addRow("Save as", self.out)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.load_btn)
        lay.addWidget(self.device_label)
        lay.addWidget(self.warning)
        lay.addWidget(self.card)
        lay.addWidget(QLabel("<b>Train / fine-tune</b>"))
        lay.addLayout(tform)
        lay.addWidget(self.train_btn)
        lay.addWidget(self.plot)
        lay.addWidget(self.job)
        lay.addStretch()
        self.browse.clicked.connect(self._browse_model)
        self.data_browse.clicked.connect(self._browse_data)
        self.load_btn.clicked.connect(self.load)
        self.train_btn.clicked.connect(self.train)

    def _browse_model(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Model weights", "", "safetensors (*.safetensors)")
        if f:
            self.path.setText(f)

    def _browse_data(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of healthy volumes")
        if d:
            self.data_dir.setText(d)

    def load(self) -> None:
        """Load the chosen model on the chosen device (in a worker: torch import and weights)."""
        path = self.path.text().strip() or None
        device = self.device.currentText()

        def job(progress, cancel):
            from ..engine import load_model

            return load_model(path, device=device)

        self.job.start("load model", job, lambda m: self._loaded(m, path, device))

    def _loaded(self, model, path, device) -> None:
        set_model(model, path, device)
        self.device_label.setText(_common.device_label_text())
        if model.device.type == "cpu" and device != "cpu":
            self.warning.setText("No GPU available: running on the CPU (slower). Results are the same.")
        else:
            self.warning.setText("")
        self.card.setText(model.card())

    def train(self) -> None:
        """Fine-tune the current model on a folder of healthy volumes; Stop saves what was learnt so far."""
        from napari.utils.notifications import show_error

        data = self.data_dir.text().strip()
        if not data or not Path(data).is_dir():
            show_error("medvae: choose a folder of healthy volumes to train on")
            return
        out = self.out.text().strip()
        steps = self.steps.value()
        init = self.path.text().strip() or None
        device = self.device.currentText()
        self.plot.reset(steps)

        def job(progress, cancel):
            from ..cli import _gather
            from ..engine import load_model
            from ..engine.model import default_model_path
            from ..engine.train import TrainConfig, train

            Path(out).parent.mkdir(parents=True, exist_ok=True)
            tc = TrainConfig(train=_gather([data]), out=out, steps=steps, init=init or str(default_model_path()),
                             device=device, val_every=max(1, min(100, steps // 3)), lr=5e-4,
                             data_description=f"fine-tuned on {data}")

            def cb(info):
                progress(info["step"], info["steps"])
                self._last_info = info

            path = train(tc, callback=cb, cancel=cancel)
            return load_model(path, device=device), str(path)

        def done(res):
            model, path = res
            self.path.setText(path)
            self._loaded(model, path, device)

        self._last_info = None
        self.job.start("train", job, done, keep_on_cancel=True)
        self.job._timer.timeout.connect(self._plot_tick)

    def _plot_tick(self) -> None:
        info = getattr(self, "_last_info", None)
        if info is not None and (not self.plot.train or self.plot.train[-1][0] < info["step"]):
            self.plot.add(info)
