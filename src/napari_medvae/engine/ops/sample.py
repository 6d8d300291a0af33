"""Posterior-sample uncertainty and generation of new volumes from the prior."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from ...errors import InputError
from ..model.loader import Model
from ..prep.preprocess import prepare
from .runner import CancelFn, Progress, ProgressFn, run_network


def uncertainty(model: Model, volume: np.ndarray, spacing: Sequence[float], *, samples: int = 8, seed: int = 0,
                axis: int | None = None, force: bool = False, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
    """Per-voxel standard deviation (input intensity units) over ``samples`` posterior draws z ~ q(z|x)."""
    if not isinstance(samples, (int, np.integer)) or not 2 <= samples <= 64:
        raise InputError(f"samples must be an integer from 2 to 64, not {samples!r}")
    prep = prepare(volume, spacing, model.config, axis, force=force)
    p = Progress(prep.data.shape[0] * samples, progress, cancel)
    p.check()
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    mean = np.zeros_like(prep.data)
    m2 = np.zeros_like(prep.data)
    for k in range(samples):  # Welford: no stack of samples in memory
        r = run_network(model, prep.data, None, prep.stride, p, sample_latent=True, generator=gen)
        d = r - mean
        mean += d / (k + 1)
        m2 += d * (r - mean)
    return prep.to_original(np.sqrt(m2 / (samples - 1)))


def sample(model: Model, n: int = 1, *, seed: int = 0, shape: Sequence[int] | None = None,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
    """Generate ``n`` volumes (n, z, y, x) in normalised units (1.0 ~ bright white matter).

    Latents are drawn from the prior N(0, I), made smooth along the slice axis so neighbouring slices
    agree, and decoded slice by slice without skip connections (the decoder alone).
    """
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= 64:
        raise InputError(f"number of samples must be an integer from 1 to 64, not {n!r}")
    s, h, w = (int(v) for v in (shape or model.config.sample_shape))
    if min(h, w) < 16 or s < 1:
        raise InputError(f"sample shape {shape} too small")
    h4, w4 = (h + 3) // 4, (w + 3) // 4
    rng = np.random.default_rng(seed)
    net = model.net
    lat = net.cfg.latent_channels
    p = Progress(n * s, progress, cancel)
    out = np.zeros((n, s, h, w), dtype=np.float32)
    bs = 16
    for i in range(n):
        z = rng.standard_normal((s, lat, h4, w4)).astype(np.float32)
        z = ndi.gaussian_filter1d(z, 2.0, axis=0)
        z /= z.std(axis=0, keepdims=True) + 1e-6
        for j in range(0, s, bs):
            p.check()
            t = torch.from_numpy(z[j : j + bs]).to(model.device)
            with torch.inference_mode():
                y = net.decode(t, None)
            out[i, j : j + bs] = y[:, 0, :h, :w].float().cpu().numpy()
            p.step(len(t))
    return np.clip(out, 0, None)
