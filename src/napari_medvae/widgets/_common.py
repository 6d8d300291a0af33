"""Shared plumbing of the dock widgets: the session's model, layer pickers, jobs with progress and cancel.

Nothing here imports torch at module level: the engine is imported when a job starts, so napari
starts fast with the plugin installed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

_MODEL: dict[str, Any] = {"model": None, "path": None, "device": "auto"}
_LOCK = threading.Lock()


def get_model():
    """The model chosen in the Model widget (loaded on first use: the shipped default on 'auto')."""
    from ..engine import load_model

    with _LOCK:
        if _MODEL["model"] is None:
            _MODEL["model"] = load_model(_MODEL["path"], device=_MODEL["device"])
        return _MODEL["model"]


def set_model(model, path: str | None, device: str) -> None:
    with _LOCK:
        _MODEL.update(model=model, path=path, device=device)


def notify_error(exc: BaseException) -> None:
    """Show an error as a napari notification (one line), never a traceback dialog."""
    from napari.utils.notifications import show_error, show_info

    from ..errors import Cancelled, MedVAEError

    if isinstance(exc, Cancelled):
        show_info("medvae: job cancelled; nothing was added")
    elif isinstance(exc, MedVAEError):
        show_error(f"medvae: {exc}")
    else:
        show_error(f"medvae: unexpected error: {type(exc).__name__}: {exc}")


def layer_geometry(layer) -> dict:
    """Keyword arguments that give a new layer the same world geometry (and metadata) as ``layer``."""
    meta = dict(layer.metadata) if layer.metadata else {}
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
            "affine": np.array(layer.affine.affine_matrix), "metadata": meta}


def layer_spacing(layer) -> tuple[float, ...]:
    """Voxel spacing in mm, array order: the layer's scale (3D layers)."""
    return tuple(float(s) for s in layer.scale)


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one type, kept up to date."""

    def __init__(self, viewer, layer_type, parent=None, allow_none: bool = False):
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self.allow_none = allow_none
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            ev.connect(self.refresh)
        self.refresh()

    def refresh(self, *_):
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self.allow_none:
            self.addItem("(none)")
        for layer in self.viewer.layers:
            if isinstance(layer, self.layer_type):
                self.addItem(layer.name)
        idx = self.findText(current)
        if idx >= 0:
            self.setCurrentIndex(idx)
        self.blockSignals(False)

    def layer(self):
        name = self.currentText()
        if not name or name == "(none)" or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]


class JobBar(QWidget):
    """Progress bar + Cancel button; runs one engine job at a time in a napari thread worker.

    The engine reports progress through a callback (called in the worker thread): the latest
    (done, total) is stored and a timer in the GUI thread shows it in this bar and in napari's activity
    dock. Cancel sets a flag the engine polls before every batch; the job then raises Cancelled.
    """

    finished = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel_btn)
        self.worker = None
        self._state = (0, 1)
        self._flag = threading.Event()
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._tick)
        self._napari_bar = None
        self._buttons: list[QWidget] = []

    @property
    def running(self) -> bool:
        return self.worker is not None

    def lock(self, *buttons: QWidget) -> None:
        """Buttons disabled while a job runs."""
        self._buttons.extend(buttons)

    def start(self, desc: str, fn: Callable[..., Any], on_done: Callable[[Any], None], *,
              keep_on_cancel: bool = False, **kwargs) -> None:
        """Run ``fn(progress=..., cancel=..., **kwargs)`` in a worker; ``on_done(result)`` in the GUI thread.

        A job that returns after Cancel is dropped, unless ``keep_on_cancel`` (training: Stop keeps the model).
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress as napari_progress
        from napari.utils.notifications import show_warning

        if self.running:
            show_warning("medvae: a job is already running; wait for it or cancel it")
            return
        self._flag.clear()
        self._state = (0, 1)

        def call():
            return fn(progress=self._report, cancel=self._flag.is_set, **kwargs)

        worker = create_worker(call, _ignore_errors=True)  # errors are shown by _failed as notifications
        worker.returned.connect(lambda res: self._done(res, on_done, keep_on_cancel))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finish)
        self.worker = worker
        for b in self._buttons:
            b.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setRange(0, 0)
        self._napari_bar = napari_progress(total=0, desc=f"medvae: {desc}")
        self._timer.start()
        worker.start()

    def _report(self, done: int, total: int) -> None:
        self._state = (done, total)

    def _tick(self) -> None:
        done, total = self._state
        if total > 0 and done > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(done)
            pb = self._napari_bar
            if pb is not None:
                if pb.total != total:
                    pb.total = total
                pb.update(max(0, done - pb.n))

    def cancel(self) -> None:
        """Ask the running job to stop (within one batch, well under a second on typical volumes)."""
        self._flag.set()
        self.cancel_btn.setEnabled(False)

    def _done(self, result, on_done, keep_on_cancel: bool = False) -> None:
        if self._flag.is_set() and not keep_on_cancel:  # cancelled after the last batch: drop the result
            notify_error(_cancelled())
            return
        try:
            on_done(result)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
            notify_error(exc)

    def _failed(self, exc: BaseException) -> None:
        notify_error(exc)

    def _finish(self) -> None:
        self._timer.stop()
        if self._napari_bar is not None:
            self._napari_bar.close()
            self._napari_bar = None
        self.worker = None
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.cancel_btn.setEnabled(False)
        for b in self._buttons:
            b.setEnabled(True)
        self.finished.emit()


def _cancelled():
    from ..errors import Cancelled

    return Cancelled("cancelled")


def device_label_text() -> str:
    """Human-readable device of the loaded model (or what 'auto' would pick) without loading torch twice."""
    m = _MODEL["model"]
    if m is None:
        return "device: chosen when the first job runs (auto: CUDA > MPS > CPU)"
    return f"device: {m.device}"


def warning_label() -> QLabel:
    lab = QLabel("")
    lab.setStyleSheet("color: #e0a030;")
    lab.setWordWrap(True)
    return lab
