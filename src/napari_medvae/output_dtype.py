"""The voxel type of a written result: the source's, as the CLI and the napari writer both do.

A reconstructed, denoised or inpainted volume is computed in float32 but lies on the source's
intensity scale, so it is saved in the source's dtype (integers rounded and clipped to the type's
range), e.g. a uint8 scan gives a uint8 result.  Results on another scale (anomaly heatmaps,
uncertainty) stay float32.  Only numpy is imported here: ``medvae --help`` stays fast.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SOURCE_DTYPE_KEY", "cast_like"]

#: napari layer metadata key holding the source volume's dtype (e.g. ``"uint8"``); the plugin's
#: image writer casts the layer back to it with :func:`cast_like` on save.
SOURCE_DTYPE_KEY = "medvae_source_dtype"


def cast_like(out: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Return ``out`` in the input's dtype where sensible (integers rounded and clipped), else float32."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # clip in float64 to limits it can hold: float32 rounds 2**31 - 1 up to 2**31, float64 rounds
        # 2**63 - 1 up to 2**63, and the cast back would wrap around to the other end of the range
        hi = float(info.max)
        if hi > info.max:
            hi = float(np.nextafter(hi, -np.inf))
        return np.clip(np.rint(out.astype(np.float64)), float(info.min), hi).astype(dtype)
    return out.astype(np.float32, copy=False)
