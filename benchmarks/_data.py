"""Held-out test data for the benchmarks, from the MNI152 templates through the training generator.

Seeds: training uses 1-999, validation 5001-5999, sample data 9001-9999. Benchmarks use >= 20000 only:

    20000-20099  quality, T1 subjects          20500-20599  quality, T2-like subjects
    20100-20199  speed                          20997-20999  tuning of baselines and engine settings (never scored)

Every random choice (noise, lesions, masks) is seeded from the subject seed, so tables are reproducible.
"""

from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_medvae.engine.training import synth

SEED_T1 = 20000
SEED_T2 = 20500
SEED_SPEED = 20100
SEED_TUNE = 20999


@lru_cache(maxsize=2)
def templates(spacing: float = 2.0) -> synth.Templates:
    return synth.load_templates(spacing)


def subject(seed: int, contrast: str = "t1", spacing: float = 2.0):
    """(image float32 0..~255, brain mask, white-matter map, spacing tuple) of one held-out subject."""
    assert seed >= 20000, "benchmarks use held-out seeds >= 20000 only"
    tpl = templates(spacing)
    img, brain, wm = synth.make_subject(tpl, seed, contrast=contrast)
    return img, brain, wm, tuple(float(s) for s in tpl.spacing)


def ellipsoid(shape, centre, semi_axes) -> np.ndarray:
    """Boolean ellipsoid; computed in its bounding box only (cheap for small regions)."""
    out = np.zeros(shape, bool)
    lo = [max(0, int(np.floor(c - a)) - 1) for c, a in zip(centre, semi_axes, strict=True)]
    hi = [min(s, int(np.ceil(c + a)) + 2) for s, c, a in zip(shape, centre, semi_axes, strict=True)]
    g = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    d = sum(((gi - c) / a) ** 2 for gi, c, a in zip(g, centre, semi_axes, strict=True))
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = d <= 1.0
    return out


def painted_regions(brain: np.ndarray, spacing: float, rng: np.random.Generator,
                    diameters_mm=(6.0, 10.0, 14.0, 20.0)) -> list[tuple[float, np.ndarray]]:
    """(diameter, mask) of spheres and ellipsoids (alternating) wholly inside the brain, not overlapping."""
    regions: list[tuple[float, np.ndarray]] = []
    taken = np.zeros(brain.shape, bool)
    for i, dmm in enumerate(diameters_mm):
        r = dmm / 2.0 / spacing
        axes = np.full(3, r) if i % 2 == 0 else r * rng.uniform(0.6, 1.4, 3)
        axes = np.clip(axes, 2.5 / spacing, 10.0 / spacing)  # every axis 5-20 mm across
        inner = ndi.binary_erosion(brain, iterations=int(np.ceil(axes.max())) + 2) & ~ndi.binary_dilation(
            taken, iterations=int(np.ceil(axes.max())) + 2)
        pts = np.argwhere(inner)
        if len(pts) == 0:
            continue
        m = ellipsoid(brain.shape, pts[rng.integers(len(pts))], axes) & brain
        regions.append((dmm, m))
        taken |= m
    return regions


def lesion_case(img, brain, wm, rng: np.random.Generator, kinds_radii):
    """Add lesions (kind, radius in voxels) one after the other; returns (image, union mask)."""
    vol = img
    truth = np.zeros(img.shape, bool)
    for kind, r in kinds_radii:
        free = wm * ~ndi.binary_dilation(truth, iterations=int(r) + 2)
        vol, m = synth.add_lesion(vol, brain, free, rng, kind=kind, radius_vox=r)
        truth |= m
    return vol, truth


def ct_sized_volume(shape=(400, 512, 512)) -> np.ndarray:
    """A CT-sized float32 volume built slice by slice from the 1 mm T1 template (never a float64 copy)."""
    tpl = templates(1.0).t1
    out = np.empty(shape, np.float32)
    zsrc = np.linspace(0, tpl.shape[0] - 1, shape[0])
    zoom = (shape[1] / tpl.shape[1], shape[2] / tpl.shape[2])
    for k, z in enumerate(zsrc):
        out[k] = ndi.zoom(tpl[int(round(z))], zoom, order=1, mode="nearest", grid_mode=True)[: shape[1], : shape[2]]
    return out


def model_id(model) -> str:
    """Name and short sha256s of the weights and of the JSON config, so a table can be tied to the shipped model.

    Both: a re-calibration changes only the JSON (threshold and score scales), and with it the anomaly rows.
    """
    path = getattr(model, "path", None)
    if path is None:
        return f"`{model.config.name}` (in memory)"
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    cfg = path.with_suffix(".json")
    cdigest = hashlib.sha256(cfg.read_bytes()).hexdigest()[:12] if cfg.exists() else "missing"
    return f"`{model.config.name}` ({path.name} sha256 {digest}, {cfg.name} sha256 {cdigest})"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{gpu}, Python {platform.python_version()}")
