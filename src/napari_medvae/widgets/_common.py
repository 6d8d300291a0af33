"""Shared plumbing of the dock widgets: the session's model, layer pickers, jobs with progress and cancel.

Nothing here imports torch at module level: the engine is imported inside jobs (worker threads), so
napari starts fast with the plugin installed (tests/test_manifest.py checks ``sys.modules``).
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QThreadPool, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QDockWidget, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

# ---------------------------------------------------------------------------------------------
# the session's model: one per napari session, shared by every widget, chosen in the Model widget

_SESSION: dict[str, Any] = {"model": None, "path": None, "device": "auto", "force": False}
_LOCK = threading.Lock()


class ModelSignals(QObject):
    """``changed(model)`` after a model is loaded (emitted from worker threads; queued to the GUI)."""

    changed = Signal(object)


_SIGNALS: ModelSignals | None = None


def model_signals() -> ModelSignals:
    """The session's signal hub; created in the GUI thread by the first widget that asks."""
    global _SIGNALS
    if _SIGNALS is None:
        _SIGNALS = ModelSignals()
    return _SIGNALS


def get_model():
    """The model chosen in the Model widget; loaded on first use (shipped default, device 'auto').

    Called inside jobs (worker threads): loading imports torch and reads the weights (``service.get_model``).
    """
    from ..service import get_model as cached

    with _LOCK:
        loaded = _SESSION["model"] is None
        if loaded:
            _SESSION["model"] = cached(_SESSION["path"], _SESSION["device"])
        model = _SESSION["model"]
    if loaded and _SIGNALS is not None:
        _SIGNALS.changed.emit(model)
    return model


def current_model():
    """The loaded model, or None if no job has needed one yet (never loads)."""
    return _SESSION["model"]


def set_model(model, path: str | None, device: str) -> None:
    """Make ``model`` the session's model (every widget's next job uses it)."""
    with _LOCK:
        _SESSION.update(model=model, path=path, device=device)
    if _SIGNALS is not None:
        _SIGNALS.changed.emit(model)


def reset_model() -> None:
    """Forget the session's model: the next job loads the shipped default on 'auto' again."""
    with _LOCK:
        _SESSION.update(model=None, path=None, device="auto")


def set_force(force: bool) -> None:
    """Skip the engine's out-of-distribution check (the user accepts unreliable results)."""
    _SESSION["force"] = bool(force)


def force() -> bool:
    return bool(_SESSION["force"])


def device_text(model, requested: str) -> tuple[str, str]:
    """(device label, warning) for a loaded model; the warning is non-empty when it fell back to the CPU."""
    dev = str(model.device)
    label = f"device: {dev}" + (f" (requested: {requested})" if requested != dev else "")
    warn = ""
    if model.device.type == "cpu" and requested != "cpu":
        warn = "No GPU found: running on the CPU. Results are the same, but jobs take longer."
    return label, warn


# ---------------------------------------------------------------------------------------------
# notifications


def notify_error(exc: BaseException) -> None:
    """Show an error as a one-line napari notification, never a traceback dialog."""
    from napari.utils.notifications import show_error, show_info

    from ..errors import Cancelled, MedVAEError

    if isinstance(exc, Cancelled):
        show_info("medvae: job cancelled; nothing was added")
    elif type(exc).__name__ == "OutOfDistributionError":
        show_error(f"medvae: {exc}. In napari: tick 'Run on unusual volumes' in the Model widget.")
    elif isinstance(exc, MedVAEError):
        show_error(f"medvae: {exc}")
    elif isinstance(exc, MemoryError):
        show_error("medvae: out of memory; close other layers or crop the volume and try again")
    else:
        show_error(f"medvae: unexpected error: {type(exc).__name__}: {exc}")


def need(layer, what: str = "an image layer") -> bool:
    """False (with a notification) when no layer is chosen."""
    if layer is None:
        from napari.utils.notifications import show_error

        show_error(f"medvae: choose {what} first")
        return False
    return True


# ---------------------------------------------------------------------------------------------
# layers


def layer_geometry(layer, keep_dtype: bool = False) -> dict:
    """Keyword arguments giving a new layer the same world geometry (and metadata) as ``layer``.

    ``keep_dtype``: the new layer is on the source's intensity scale (reconstruct, denoise, inpaint);
    its metadata records the source's dtype so that saving it casts back to it, as the CLI does.
    """
    from ..output_dtype import SOURCE_DTYPE_KEY

    meta = dict(layer.metadata) if layer.metadata else {}
    source_dtype = meta.pop(SOURCE_DTYPE_KEY, None) or str(layer.data.dtype)  # a result's own source first
    if keep_dtype:
        meta[SOURCE_DTYPE_KEY] = source_dtype
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
            "affine": np.array(layer.affine.affine_matrix), "metadata": meta}


def layer_spacing(layer) -> tuple[float, ...]:
    """Voxel spacing in mm, array order (z, y, x): the layer's scale."""
    return tuple(float(s) for s in layer.scale)


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one type, kept up to date."""

    def __init__(self, viewer, layer_type, parent=None, allow_none: bool = False):
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self.allow_none = allow_none
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self.refresh)
        self.refresh()

    def refresh(self, *_) -> None:
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
        elif self.count() and not self.allow_none:
            self.setCurrentIndex(self.count() - 1)  # newest layer
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 - Qt API; picks up renamed layers
        self.refresh()
        super().showPopup()

    def layer(self):
        name = self.currentText()
        if not name or name == "(none)" or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]


def axis_combo() -> QComboBox:
    """Slice-axis choice: 'auto' (thickest spacing, ties -> 0) or an axis numbered as in ``slices.describe_axis``
    ('file axis 2 (napari axis 0)'); its data is the napari array axis (the Inpaint widget's AxisCombo also
    names the axes anatomically)."""
    from ..slices import describe_axis

    box = QComboBox()
    box.addItem("auto (thickest spacing)", None)
    for a in range(3):
        box.addItem(describe_axis(a), a)
    box.setToolTip("the axis slices are taken along; auto = the axis with the largest voxel spacing. "
                   "Numbers: the file's voxel axis (as medvae's --axis) and napari's axis")
    return box


def axis_value(box: QComboBox) -> int | None:
    """The chosen napari array axis, or None for auto."""
    return box.currentData()


def warning_label() -> QLabel:
    lab = QLabel("")
    lab.setStyleSheet("color: #e0a030;")
    lab.setWordWrap(True)
    return lab


# ---------------------------------------------------------------------------------------------
# jobs

# Worker threads of jobs that have not ended, as (cancel flag, ended event) pairs. At interpreter exit
# PyQt deletes every Qt object Python owns, the workers' signal objects included; a worker that emits
# afterwards raises in a Qt thread and Qt aborts the process ("wrapped C/C++ object of type
# WorkerBaseSignals has been deleted", then "Aborted"). So exit first cancels the jobs and waits for them.
_RUNNING: dict[int, tuple[threading.Event, threading.Event]] = {}
STOP_TIMEOUT_S = 120.0  # the engine polls Cancel between batches (seconds); a model load is not cancellable


def stop_jobs(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Cancel every running medvae job and wait until its worker thread has ended; False on time-out.

    Safe from any thread and after the widgets were deleted: it touches no widget.
    """
    deadline = time.monotonic() + timeout_s
    running = list(_RUNNING.values())
    for flag, _ in running:
        flag.set()
    ended = all(done.wait(max(0.0, deadline - time.monotonic())) for _, done in running)
    if running:  # the job function has returned; let the worker emit its last signals too
        ended = QThreadPool.globalInstance().waitForDone(int(1000 * max(1.0, deadline - time.monotonic()))) and ended
    return ended


def _stop_jobs_at_exit() -> None:
    if not _RUNNING:
        return
    print(f"medvae: stopping {len(_RUNNING)} running job(s) before exit (training saves what it has learnt)",
          file=sys.stderr, flush=True)
    if not stop_jobs():
        print(f"medvae: a job did not stop within {STOP_TIMEOUT_S:.0f} s of exit", file=sys.stderr, flush=True)


# threading's exit hooks run before every atexit handler: before PyQt deletes its objects, and before
# weakref.finalize removes temporary folders (training's) that a job still uses. atexit as a fallback.
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_stop_jobs_at_exit)


def is_deleted(obj) -> bool:
    """True when the C++ side of a Qt object is gone (its window was closed and deleted)."""
    try:
        obj.objectName()
    except RuntimeError:
        return True
    return False


def _unwrap(obj):
    """The object behind a napari PublicOnlyProxy (or ``obj`` itself)."""
    return getattr(obj, "__wrapped__", obj)


class JobBar(QWidget):
    """Progress bar + Cancel button; runs one engine job at a time in a napari thread worker.

    The engine reports progress through a callback called in the worker thread: the latest
    (done, total) is stored, and a timer in the GUI thread shows it in this bar and in a
    ``napari.utils.cancelable_progress`` bar (napari's activity dock, whose own Cancel button does
    the same as ours). Cancel sets a flag that the engine
    polls before every batch of slices; the engine then raises ``Cancelled`` and no layer is added.
    A result that arrives after Cancel was pressed is dropped as well. When the job ends the bar says how:
    "done" (full), "cancelled" or "failed" (empty), and ``outcome`` holds the same word.

    Closing the viewer (or deleting the widget) cancels the job quietly; a result or error that arrives
    after the widget was deleted is dropped, and interpreter exit waits for the worker (``stop_jobs``).
    """

    finished = Signal()
    ticked = Signal()

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
        self.state = (0, 1)
        self.outcome = ""  # "done", "cancelled" or "failed" once a job has ended
        self._flag = threading.Event()
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._tick)
        self._napari_bar = None
        self._buttons: list[QWidget] = []
        self._quiet = False  # the window closed: a cancelled job ends without a notification
        flag = self._flag
        self.destroyed.connect(lambda *_: flag.set())  # no reference to self: it runs as the C++ object dies

    @property
    def running(self) -> bool:
        return self.worker is not None

    def lock(self, *buttons: QWidget) -> None:
        """Widgets disabled while a job runs."""
        self._buttons.extend(buttons)

    def start(self, desc: str, fn: Callable[..., Any], on_done: Callable[[Any], None], *,
              keep_on_cancel: bool = False, viewer=None, sources: tuple = ()) -> None:
        """Run ``fn(progress, cancel)`` in a worker; then ``on_done(result)`` in the GUI thread.

        ``keep_on_cancel``: the job handles Cancel itself and its result is still used (training:
        Stop saves the model learnt so far). ``sources``: layers of ``viewer`` the job works on;
        removing one of them cancels the job (its result would have no source). Closing the
        window the widget is docked in cancels the job too.
        """
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress
        from napari.utils.notifications import show_warning

        if self.running:
            show_warning("medvae: a job is already running; wait for it or cancel it")
            return
        self._flag.clear()
        self.state = (0, 1)
        self.outcome = ""
        self._quiet = False
        flag, ended = self._flag, threading.Event()
        key = id(ended)
        _RUNNING[key] = (flag, ended)

        def call():
            try:
                return fn(self._report, flag.is_set)
            finally:
                _RUNNING.pop(key, None)
                ended.set()

        worker = create_worker(call, _ignore_errors=True)  # errors become notifications in _failed
        worker.returned.connect(lambda res: self._done(res, on_done, keep_on_cancel))
        worker.errored.connect(lambda exc: self._failed(exc))  # not a bound slot, as for finished below
        # engine warnings (e.g. out of memory: smaller batches, CPU fallback) as notifications
        worker.warned.connect(lambda w: show_warning(f"medvae: {w[0]}"))
        worker.finished.connect(lambda: self._finish())  # not a bound slot: runs even if the widget was deleted
        self.worker = worker
        self._watch(desc, viewer, sources)
        for b in self._buttons:
            b.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setFormat("%p%")
        self.bar.setRange(0, 0)  # busy until the first progress report
        # the activity dock's bar has its own Cancel button (polled in _tick)
        self._napari_bar = cancelable_progress(total=0, desc=f"medvae: {desc}")
        self._timer.start()
        worker.start()

    def _watch(self, desc: str, viewer, sources: tuple) -> None:
        """Cancel the job if one of its source layers is removed or the window closes."""
        self._desc, self._viewer, self._sources = desc, viewer, tuple(s for s in sources if s is not None)
        if viewer is not None and self._sources:
            viewer.layers.events.removed.connect(self._layer_removed)
        window = self.window()
        if isinstance(window, QDockWidget) and window.parentWidget() is not None:  # floating dock
            window = window.parentWidget().window()
        self._window = window
        if self._window is not self:
            self._window.installEventFilter(self)

    def _unwatch(self) -> None:
        viewer, self._viewer, self._sources = getattr(self, "_viewer", None), None, ()
        if viewer is not None:
            try:
                viewer.layers.events.removed.disconnect(self._layer_removed)
            except (TypeError, ValueError, RuntimeError):  # already gone with its viewer
                pass
        window, self._window = getattr(self, "_window", None), None
        if window is not None and window is not self:
            try:
                window.removeEventFilter(self)
            except RuntimeError:  # the window was deleted
                pass

    def _layer_removed(self, event) -> None:
        # plugin widgets see layers through napari's PublicOnlyProxy: compare the wrapped objects
        layer = _unwrap(getattr(event, "value", None))
        if self.running and not self.cancelled and any(layer is _unwrap(s) for s in self._sources):
            self.cancel()
            # closing the viewer removes every layer before the window closes: no warning then
            msg = (f"medvae: layer '{layer.name}' was removed while the {self._desc} job used it; "
                   "the job was stopped and adds nothing")
            viewer = self._viewer
            QTimer.singleShot(0, lambda: self._warn_if_open(viewer, msg))

    def _warn_if_open(self, viewer, msg: str) -> None:
        window = getattr(_unwrap(viewer), "window", None)
        if window is not None and not hasattr(_unwrap(window), "_qt_window"):  # napari's Viewer.close() ran
            self._quiet = True
            return
        from napari.utils.notifications import show_warning

        show_warning(msg)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Close and self.running:
            QTimer.singleShot(0, self._window_closed)  # after closeEvent: the close may still be refused
        return False

    def _window_closed(self) -> None:
        window = getattr(self, "_window", None)
        try:
            visible = window is not None and window.isVisible()
        except RuntimeError:  # the window was deleted
            visible = False
        if self.running and not visible:
            self._quiet = True
            self._flag.set()
            try:
                self.cancel()
            except RuntimeError:  # the widget was deleted with the window
                pass

    def _report(self, done: int, total: int) -> None:
        self.state = (int(done), int(total))

    def _tick(self) -> None:
        pb = self._napari_bar
        if pb is not None and pb.is_canceled and not self._flag.is_set():
            self.cancel()
        done, total = self.state
        if total > 0 and done > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(done)
            if pb is not None:
                if pb.total != total:
                    pb.total = total
                    pb.n = 0
                pb.update(done - pb.n)
        self.ticked.emit()

    def cancel(self) -> None:
        """Ask the running job to stop: the engine checks the flag before each batch of slices."""
        if self.running:
            self._flag.set()
            self.cancel_btn.setEnabled(False)

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def _failed(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        self.outcome = "cancelled" if isinstance(exc, Cancelled) else "failed"
        if isinstance(exc, Cancelled) and (self._quiet or is_deleted(self)):
            return  # cancelled by closing the viewer: nobody to tell
        notify_error(exc)

    def _done(self, result, on_done, keep_on_cancel: bool) -> None:
        if is_deleted(self):  # the widget went with its viewer: no layer to add, no widget to update
            self.outcome = "cancelled"
            return
        if self._flag.is_set() and not keep_on_cancel:
            from ..errors import Cancelled

            self._failed(Cancelled("cancelled"))
            return
        try:
            on_done(result)
            self.outcome = "done"
        except Exception as exc:  # noqa: BLE001 - shown to the user as a notification
            self._failed(exc)

    def _finish(self) -> None:
        self._unwatch()
        try:
            self._timer.stop()
            self._tick()
        except RuntimeError:  # the widget was deleted with its closed viewer while the job ran
            pass
        self.worker = None
        if self._napari_bar is not None:
            self._napari_bar.close()
            self._napari_bar = None
        try:
            self.outcome = self.outcome or ("cancelled" if self._flag.is_set() else "failed")
            self.bar.setRange(0, 1)
            self.bar.setValue(1 if self.outcome == "done" else 0)
            self.bar.setFormat(self.outcome)
            self.cancel_btn.setEnabled(False)
            for b in self._buttons:
                b.setEnabled(True)
            self.finished.emit()
        except RuntimeError:  # the widget was deleted with its closed viewer while the job ran
            pass


BRAIN_COLOUR = "lime"  # the extracted brain's outline: distinct from the cyan candidates and the inferno heatmap
SKULL_TIP = ("Heads with skull: extract the brain (deepbet) and run the model on it only; the scalp, skull and neck "
             "are left as they were. 'auto' does so when the volume is larger than an extracted brain (over 2.2 l).")


SCOPE_TEXT = ("For T1-weighted brain MRI, the contrast the model was trained on. T2, FLAIR and other contrasts "
              "are not supported: they get a warning, and their results are not reliable.")


def scope_label() -> QLabel:
    """A small grey note under a tool's title: which scans the model supports (T1 only)."""
    label = QLabel(SCOPE_TEXT)
    label.setWordWrap(True)
    label.setStyleSheet("color: grey; font-size: 11px;")
    return label


def skull_combo() -> QComboBox:
    """Skull stripping: auto / always / never (engine.prep.skullstrip.SKULL_MODES)."""
    box = QComboBox()
    box.addItems(["auto", "always", "never"])
    box.setToolTip(SKULL_TIP)
    return box


def layer_direction_origin(layer) -> tuple[tuple[float, ...] | None, tuple[float, ...]]:
    """The layer's direction cosines and origin (SimpleITK/LPS order), as io.Geometry has them.

    (None, (0, 0, 0)) when the layer has no 3D geometry: the job then refuses the layer itself, with the
    engine's message, through the usual error notification.
    """
    from ..errors import InputError
    from ..io import Geometry

    try:
        geo = Geometry.from_layer_kwargs(layer.scale, layer.translate, layer.affine, layer.metadata)
    except InputError:
        return None, (0.0, 0.0, 0.0)
    return tuple(geo.direction), tuple(geo.origin)


def add_brain_layer(viewer, mask, source_name: str, geo: dict) -> None:
    """Show the brain mask an operation used as a Labels layer (once per source)."""
    name = f"{source_name} brain"
    if name in viewer.layers:
        return
    from napari.utils.colormaps import DirectLabelColormap

    kw = {k: v for k, v in geo.items() if k != "metadata"}
    one_colour = DirectLabelColormap(color_dict={None: BRAIN_COLOUR, 0: "transparent"})
    layer = viewer.add_labels(mask.astype(np.uint8), name=name, opacity=0.8, colormap=one_colour, **kw)
    layer.contour = 1
    layer.mode = "pan_zoom"
