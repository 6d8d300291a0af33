"""Training of the healing head (``medvae train-heal-head``): a 3D UNet that removes anomalies from a volume.

An anomaly score is the difference between a volume and a healthy version of it. The 2.5D VAE makes that
healthy version slice by slice, and its skip connections copy part of a lesion through, mostly dark
(hypo-intense) ones that look like sulci or ventricles. The healing head sees 3D patches; it is trained as a
denoising autoencoder (after Kascenas et al., "Denoising autoencoders for unsupervised anomaly detection in brain
MRI", MIDL 2022): healthy patches get synthetic corruptions and the head learns to return the healthy patch.

Corruptions (``corrupt``), drawn independently of the benchmark's lesion generator: 1-3 blobs anywhere in tissue
(ellipsoids 1.5-8 voxels in radius, with irregular borders and soft edges) that multiply the intensity by 1.2-2.0
or 0.1-0.75, in 80 % of patches (the rest stay healthy, so that the head learns to leave healthy tissue alone);
low-frequency "coarse noise" in 20 %; random gamma and scale of the intensities, left-right mirroring. With
``--contrast-prob`` a share of the patches first get a random contrast (``random_contrast``: a random piecewise-linear
remap of the intensities, which can swap the order of tissues, e.g. bright fluid and dark white matter as in T2), so
that the head learns to heal volumes of contrasts it has no training volumes of (default: half the patches, as
for the shipped head; 0 trains on the volumes' own contrast only). With ``--mimic-prob`` a share of the blobs
take the intensity of another tissue voxel of the same patch (``mimic_factor``) instead of a random factor: lesions
that look like grey matter or fluid (as hyper-intense white-matter lesions do in T2) are the hardest to heal. With
``--wm-prob`` a share of the blobs is centred in white matter (``white_matter_centres``, found in the patch's own
contrast before any remap), where most lesions of brain MRI lie; drawn from all tissue, few blobs sit deep in white
matter, and the head left grey-matter-bright blobs there unhealed. With ``--small-prob`` a share of the blobs is
small (mean radius 1.5-3 voxels instead of 1.5-8): the head left the smallest lesions unhealed most often.
Loss: squared error where there is signal, 4x inside the blobs and up to 12x inside small ones (an L1 loss,
whose pull towards the identity on the healthy majority of voxels does not fade, kept the head from learning at
all). The VAE and the other heads are frozen.

Validation: PSNR inside a fixed set of blobs on held-out volumes, of the corrupted input and of the healed
output. The anomaly score is then calibrated on the same held-out volumes (score "heal", see engine.anomaly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ...errors import InputError
from ..metrics import psnr_db
from ..model.loader import Model
from ..model.networks import HealHeadConfig
from ..ops.anomaly import heal
from .heads import HeadTrainConfig, save_with_record, start_head, tissue_patch, train_head_loop

SIGNAL = 0.02  # normalised intensity counted as signal (loss and validation)
TISSUE = 0.2  # blobs are centred where the clean intensity is above this
WM_LEVEL = 0.75  # normalised T1 intensity above which a voxel counts as white matter (white_matter_centres)
RADIUS = (1.5, 8.0)  # mean radius of a synthetic blob, voxels (uniform)
SMALL_RADIUS = (1.5, 3.0)  # the same for the --small-prob share of blobs


@dataclass
class HealHeadTrainConfig(HeadTrainConfig):
    """Options of ``medvae train-heal-head`` (see ``medvae train-heal-head --help``)."""

    steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    patch: tuple[int, int, int] = (32, 64, 64)  # slices, rows, columns
    calibration_quantile: float = 0.999
    contrast_prob: float = 0.5  # share of training patches given a random contrast (random_contrast); 0 = own contrast only
    mimic_prob: float = 0.0  # share of blobs given another tissue's intensity (mimic_factor); 0 = random factors only
    wm_prob: float = 0.0  # share of blobs centred in white matter (white_matter_centres); 0 = anywhere in tissue
    small_prob: float = 0.0  # share of blobs with a mean radius of 1.5-3 voxels (SMALL_RADIUS) instead of 1.5-8

    def check(self) -> None:
        mult = self.check_common(HealHeadConfig)
        if len(self.patch) != 3 or any(int(n) % mult or int(n) < 16 for n in self.patch):
            raise InputError(f"patch must be 3 sizes, each a multiple of {mult} and at least 16, not {list(self.patch)}")
        if not self.val:
            raise InputError("train-heal-head needs held-out healthy volumes (--val): the anomaly score is calibrated on them")
        if not 0.0 <= self.contrast_prob <= 1.0:
            raise InputError(f"contrast probability must be between 0 and 1, not {self.contrast_prob}")
        if not 0.0 <= self.mimic_prob <= 1.0:
            raise InputError(f"mimic probability must be between 0 and 1, not {self.mimic_prob}")
        if not 0.0 <= self.wm_prob <= 1.0:
            raise InputError(f"white-matter probability must be between 0 and 1, not {self.wm_prob}")
        if not 0.0 <= self.small_prob <= 1.0:
            raise InputError(f"small-blob probability must be between 0 and 1, not {self.small_prob}")
        if not 0.5 < self.calibration_quantile < 1:
            raise InputError(f"calibration quantile must be between 0.5 and 1, not {self.calibration_quantile}")


CONTRAST_KNOTS = np.array([0.0, 0.05, 0.3, 0.6, 0.9, 1.1], np.float32)  # normalised input intensities


def random_contrast(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clean`` with a random contrast: a piecewise-linear intensity remap through random levels.

    Background (0) stays 0 and the faint band up to 0.05 stays faint. The knots at 0.3, 0.6 and 0.9 (about fluid,
    grey and white matter in T1) get independent levels in 0.05-1, so the order of tissues can change (T1-like to
    T2-like and others); 1.1 stays within 0.9-1.2x of the 0.9 level, and brighter voxels keep its level. The result
    is scaled so that its brightest knot is 1.
    """
    ys = np.empty_like(CONTRAST_KNOTS)
    ys[0] = 0.0
    ys[1] = rng.uniform(0.0, 0.05)
    ys[2:5] = rng.uniform(0.05, 1.0, 3)
    ys[5] = ys[4] * rng.uniform(0.9, 1.2)
    ys /= ys[2:].max()
    return np.interp(clean, CONTRAST_KNOTS, ys).astype(np.float32)


def mimic_factor(clean: np.ndarray, centre: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> float | None:
    """A blob factor that brings the blob to the intensity of another tissue voxel of the patch (a lesion that looks
    like grey matter or fluid, as hyper-intense lesions do in T2), or None when that changes the intensity by less
    than 25 % (or more than 2.5x)."""
    local = float(clean[tuple(centre)])
    target = float(clean[tuple(tissue[rng.integers(len(tissue))])])
    factor = target / max(local, 1e-3)
    return factor if (abs(factor - 1.0) >= 0.25 and 0.1 <= factor <= 2.5) else None


def white_matter_centres(clean: np.ndarray) -> np.ndarray:
    """(N, 3) voxels of ``clean`` (a patch in its own, T1-weighted contrast) that lie in white matter: above
    ``WM_LEVEL`` (white matter is the brightest tissue in T1) and at least 2 voxels from anything below it."""
    return np.argwhere(ndi.binary_erosion(clean > WM_LEVEL, iterations=2))


def corrupt(clean: np.ndarray, rng: np.random.Generator, blob_prob: float = 0.8,
            coarse_prob: float = 0.2, mimic_prob: float = 0.0, wm: np.ndarray | None = None,
            wm_prob: float = 0.0, small_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted copy of ``clean`` (D, H, W), mask of the blobs) — see the module docstring. With ``mimic_prob``
    a share of the blobs take another tissue's intensity (``mimic_factor``) instead of a random factor; with
    ``wm_prob`` a share is centred on the voxels ``wm`` ((N, 3), white_matter_centres) where it has any; with
    ``small_prob`` a share has a mean radius in ``SMALL_RADIUS`` instead of ``RADIUS``."""
    shape = clean.shape
    x = clean.copy()
    blobs = np.zeros(shape, bool)
    signal = clean > SIGNAL
    tissue = np.argwhere(clean > TISSUE)
    if rng.random() < blob_prob and len(tissue):
        grid = np.ogrid[tuple(slice(0, n) for n in shape)]
        for _ in range(int(rng.integers(1, 4))):
            if wm_prob and wm is not None and len(wm) and rng.random() < wm_prob:
                centre = wm[rng.integers(len(wm))]
            else:
                centre = tissue[rng.integers(len(tissue))]
            radii = rng.uniform(*(SMALL_RADIUS if small_prob and rng.random() < small_prob else RADIUS))
            radii = radii * rng.uniform(0.7, 1.3, 3)
            d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
            wobble = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(1.5, radii.mean() / 2), mode="wrap")
            inside = (d + wobble * 3.0 * rng.uniform(0, 0.3)) < 1.0
            soft = ndi.gaussian_filter(inside.astype(np.float32), rng.uniform(0.4, 1.0))
            factor = rng.uniform(1.2, 2.0) if rng.random() < 0.5 else rng.uniform(0.1, 0.75)
            if mimic_prob and rng.random() < mimic_prob:
                factor = mimic_factor(clean, centre, tissue, rng) or factor
            x = np.where(signal, x * (1.0 + soft * np.float32(factor - 1.0)), x)
            blobs |= (soft > 0.1) & signal
    if rng.random() < coarse_prob:
        low = rng.normal(0, rng.uniform(0.05, 0.2), (max(2, shape[0] // 4), max(2, shape[1] // 8), max(2, shape[2] // 8)))
        up = F.interpolate(torch.from_numpy(low.astype(np.float32))[None, None], size=shape, mode="trilinear")[0, 0]
        x = x + up.numpy() * signal
    return x.astype(np.float32), blobs


def blob_weights(blobs: np.ndarray, ref_voxels: float = 500.0) -> np.ndarray:
    """Loss weight per voxel: 1 outside the blobs, 4 inside, up to 3x more in small blobs (4 x (ref/size)^(1/3)).

    Without the size term large blobs dominate the loss, and small dark blobs (which look like sulci) stay unhealed.
    """
    lab, _ = ndi.label(blobs)
    sizes = np.bincount(lab.ravel())[1:].astype(np.float32)
    per_label = np.concatenate([[1.0], 4.0 * np.clip((ref_voxels / sizes) ** (1 / 3), 1.0, 3.0)])  # label 0: outside
    return per_label.astype(np.float32)[lab]


def _sample(vols: list[np.ndarray], patch: Sequence[int], rng: np.random.Generator, contrast_prob: float = 0.0,
            mimic_prob: float = 0.0, wm_prob: float = 0.0, small_prob: float = 0.0):
    """One training example: (corrupted (1, D, H, W), clean (1, D, H, W), loss weight (1, D, H, W))."""
    clean = tissue_patch(vols, patch, rng)
    wm = white_matter_centres(clean) if wm_prob else None  # in the volume's own contrast, before any remap
    if contrast_prob and rng.random() < contrast_prob:
        clean = random_contrast(clean, rng)
    if rng.random() < 0.5:
        clean = np.clip(clean, 0, None) ** np.float32(rng.uniform(0.7, 1.4))
    clean = clean * np.float32(rng.uniform(0.8, 1.2))
    x, blobs = corrupt(clean, rng, mimic_prob=mimic_prob, wm=wm, wm_prob=wm_prob, small_prob=small_prob)
    w = (clean > SIGNAL).astype(np.float32) * blob_weights(blobs)
    if rng.random() < 0.5:  # left-right mirror
        x, clean, w = x[..., ::-1], clean[..., ::-1], w[..., ::-1]
    return tuple(np.ascontiguousarray(a[None]) for a in (x, clean, w))


def val_psnr(model: Model, vols: list[np.ndarray], seed: int = 12345) -> tuple[float, float]:
    """Mean PSNR inside fixed synthetic blobs of ``vols``: corrupted input, and the healing head's output."""
    rng = np.random.default_rng(seed)
    before, after = [], []
    for vol in vols:
        x, blobs = corrupt(vol, rng, blob_prob=1.0, coarse_prob=0.0)
        if not blobs.any():
            continue
        peak = float(vol.max())
        for res, est in ((before, x), (after, heal(model, x))):
            res.append(psnr_db(est[blobs], vol[blobs], peak))
    if not before:
        return float("nan"), float("nan")
    return float(np.mean(before)), float(np.mean(after))


def train_heal_head(tc: HealHeadTrainConfig, callback: Callable[[dict], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> Path:
    """Add (or keep training) the healing head of a model, calibrate its anomaly score; returns the new weights path.

    A base model whose head has the requested architecture is fine-tuned; otherwise a new head (starting as the
    identity) is trained."""
    from .calibrate import calibrate_model, calibration_volumes

    r = start_head(tc, "heal_head", HealHeadConfig)
    model, head = r.model, r.head

    def loss_fn() -> torch.Tensor:
        sample = partial(_sample, contrast_prob=tc.contrast_prob, mimic_prob=tc.mimic_prob, wm_prob=tc.wm_prob,
                         small_prob=tc.small_prob)
        x, y, w = r.batch(sample, tc.patch, tc.batch_size)
        return (w * (x + head(x) - y) ** 2).sum() / w.sum().clamp_min(1.0)

    def validate() -> dict:
        b, a = val_psnr(model, r.vals)
        return {"val_psnr_input": round(b, 3), "val_psnr_head": round(a, 3)}

    history = train_head_loop(head, model.net, steps=tc.steps, lr=tc.lr, fine_tune=r.fine_tune, loss_fn=loss_fn,
                              validate=validate, t0=r.t0, callback=callback, cancel=cancel, ema=0.98)
    grid, own = calibration_volumes(model, tc.val)
    calibrate_model(model, grid, tc.calibration_quantile, score="heal", profile_volumes=own)
    return save_with_record(tc, model, r.base, "heal_head", r.t0, r.device, history, data_seconds=r.data_seconds,
                            fine_tuned=r.fine_tune)
