"""Reconstruction: the model's estimate of clean, healthy anatomy for a whole volume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..model.loader import Model
from ..prep.preprocess import Prepared, prepare
from .runner import CancelFn, Progress, ProgressFn, run_network


def reconstruct_prepared(model: Model, prep: Prepared, progress: Progress) -> np.ndarray:
    """Network reconstruction on the model grid (normalised units), no mask."""
    return run_network(model, prep.data, None, prep.stride, progress)


def reconstruct(model: Model, volume: np.ndarray, spacing: Sequence[float], *, axis: int | None = None,
                force: bool = False, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
    """Reconstruct ``volume`` (z, y, x; spacing in mm, same order); float32 on the input grid.

    Healthy tissue is kept, noise and lesion-like deviations are pulled towards healthy appearance.
    """
    prep = prepare(volume, spacing, model.config, axis, force=force)
    p = Progress(prep.data.shape[0], progress, cancel)
    p.check()
    rec = reconstruct_prepared(model, prep, p)
    return prep.to_original(np.clip(rec, 0, None))
