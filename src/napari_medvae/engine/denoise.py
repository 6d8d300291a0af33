"""Denoising that keeps pathology.

The network's reconstruction removes noise but also pulls lesions towards healthy tissue, which a
denoiser must not do. So the residual (input - reconstruction) is split: its smooth, spatially
coherent part that stands well above the noise (a lesion, an unusual structure) is put back; the
rest (noise) is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .model import Model
from .preprocess import prepare
from .reconstruct import reconstruct_prepared
from .runner import CancelFn, Progress, ProgressFn

STRUCTURE_SIGMA = 1.0  # voxels (model grid) of the smoothing that separates structure from noise
STRUCTURE_K = 5.0  # structure must exceed this many robust standard deviations of smoothed noise


def keep_structure(x: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Reconstruction plus the part of the residual that is structure, not noise (see module doc)."""
    resid = ndi.gaussian_filter(x - rec, STRUCTURE_SIGMA)
    body = x > 0.05
    vals = resid[body] if body.any() else resid.ravel()
    sigma = 1.4826 * float(np.median(np.abs(vals - np.median(vals)))) + 1e-6
    keep = np.abs(resid) > STRUCTURE_K * sigma
    keep = ndi.binary_opening(keep, iterations=1)
    return rec + resid * keep


def denoise(model: Model, volume: np.ndarray, spacing: Sequence[float], *, axis: int | None = None,
            force: bool = False, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
    """Denoise ``volume`` (z, y, x; spacing mm); float32 on the input grid, lesions preserved."""
    prep = prepare(volume, spacing, model.config, axis, force=force)
    p = Progress(prep.data.shape[0] + 1, progress, cancel)
    p.check()
    rec = reconstruct_prepared(model, prep, p)
    out = keep_structure(prep.data, rec)
    p.step()
    return prep.to_original(np.clip(out, 0, None))
