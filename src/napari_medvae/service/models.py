"""The one place an inference model is loaded: a small cache keyed by the model file and the device.

The CLI, ``medvae batch``, ``medvae demo``, the napari widgets and the benchmarks all get their model here, so a
model is read once per process (or napari session) and every caller sees the same loading rules. torch is imported
only when a model is loaded (``medvae --help`` stays fast).

The key holds the files' modification times, so a model retrained to the same path is loaded again, not served
stale. A model moved to the CPU by the engine's out-of-memory fallback stays there for later callers, as the
napari session's model always did.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.model.loader import Model

MAX_MODELS = 4  # least recently used models beyond this are dropped (their memory freed when unreferenced)

_CACHE: OrderedDict[tuple, Model] = OrderedDict()
_LOCK = threading.Lock()


def _key(path: str | os.PathLike[str] | None, device: str) -> tuple:
    """(weights path, its and its config's mtimes, device): None stands for the shipped model."""
    from ..engine.model.loader import model_path

    p = model_path(path if path else None)
    p = p.with_suffix(".safetensors") if p.suffix in ("", ".json") else p
    stamps = tuple(f.stat().st_mtime_ns if f.exists() else None for f in (p, p.with_suffix(".json")))
    return (str(p.resolve()), stamps, str(device))


def get_model(path: str | os.PathLike[str] | None = None, device: str = "auto") -> Model:
    """The model at ``path`` (None: the shipped default) on ``device``, loaded on first use and then reused.

    Raises ModelError/InputError from :func:`napari_medvae.engine.load_model` for a bad file or device.
    """
    from ..engine import load_model  # torch: only when a model is needed

    key = _key(path, device)
    with _LOCK:  # one load at a time: two widgets asking at once get the same model
        model = _CACHE.get(key)
        if model is None:
            model = load_model(path, device=device)
            _CACHE[key] = model
            while len(_CACHE) > MAX_MODELS:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return model


def clear_models() -> None:
    """Forget every cached model (the next :func:`get_model` loads from disk again)."""
    with _LOCK:
        _CACHE.clear()


__all__ = ["MAX_MODELS", "clear_models", "get_model"]
