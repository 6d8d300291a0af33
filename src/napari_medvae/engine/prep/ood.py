"""Out-of-distribution check: is this volume like the ones the model was trained on?

A model's config stores the normalised intensity histogram of its healthy held-out volumes. A new
volume's histogram (same normalisation, same grid) is compared by total-variation distance (0 = same
distribution, 1 = disjoint). Volumes with many clearly negative intensities (e.g. CT in Hounsfield units) count as
fully out of distribution for magnitude-MRI models; the few slightly negative voxels that resampling leaves at the
edges of an MRI do not. Above the threshold, operations refuse to run unless forced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import InputError

BIN_EDGES = np.linspace(0.2, 1.6, 29)
FOREGROUND = 0.2  # normalised intensity: tissue above it (background and Rician noise floor below)
DEFAULT_THRESHOLD = 0.5
# above this the volume is run but flagged: on the real-T1 model, T1 scans from another site scored 0.22-0.28,
# FLAIR 0.34-0.42 and T2 0.44-0.46 (Lesjak MS data); the refusal threshold (0.5) lets those contrasts through
WARN_LEVEL = 0.3
# signed volumes: magnitude MRI has no negative values, but cubic or sinc resampling (registration) rings slightly below
# 0 next to edges (a real T1 rotated by 7 degrees with cubic splines: 18 % of its voxels below 0, 0.0002 % below -5 %
# of its maximum); CT in
# Hounsfield units has air at -1000 over much of the volume. More than NEGATIVE_FRACTION of the voxels below
# -NEGATIVE_LEVEL x the largest absolute value: fully out of distribution (score 1)
NEGATIVE_LEVEL, NEGATIVE_FRACTION = 0.05, 0.01


class OutOfDistributionError(InputError):
    """The volume looks unlike the model's training data; pass force=True (CLI --force) to run anyway."""

    def __init__(self, message: str, score: float):
        super().__init__(message)
        self.score = score


def _histogram(data: np.ndarray) -> np.ndarray:
    sub = data[::2, ::2, ::2] if data.size > 4_000_000 else data
    fg = sub[sub > FOREGROUND]
    h, _ = np.histogram(np.clip(fg, BIN_EDGES[0], BIN_EDGES[-1] - 1e-6), bins=BIN_EDGES)
    return h / max(1, h.sum())


def intensity_profile(volumes: Sequence[np.ndarray]) -> dict:
    """Mean normalised foreground histogram of healthy volumes (model grid), for the model config."""
    hist = np.mean([_histogram(v) for v in volumes], axis=0)
    scores = [0.5 * float(np.abs(_histogram(v) - hist).sum()) for v in volumes]
    return {"bin_edges": [round(float(b), 4) for b in BIN_EDGES], "histogram": [round(float(h), 6) for h in hist],
            "threshold": DEFAULT_THRESHOLD, "healthy_max_score": round(max(scores), 4)}


def negative_fraction(volume: np.ndarray) -> float:
    """The fraction of ``volume``'s voxels clearly below zero (below -NEGATIVE_LEVEL x its largest absolute value);
    0 for volumes without negative values."""
    lo = float(volume.min())
    if lo >= 0:
        return 0.0
    sub = volume[::2, ::2, ::2] if volume.size > 4_000_000 else volume
    level = -NEGATIVE_LEVEL * max(-lo, float(volume.max()))
    return float(np.count_nonzero(sub < level)) / sub.size


def ood_score(data: np.ndarray, negative: float, profile: dict | None) -> float | None:
    """Total-variation distance of ``data``'s histogram to the profile; 1.0 for signed volumes (``negative``, the
    raw volume's ``negative_fraction``, above NEGATIVE_FRACTION: CT in Hounsfield units)."""
    if not profile:
        return None
    if negative > NEGATIVE_FRACTION:
        return 1.0
    ref = np.asarray(profile["histogram"], dtype=float)
    return round(0.5 * float(np.abs(_histogram(data) - ref).sum()), 4)


def check_ood(score: float | None, profile: dict | None, force: bool) -> None:
    """Raise OutOfDistributionError when ``score`` exceeds the profile's threshold and not ``force``."""
    if score is None or force or not profile:
        return
    thr = float(profile.get("threshold", DEFAULT_THRESHOLD))
    if score > thr:
        raise OutOfDistributionError(
            f"this volume looks unlike the model's training data (out-of-distribution score {score:.2f} > {thr:.2f}; "
            "e.g. CT, another contrast or a non-skull-stripped head fed to a skull-stripped T1 brain model); "
            "results would be unreliable. Run anyway with force (CLI: --force) if you are sure",
            score,
        )


def warn_level(profile: dict) -> float:
    """The score above which a volume is flagged: WARN_LEVEL, or twice the healthy calibration volumes' highest
    score if that is larger (a model whose healthy volumes already score near WARN_LEVEL), at most the refusal
    threshold."""
    healthy = float(profile.get("healthy_max_score") or 0.0)
    return min(float(profile.get("threshold", DEFAULT_THRESHOLD)), max(WARN_LEVEL, 2.0 * healthy))


SMALL_ML = 150.0  # volumes smaller than this (ml) hold too little of a brain to judge their contrast by


def ood_warning(score: float | None, profile: dict | None, volume_ml: float | None = None) -> str | None:
    """The warning for a volume run although its intensities are unlike the training data (None: alike).

    ``volume_ml``: the volume's size; a small crop (under ``SMALL_ML``) is told so rather than suspected of being
    another contrast: its intensity histogram is a part of a brain's, unlike a whole scan's.
    """
    if score is None or not profile:
        return None
    level = warn_level(profile)
    if score <= level:
        return None
    if volume_ml is not None and volume_ml < SMALL_ML:
        return (f"this volume ({volume_ml:.0f} ml) is too small a part of a head to compare its intensities with "
                f"the model's T1 training scans (out-of-distribution score {score:.2f} > {level:.2f}); if it is "
                "not T1-weighted, treat its results as unreliable (the model supports T1 only)")
    return (f"this volume's intensities are unlike the model's T1 training scans (out-of-distribution score "
            f"{score:.2f} > {level:.2f}): another contrast (T2, FLAIR), a contrast agent, another scanner or heavy "
            "artefacts. The model supports T1 only; treat its results here as unreliable")
