"""Training of the denoising head (``medvae train-denoiser``): a 3D UNet on top of the Wiener stage.

The VAE is frozen; only the head learns. Training pairs are made from healthy volumes: lesion-like
blobs (hyper- and hypo-intense, so the head learns to keep them) are painted into some copies,
Rician noise of a random level (log-uniform, ``noise_range`` x the volume's maximum) is added, and
the engine's own first stages (reconstruction, structure-keeping pilot, Wiener filter) run on the
noisy copy exactly as at inference. The head then learns, on random patches, to map
(noisy, Wiener estimate, sigma) to the clean volume (mean squared error inside the signal, where the
benchmark's PSNR is measured, plus a tenth of it outside).

Validation: PSNR inside the signal of held-out volumes at 3, 5 and 9 % noise, before (Wiener) and
after the head; stored in the model's training record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..metrics import psnr_db
from ..model.loader import Model, load_model, resolve_device
from ..model.networks import DenoiserConfig
from .heads import HeadTrainConfig, attach_head, save_with_record, train_head_loop

log = logging.getLogger(__name__)
VAL_LEVELS = (0.03, 0.05, 0.09)


@dataclass
class DenoiserTrainConfig(HeadTrainConfig):
    """Options of ``medvae train-denoiser`` (see ``medvae train-denoiser --help``)."""

    patch: int = 64
    copies: int = 3  # noisy copies per training volume
    noise_range: tuple[float, float] = (0.01, 0.13)
    lesion_prob: float = 0.5

    def check(self) -> None:
        mult = self.check_common(DenoiserConfig, ("patch", "copies"))
        if self.patch % mult:
            raise InputError(f"patch must be a multiple of {mult} for {len(self.channels)} UNet levels, not {self.patch}")
        lo, hi = self.noise_range
        if not 0 < lo <= hi < 1:
            raise InputError(f"noise range must satisfy 0 < low <= high < 1 (fractions of the maximum), not {self.noise_range}")


def _pairs(model: Model, paths: Sequence[str], copies: int, rng: np.random.Generator, noise_range, lesion_prob: float,
           levels: Sequence[float] | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float, int]]:
    """(noisy, Wiener estimate, clean, sigma, stride) on the model grid for noisy copies of each volume."""
    from ...io import read_volume
    from ..ops.denoise import wiener_stage
    from ..prep.preprocess import prepare
    from .synth import add_lesion, rician

    out = []
    for path in paths:
        vol, geom = read_volume(path)
        vol = np.asarray(vol, dtype=np.float32)
        if vol.min() < 0:
            raise InputError(f"{path}: has negative intensities; the denoiser is trained on magnitude images (>= 0)")
        brain = vol > 0.1 * float(np.percentile(vol[vol > 0], 99.5)) if (vol > 0).any() else vol > 0
        for j in range(copies if levels is None else len(levels)):
            clean = vol
            if levels is None and rng.random() < lesion_prob:
                for _ in range(int(rng.integers(1, 4))):
                    kind = "hyper" if rng.random() < 0.5 else "hypo"
                    clean, _ = add_lesion(clean, brain, brain.astype(np.float32), rng, kind=kind,
                                          radius_vox=float(rng.uniform(1.5, 5.0)))
            frac = levels[j] if levels is not None else float(np.exp(rng.uniform(*np.log(noise_range))))
            noisy = rician(clean, frac * float(clean.max()), rng)
            prep = prepare(noisy, geom.spacing, model.config, None, force=True)
            est, sigma = wiener_stage(model, prep)
            target = np.ascontiguousarray(np.moveaxis(clean, prep.axis, 0)) / np.float32(prep.scale)
            if prep.resampled:
                from ..prep.preprocess import resize_inplane

                target = resize_inplane(target, prep.data.shape[1:], antialias=True)
            out.append((prep.data, est, target.astype(np.float32), sigma, prep.stride))
    return out




def head_psnr(model: Model, pairs) -> tuple[float, float]:
    """Mean PSNR inside the signal (clean > 0.05) of the Wiener estimates and of the head's outputs."""
    from ..ops.denoise import head_correction

    before, after = [], []
    for noisy, est, clean, sigma, stride in pairs:
        m = clean > 0.05
        before.append(psnr_db(est, clean, float(clean.max()), m))
        after.append(psnr_db(head_correction(model, noisy, est, sigma, stride), clean, float(clean.max()), m))
    return float(np.mean(before)), float(np.mean(after))


def train_denoiser(tc: DenoiserTrainConfig, callback: Callable[[dict], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> Path:
    """Add (or keep training) the denoising head of a model; writes a new model and returns its weights path."""
    tc.check()
    rng = np.random.default_rng(tc.seed)
    torch.manual_seed(tc.seed)
    base = load_model(tc.model, device="cpu")
    model, fine_tune = attach_head(base, "denoiser", DenoiserConfig.from_dict(tc.head_dict()).to_dict(), DenoiserConfig)
    t0 = time.perf_counter()
    log.info("making training pairs: %d volumes x %d noisy copies", len(tc.train), tc.copies)
    pairs = _pairs(model, tc.train, tc.copies, rng, tc.noise_range, tc.lesion_prob)
    vals = _pairs(model, tc.val, 1, np.random.default_rng(10_000 + tc.seed), tc.noise_range, 0.0, VAL_LEVELS) if tc.val else []
    prep_s = time.perf_counter() - t0
    device = resolve_device(tc.device)
    model.to(device)
    head = model.net.denoiser
    ps = tc.patch
    # sub-volumes at the model's slice spacing (the head never sees closer slices)
    subs = [(n[ph::st], e[ph::st], c[ph::st], s) for n, e, c, s, st in pairs for ph in range(st)]
    subs = [t for t in subs if min(t[0].shape) >= 1]

    def loss_fn() -> torch.Tensor:
        xs, ys = [], []
        for _ in range(tc.batch_size):
            n, e, c, s = subs[int(rng.integers(len(subs)))]
            pad = [(0, max(0, ps - d)) for d in n.shape]
            n, e, c = (np.pad(a, pad) for a in (n, e, c))
            for _try in range(10):  # patches centred on tissue, mostly
                o = [int(rng.integers(0, d - ps + 1)) for d in n.shape]
                if c[o[0] + ps // 2, o[1] + ps // 2, o[2] + ps // 2] > 0.1:
                    break
            sl = tuple(slice(a, a + ps) for a in o)
            x = np.stack([n[sl], e[sl], np.full((ps,) * 3, s, np.float32)])
            y = c[sl][None]
            if rng.random() < 0.5:  # left-right mirror
                x, y = x[..., ::-1], y[..., ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        x = torch.from_numpy(np.stack(xs)).to(device)
        y = torch.from_numpy(np.stack(ys)).to(device)
        w = 0.1 + (y > 0.05).float()
        return (w * (x[:, 1:2] + head(x) - y) ** 2).sum() / w.sum()

    def validate() -> dict:
        b, a = head_psnr(model, vals)
        return {"val_psnr_wiener": round(b, 3), "val_psnr_head": round(a, 3)}

    history = train_head_loop(head, model.net, steps=tc.steps, lr=tc.lr, fine_tune=fine_tune, loss_fn=loss_fn,
                              validate=validate if vals else None, t0=t0, callback=callback, cancel=cancel)
    return save_with_record(tc, model, base, "denoiser", t0, device, history, pair_seconds=round(prep_s, 1),
                            fine_tuned=fine_tune)
