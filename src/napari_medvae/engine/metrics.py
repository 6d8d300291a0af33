"""Image-quality numbers shared by training validation, the demo and the benchmarks (one PSNR definition)."""

from __future__ import annotations

import numpy as np


def psnr_db(est: np.ndarray, ref: np.ndarray, peak: float, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of ``est`` against ``ref`` for a signal peak of ``peak``, over ``mask``'s voxels (default all).

    The mean squared error is floored at 1e-12, so identical inputs give a large finite number instead of inf.
    """
    a, b = (est, ref) if mask is None else (est[mask], ref[mask])
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(10 * np.log10(float(peak) ** 2 / max(float(np.mean(d * d)), 1e-12)))
