"""Model dock widget: choose the model and device, read its card, train or fine-tune with a live loss plot."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QPainter, QPen
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from . import _common
from ._common import JobBar, model_signals, set_model, warning_label


class LossPlot(QWidget):
    """A minimal live plot of the training loss (white) and validation loss (orange) against step."""

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
        if not values:
            p.setPen(QPen(Qt.gray, 1))
            p.drawText(self.rect(), Qt.AlignCenter, "loss plot (during training)")
            return
        lo, hi = min(values), max(values)
        w, h = self.width(), self.height()

        def pt(step: float, v: float) -> QPointF:
            return QPointF(w * step / self.steps, h - 4 - (h - 8) * (v - lo) / max(hi - lo, 1e-9))

        for series, pen in ((self.train, QPen(Qt.white, 1)), (self.val, QPen(Qt.darkYellow, 2))):
            p.setPen(pen)
            for (s0, v0), (s1, v1) in zip(series, series[1:], strict=False):
                p.drawLine(pt(s0, v0), pt(s1, v1))
        p.setPen(QPen(Qt.gray, 1))
        p.drawText(4, 12, f"{hi:.4g}")
        p.drawText(4, h - 4, f"{lo:.4g}")


class CardView(QTextBrowser):
    """The model card's radiologist summary: read-only, word-wrapped, scrolls instead of cutting text off."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setOpenExternalLinks(True)
        self.setLineWrapMode(QTextBrowser.LineWrapMode.WidgetWidth)
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setPlaceholderText("the model card shows here once the model is loaded")

    def set_card(self, markdown: str) -> None:
        """Show a card (Markdown) from its top."""
        self.setMarkdown(markdown)
        self.verticalScrollBar().setValue(0)

    def text(self) -> str:
        """The card as shown, as plain text."""
        return self.toPlainText()


class ModelWidget(QWidget):
    """Pick the shipped default or a checkpoint and a device; train / fine-tune on healthy volumes."""

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self._image_type = Image
        self.path = QLineEdit()
        self.path.setPlaceholderText("shipped default model (real_t1)")
        self.path.setToolTip("a <name>.safetensors checkpoint (with <name>.json beside it); empty = shipped default; "
                             "real_t1 = the default, trained on real T1 scans; synthetic_mni = the 2 mm model "
                             "trained on MNI152 templates (T1 and T2-like)")
        self.browse = QPushButton("Browse…")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setToolTip("auto = CUDA GPU, else Apple MPS, else CPU")
        self.load_btn = QPushButton("Load model")
        self.device_label = QLabel("device: not loaded yet")
        self.device_label.setStyleSheet("font-weight: bold;")
        self.warning = warning_label()
        self.force = QCheckBox("Run on unusual volumes (skip the out-of-distribution check)")
        self.force.setToolTip("the engine refuses volumes unlike the training data (e.g. CT for a T1 model); "
                              "tick to run anyway: results may be unreliable")
        self.card = CardView()
        self.card.setToolTip("what the model was trained on, which scans it takes, how to read its heatmap "
                             "(`medvae info` prints the technical details too)")

        self.layers = QListWidget()
        self.layers.setToolTip("tick image layers of healthy subjects to train on")
        self.layers.setMaximumHeight(90)
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("and/or a folder of healthy volumes")
        self.data_browse = QPushButton("Browse…")
        self.out = QLineEdit(str(Path.home() / "medvae_models" / "finetuned"))
        self.out.setToolTip("the new model is saved as <this>.safetensors + <this>.json")
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(300)
        self.from_scratch = QCheckBox("Train from scratch (else fine-tune the current model)")
        self.train_btn = QPushButton("Train")
        self.plot = LossPlot()
        self.job = JobBar()
        self.job.cancel_btn.setText("Stop")
        self.job.lock(self.load_btn, self.train_btn, self.browse, self.device)
        self._losses: deque[dict] = deque()  # filled by the training thread, drained by the plot

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
        tform.addRow("Healthy layers", self.layers)
        tform.addRow("Folder", drow)
        tform.addRow("Steps", self.steps)
        tform.addRow("Save as", self.out)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.load_btn)
        lay.addWidget(self.device_label)
        lay.addWidget(self.warning)
        lay.addWidget(self.force)
        lay.addWidget(self.card, 1)
        lay.addWidget(QLabel("<b>Train / fine-tune on healthy volumes</b>"))
        lay.addLayout(tform)
        lay.addWidget(self.from_scratch)
        lay.addWidget(self.train_btn)
        lay.addWidget(self.plot)
        lay.addWidget(self.job)

        self.browse.clicked.connect(self._browse_model)
        self.data_browse.clicked.connect(self._browse_data)
        self.load_btn.clicked.connect(self.load)
        self.train_btn.clicked.connect(self.train)
        self.force.toggled.connect(_common.set_force)
        self.job.ticked.connect(self._plot_tick)
        model_signals().changed.connect(self._show_model)
        events = napari_viewer.layers.events
        for ev in (events.inserted, events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()
        self.force.setChecked(_common.force())
        if _common.current_model() is not None:
            self._show_model(_common.current_model())
        else:
            self.load()  # the shipped default, in a worker: the card and device show up when it is ready

    # ------------------------------------------------------------------ choosing a model

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
            from ..service import get_model

            return get_model(path, device)

        self.job.start("load model", job, lambda m: set_model(m, path, device))

    def _show_model(self, model) -> None:
        """Device label, CPU-fallback warning (stays until another model is loaded) and the model card."""
        if model is None:
            return
        label, warn = _common.device_text(model, _common._SESSION["device"])
        self.device_label.setText(label)
        self.warning.setText(warn)
        from ..engine.model.card import card_summary

        self.card.set_card(card_summary(model.config))

    # ------------------------------------------------------------------ training

    def _ticked_layers(self) -> list:
        out = []
        for i in range(self.layers.count()):
            item = self.layers.item(i)
            name = item.text()
            if item.checkState() == Qt.Checked and name in self.viewer.layers:
                out.append(self.viewer.layers[name])
        return out

    def _refresh_layers(self, *_) -> None:
        checked = {layer.name for layer in self._ticked_layers()}
        self.layers.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, self._image_type) and layer.ndim == 3:
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if layer.name in checked else Qt.Unchecked)
                self.layers.addItem(item)

    def train(self) -> None:
        """Train on the ticked layers and/or a folder; Stop keeps (and saves) what was learnt so far."""
        from napari.utils.notifications import show_error

        from ..io import Geometry

        data = self.data_dir.text().strip()
        if data and not Path(data).is_dir():
            show_error(f"medvae: {data} is not a folder")
            return
        layers = [(layer.name, layer.data, Geometry.from_layer_kwargs(layer.scale, layer.translate, layer.affine,
                                                                       layer.metadata))
                  for layer in self._ticked_layers()]
        if not layers and not data:
            show_error("medvae: tick healthy image layers or choose a folder of healthy volumes to train on")
            return
        out = self.out.text().strip()
        if not out:
            show_error("medvae: choose where to save the new model ('Save as')")
            return
        steps = self.steps.value()
        scratch = self.from_scratch.isChecked()
        init = None if scratch else (self.path.text().strip() or None)
        device = self.device.currentText()
        described = ", ".join([n for n, _, _ in layers] + ([data] if data else []))
        self.plot.reset(steps)
        self._losses.clear()

        def job(progress, cancel):
            import tempfile

            import numpy as np

            from ..engine.model.loader import default_model_path
            from ..engine.training.vae import TrainConfig, train
            from ..service import get_model, save, volume_paths

            files = volume_paths([data]) if data else []  # a folder without volumes is refused
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="medvae_train_") as tmp:
                for i, (_, arr, geo) in enumerate(layers):  # the engine trains from files
                    files.append(str(save(Path(tmp) / f"layer{i}.nii.gz", np.asarray(arr), geo)))
                tc = TrainConfig(train=files, out=out, steps=steps, device=device,
                                 init=None if scratch else (init or str(default_model_path())),
                                 val_every=max(1, min(100, steps // 3)), lr=2e-3 if scratch else 5e-4,
                                 data_description=f"{'trained' if scratch else 'fine-tuned'} on {described}")

                def callback(info: dict) -> None:
                    progress(info["step"], info["steps"])
                    self._losses.append(info)

                path = train(tc, callback=callback, cancel=cancel)
            return get_model(path, device), str(path)

        def done(res) -> None:
            model, path = res
            self.path.setText(path)
            set_model(model, path, device)

        self.job.start("train", job, done, keep_on_cancel=True)

    def _plot_tick(self) -> None:
        while self._losses:
            self.plot.add(self._losses.popleft())
