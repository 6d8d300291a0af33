"""Training of the missing-slice head (``medvae train-slice-head``): a 3D UNet on top of the cubic fill.

The 2.5D VAE sees each slice with a few neighbours along the slice axis only; across a gap of missing slices
the shape of the anatomy in the other two directions (how an edge bends from slice to slice) is what tells
where it goes. The head sees patches in 3D: its input is the classical first guess of ``classical.fill.first_guess``
(cubic interpolation along the slice axis) and the mask of missing slices; it learns a correction inside the
mask. The VAE is frozen (its weights are copied bit for bit).

Training patches come from healthy volumes on the model grid (at the model's slice spacing): runs of 1-3
missing slices (3 twice as often), sometimes a second run further out, random gamma and scale of the
intensities, left-right mirroring (``runs`` sets the run lengths drawn). Loss: mean squared error inside the mask where there is signal.
Validation: PSNR inside the missing slices (with signal) of held-out volumes with a fixed set of single
slices and 3-slice gaps, cubic fill vs head, for both together and each kind; stored in the model's training record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..metrics import psnr_db
from ..model.loader import Model
from ..model.networks import SingleSliceHeadConfig, SliceHeadConfig
from .heads import HeadTrainConfig, save_with_record, start_head, tissue_patch, train_head_loop

SIGNAL = 0.05  # normalised intensity counted as signal in the loss and the validation PSNR


@dataclass
class SliceHeadTrainConfig(HeadTrainConfig):
    """Options of ``medvae train-slice-head`` (see ``medvae train-slice-head --help``)."""

    steps: int = 3000
    batch_size: int = 6
    lr: float = 1e-3
    patch: tuple[int, int, int] = (24, 48, 48)  # slices, rows, columns
    runs: tuple[int, ...] = (1, 2, 3, 3)  # lengths of the runs of missing slices, drawn uniformly from this list
    single: bool = False  # train the single-slice head (architecture.slice_head_single; runs must be (1,))

    @property
    def key(self) -> str:
        return "slice_head_single" if self.single else "slice_head"

    def check(self) -> None:
        mult = self.check_common(SingleSliceHeadConfig if self.single else SliceHeadConfig)
        if self.single and tuple(int(n) for n in self.runs) != (1,):
            raise InputError(f"the single-slice head trains on single missing slices only (runs [1]), not {list(self.runs)}")
        if not self.runs or any(not 1 <= int(n) <= 8 for n in self.runs):
            raise InputError(f"runs must be lengths of runs of missing slices, each 1 to 8, not {list(self.runs)}")
        if max(int(n) for n in self.runs) > int(self.patch[0]) // 2 - 1:
            raise InputError(f"runs of up to {max(self.runs)} missing slices need a patch of at least "
                             f"{2 * max(self.runs) + 2} slices, not {self.patch[0]}")
        if len(self.patch) != 3 or any(int(n) % mult or int(n) < 16 for n in self.patch):
            raise InputError(f"patch must be 3 sizes, each a multiple of {mult} and at least 16, not {list(self.patch)}")


def _sample(vols: list[np.ndarray], patch: Sequence[int], rng: np.random.Generator, runs: Sequence[int] = (1, 2, 3, 3)):
    """One training example: (first guess + mask (2, D, H, W), truth (1, D, H, W), loss weight (1, D, H, W)).

    A run of missing slices (length drawn from ``runs``) near the middle, half the time a second one further out."""
    from ..classical.fill import first_guess

    pz = int(patch[0])
    clean = tissue_patch(vols, patch, rng)
    if rng.random() < 0.5:
        clean = np.clip(clean, 0, None) ** np.float32(rng.uniform(0.7, 1.4))
    clean = clean * np.float32(rng.uniform(0.8, 1.2))
    mask = np.zeros(clean.shape, bool)
    n = int(rng.choice(list(runs)))
    z = int(rng.integers(pz // 4, pz - pz // 4 - n + 1))
    mask[z : z + n] = True
    if rng.random() < 0.5:  # another run of missing slices further out
        n2 = int(rng.choice(sorted(set(runs))))
        z2 = int(rng.integers(0, pz - n2 + 1))
        if abs(z2 - z) > 4:
            mask[z2 : z2 + n2] = True
    x = np.stack([first_guess(clean, mask), mask.astype(np.float32)])
    w = (mask & (clean > SIGNAL)).astype(np.float32)
    if rng.random() < 0.5:  # left-right mirror
        x, clean, w = x[..., ::-1], clean[..., ::-1], w[..., ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(clean[None]), np.ascontiguousarray(w[None])


VAL_GAPS = (0.2, 0.35, 0.5, 0.65)  # validation: single slices and 3-slice gaps at these fractions of the slices


def val_psnr(model: Model, vols: list[np.ndarray]) -> dict[int, tuple[float, float]]:
    """Mean PSNR inside the missing slices (with signal) of ``vols``, cubic fill and cubic fill + head, per run length
    (1: single slices at 0.2 / 0.5 of the slices, 3: 3-slice gaps at 0.35 / 0.65)."""
    from ..classical.fill import first_guess
    from ..ops.inpaint import slice_head_fill

    res: dict[int, tuple[list, list]] = {1: ([], []), 3: ([], [])}
    for vol in vols:
        n = vol.shape[0]
        if n < 12:
            continue
        for run in (1, 3):
            mask = np.zeros(vol.shape, bool)
            for f in VAL_GAPS[run // 2 :: 2]:
                z = int(f * n)
                mask[z : z + run] = True
            m = mask & (vol > SIGNAL)
            if not m.any():
                continue
            init = first_guess(vol, mask)
            head = slice_head_fill(model, init, mask)
            peak = float(vol.max())
            for acc, fill in zip(res[run], (init, head), strict=True):
                acc.append(psnr_db(fill[m], vol[m], peak))
    return {run: (float(np.mean(b)), float(np.mean(a))) for run, (b, a) in res.items() if b}


def train_slice_head(tc: SliceHeadTrainConfig, callback: Callable[[dict], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> Path:
    """Add (or keep training) the missing-slice head of a model; writes a new model and returns its weights path.

    A base model whose head has the requested architecture is fine-tuned; otherwise a new head (starting as the
    identity) is trained. ``tc.single``: the single-slice head, which starts from the general head's weights where
    the base model has a general head of the same architecture (and no single-slice head yet)."""
    cls = SingleSliceHeadConfig if tc.single else SliceHeadConfig
    r = start_head(tc, tc.key, cls, init_from="slice_head" if tc.single else None)
    model, head = r.model, r.head

    def loss_fn() -> torch.Tensor:
        x, y, w = r.batch(partial(_sample, runs=tuple(int(n) for n in tc.runs)), tc.patch, tc.batch_size)
        return (w * (x[:, :1] + head(x) * x[:, 1:2] - y) ** 2).sum() / w.sum().clamp_min(1.0)

    def validate() -> dict:
        per = val_psnr(model, r.vals)
        if not per:
            return {"val_psnr_cubic": float("nan"), "val_psnr_head": float("nan")}
        rec = {"val_psnr_cubic": round(float(np.mean([b for b, _ in per.values()])), 3),
               "val_psnr_head": round(float(np.mean([a for _, a in per.values()])), 3)}
        for run, (b, a) in per.items():
            rec[f"val_psnr_run{run}_cubic"], rec[f"val_psnr_run{run}_head"] = round(b, 3), round(a, 3)
        return rec

    history = train_head_loop(head, model.net, steps=tc.steps, lr=tc.lr, fine_tune=r.fine_tune, loss_fn=loss_fn,
                              validate=validate if r.vals else None, t0=r.t0, callback=callback, cancel=cancel, ema=0.98)
    extra = {"initialised_from": r.initialised_from} if r.initialised_from else {}
    return save_with_record(tc, model, r.base, tc.key, r.t0, r.device, history, data_seconds=r.data_seconds,
                            fine_tuned=r.fine_tune and not r.initialised_from, **extra)
