"""Training of the painted-region head (``medvae train-region-head``): a 3D UNet on top of the biharmonic fill.

A painted region (a blob of voxels a user wants filled: an artefact, a lesion to remove) is filled first by
biharmonic inpainting (``inpaint.first_guess``), which continues the intensities smoothly from the border but
knows no anatomy: a sulcus or the edge of a ventricle that crosses the region is blurred away. The 2.5D VAE sees
one slice with a few neighbours; the head sees the region's 3D surroundings. Its input is the first guess and
the mask; it learns a correction inside the mask. The VAE and the other heads are frozen (copied bit for bit).

Training patches come from healthy volumes on the model grid (at the model's slice spacing). Each gets 1-2
regions centred on tissue, drawn independently of the benchmark's regions: ellipsoids 2.5-22 mm across (every
semi-axis 1-5.5 voxels at 2 mm) with irregular borders, or brush strokes (a chain of 3-6 overlapping balls);
random gamma and scale of the intensities, left-right mirroring. Loss: mean squared error inside the mask.
Validation: pooled PSNR inside a fixed set of regions on held-out volumes, biharmonic fill vs head; stored in
the model's training record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from .heads import HeadTrainConfig, tissue_patch, train_fill_head
from .model import Model
from .networks import RegionHeadConfig

TISSUE = 0.1  # normalised intensity a region's centre must have


@dataclass
class RegionHeadTrainConfig(HeadTrainConfig):
    """Options of ``medvae train-region-head`` (see ``medvae train-region-head --help``)."""

    steps: int = 3000
    batch_size: int = 6
    lr: float = 1e-3
    patch: tuple[int, int, int] = (32, 48, 48)  # slices, rows, columns

    def check(self) -> None:
        mult = self.check_common(RegionHeadConfig)
        if len(self.patch) != 3 or any(int(n) % mult or int(n) < 16 for n in self.patch):
            raise InputError(f"patch must be 3 sizes, each a multiple of {mult} and at least 16, not {list(self.patch)}")


def random_region(shape: Sequence[int], centre: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A bool mask of ``shape``: an irregular ellipsoid (70 %) or a brush stroke (30 %) around ``centre``."""
    grid = np.ogrid[tuple(slice(0, int(n)) for n in shape)]
    if rng.random() < 0.7:
        radii = np.clip(rng.uniform(1.25, 5.5) * rng.uniform(0.6, 1.4, 3), 1.0, 5.5)
        d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        if rng.random() < 0.5:  # an irregular border
            wobble = ndi.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), 1.5, mode="wrap")
            d = d + wobble * 3.0 * rng.uniform(0.1, 0.3)
        out = d < 1.0
    else:  # a brush stroke: overlapping balls along a random walk
        out = np.zeros(tuple(shape), bool)
        pos = np.asarray(centre, np.float64)
        r = rng.uniform(1.0, 3.0)
        step = rng.standard_normal(3)
        for _ in range(int(rng.integers(3, 7))):
            out |= sum(((g - c) / r) ** 2 for g, c in zip(grid, pos, strict=True)) < 1.0
            step = 0.6 * step + 0.4 * rng.standard_normal(3)
            pos = pos + r * step / max(float(np.linalg.norm(step)), 1e-6)
    if not out.any():
        out[tuple(int(c) for c in centre)] = True
    return out


def _sample(vols: list[np.ndarray], patch: Sequence[int], rng: np.random.Generator):
    """One training example: (first guess + mask (2, D, H, W), truth (1, D, H, W), loss weight (1, D, H, W))."""
    from .inpaint import first_guess

    clean = tissue_patch(vols, patch, rng)
    if rng.random() < 0.5:
        clean = np.clip(clean, 0, None) ** np.float32(rng.uniform(0.7, 1.4))
    clean = clean * np.float32(rng.uniform(0.8, 1.2))
    mask = np.zeros(clean.shape, bool)
    inner = tuple(slice(n // 4, n - n // 4) for n in clean.shape)
    tissue = np.argwhere(clean[inner] > TISSUE) + [s.start for s in inner]
    if len(tissue) == 0:
        tissue = np.array([[n // 2 for n in clean.shape]])
    for _ in range(int(rng.choice([1, 1, 2]))):
        mask |= random_region(clean.shape, tissue[rng.integers(len(tissue))], rng)
    x = np.stack([first_guess(clean, mask), mask.astype(np.float32)])
    w = mask.astype(np.float32)
    if rng.random() < 0.5:  # left-right mirror
        x, clean, w = x[..., ::-1], clean[..., ::-1], w[..., ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(clean[None]), np.ascontiguousarray(w[None])


def val_regions(vol: np.ndarray, rng: np.random.Generator, n: int = 6) -> np.ndarray:
    """A fixed (seeded) mask of ``n`` non-overlapping ellipsoids 6-20 mm across (at 2 mm) inside the tissue of ``vol``."""
    tissue = ndi.binary_fill_holes(vol > TISSUE)
    mask = np.zeros(vol.shape, bool)
    grid = np.ogrid[tuple(slice(0, s) for s in vol.shape)]
    for r in np.linspace(1.5, 5.0, n):
        inner = ndi.binary_erosion(tissue, iterations=int(np.ceil(r)) + 2) & ~ndi.binary_dilation(mask, iterations=int(r) + 3)
        pts = np.argwhere(inner)
        if len(pts) == 0:
            continue
        c = pts[rng.integers(len(pts))]
        radii = r * rng.uniform(0.7, 1.3, 3)
        mask |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, radii, strict=True)) < 1.0
    return mask & tissue


def val_psnr(model: Model, vols: list[np.ndarray]) -> tuple[float, float]:
    """Pooled PSNR inside fixed regions of ``vols`` (peak: each volume's maximum): biharmonic fill, and fill + head."""
    from .inpaint import first_guess, region_head_fill

    err = {"first": [], "head": []}
    for i, vol in enumerate(vols):
        mask = val_regions(vol, np.random.default_rng(9000 + i))
        if not mask.any():
            continue
        init = first_guess(vol, mask)
        head = region_head_fill(model, init, mask)
        peak = float(vol.max())
        for k, fill in (("first", init), ("head", head)):
            err[k].append(((fill[mask] - vol[mask]).astype(np.float64) / peak) ** 2)
    if not err["first"]:
        return float("nan"), float("nan")
    return tuple(float(-10 * np.log10(max(float(np.mean(np.concatenate(err[k]))), 1e-12))) for k in ("first", "head"))


def train_region_head(tc: RegionHeadTrainConfig, callback: Callable[[dict], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> Path:
    """Add (or keep training) the painted-region head of a model; writes a new model and returns its weights path.

    A base model whose head has the requested architecture is fine-tuned; otherwise a new head (starting as the
    identity) is trained."""
    return train_fill_head(tc, "region_head", RegionHeadConfig, _sample, val_psnr, "biharmonic", callback, cancel)
