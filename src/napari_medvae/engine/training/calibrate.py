"""Calibration: the anomaly threshold and the heatmap's healthy reference values, set from held-out healthy volumes.

The chosen quantile of the healthy voxel scores inside the brain becomes heatmap value 1.0, so heatmaps of every
model are in the same units; the healthy volumes' candidate peaks and intensity profile are stored beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..model.checkpoint import ANOMALY_SCORES, HEAL_SCORES, save_checkpoint
from ..model.loader import Model, load_model
from .volumes import load_volumes

SCORES = ANOMALY_SCORES


def calibrate(model: Model, volumes: list[tuple[np.ndarray, int]], quantile: float, score: str = "combined",
              heal_flip: bool | None = None, heal_invert: float | None = None) -> float:
    """Anomaly threshold: ``quantile`` of healthy voxel scores inside the brain (model grid).

    ``score`` "combined" (see engine.anomaly) also sets the two VAE residuals' healthy scales (99th percentiles)
    in the model's anomaly settings, "healed" the healing head's residual's scale as well, "heal" that scale alone;
    "residual" uses the normal reconstruction's residual alone. It also sets ``healthy_peaks``: each healthy volume's highest candidate peak
    (engine.ops.anomaly.threshold_candidates at 1.0; at least 1), ``healthy_peak``: their robust maximum (robust_peak), and
    ``residual_median``: the median of their smoothed reconstruction residual inside the brain
    (engine.ops.anomaly.smooth_residual). ``heal_flip`` (None: keep the model's setting) turns the healing head's
    mirror averaging (engine.ops.anomaly.heal) on or off for the scores calibrated here and for the model's later maps.
    ``heal_invert`` (None: keep the model's setting; 0 turns it off) is the weight of the inverted-intensity healing
    in volumes flagged by the residual ratio (engine.ops.anomaly.heal_blended); healthy calibration volumes are not.
    The healing head's scores also set ``brain_quantiles``: the mean over these volumes of their intensity quantiles
    inside the brain (engine.ops.anomaly.brain_quantiles), onto which that inverted healing maps a volume's intensities.
    """
    from ..ops.anomaly import (
        HEAL_MARGIN,
        RATIO_EVERY,
        anomaly_config,
        brain_quantiles,
        final_score,
        raw_scores,
        threshold_candidates,
    )
    from ..ops.runner import Progress
    from ..prep.brainmask import auto_brain_mask

    if score not in SCORES:
        raise InputError(f"anomaly score must be one of {', '.join(SCORES)}, not {score!r}")
    if score in HEAL_SCORES and model.net.heal_head is None:
        raise InputError(f"the '{score}' anomaly score needs a model with a healing head (medvae train-heal-head)")
    if heal_flip is not None and score not in HEAL_SCORES:
        raise InputError(f"heal_flip applies to the healing head's scores (heal, healed), not to '{score}'")
    check_heal_invert(heal_invert, score)
    settings = model.config.anomaly
    if score not in HEAL_SCORES:
        settings.heal_flip = settings.heal_invert = settings.brain_quantiles = None
        settings.heal_margin = settings.ratio_every = None
    else:
        # how the maps are made from now on (engine.ops.anomaly), set before the calibration volumes are scored
        settings.heal_margin = HEAL_MARGIN
        settings.ratio_every = RATIO_EVERY if score == "heal" else None
        if heal_flip is not None:
            settings.heal_flip = bool(heal_flip)
        if heal_invert is not None:
            settings.heal_invert = float(heal_invert) if heal_invert > 0 else None
    raw: list[list[np.ndarray]] = [[], [], []]
    smooth: list[np.ndarray] = []
    brains = []
    for v, stride in volumes:  # the same passes as engine.ops.anomaly.score_prepared
        data = v[::stride]
        brain = auto_brain_mask(v)[::stride]
        brains.append(brain)
        *parts, sm = raw_scores(model, data, brain, Progress(data.shape[0]), score)
        smooth.append(sm)
        for acc, s in zip(raw, parts, strict=True):
            if s is not None:
                acc.append(s[brain])
    sizes = np.cumsum([0] + [int(b.sum()) for b in brains])
    skip, latent, heal = (np.concatenate(a) if a else None for a in raw)
    settings.score = score
    settings.residual_median = float(np.median(np.concatenate(smooth)))
    if score in HEAL_SCORES:
        quantiles = np.mean([brain_quantiles(v[::stride][b]) for (v, stride), b in zip(volumes, brains, strict=True)], axis=0)
        settings.brain_quantiles = [round(float(q), 5) for q in quantiles]
    used = {"skip_scale": skip if latent is not None else None, "latent_scale": latent, "heal_scale": heal}
    for key, part in used.items():
        # a scale this score does not use: none is left from an earlier calibration
        setattr(settings, key, None if part is None else float(np.quantile(part, 0.99)))
    scores = final_score(skip, latent, heal, settings)
    threshold = float(np.quantile(scores, quantile))
    cfg = anomaly_config(model.config)  # the grid the volumes are on (anomaly.grid_mm, else the model's)
    grid = (cfg.slice_spacing_mm, cfg.spacing_mm, cfg.spacing_mm)
    peaks = []
    for i, brain in enumerate(brains):  # the strongest candidate each healthy volume would show
        heat = np.zeros(brain.shape, np.float32)
        heat[brain] = scores[sizes[i] : sizes[i + 1]] / np.float32(threshold)
        peaks.append(max([1.0, *(c["peak"] for c in threshold_candidates(heat, grid)[1])]))
    settings.healthy_peak = robust_peak(peaks)
    settings.healthy_peaks = [round(float(p), 3) for p in peaks]
    return threshold


def robust_peak(peaks: Sequence[float]) -> float:
    """The healthy maximum from each calibration volume's highest candidate peak.

    With four volumes or more the single highest is left out (the second-highest is used): one unusual healthy
    volume (a real validation scan peaked at 9.2x the threshold, the next at 3.1x) otherwise sets a maximum no lesion
    exceeds, and the "above healthy" flag says nothing. With fewer volumes the maximum is used.
    """
    ordered = sorted(float(p) for p in peaks)
    if not ordered:
        return 1.0
    return ordered[-2] if len(ordered) >= 4 else ordered[-1]


def check_heal_invert(weight: float | None, score: str) -> None:
    """Refuse an inverted-healing weight outside [0, 1) or for a score without the healing head."""
    if weight is None:
        return
    if not (isinstance(weight, (int, float)) and 0 <= weight < 1):
        raise InputError(f"the inverted-healing weight must be at least 0 and below 1, not {weight}")
    if weight > 0 and score not in HEAL_SCORES:
        raise InputError(f"the inverted-healing weight applies to the healing head's scores (heal, healed), not to '{score}'")


def default_score(model: Model) -> str:
    """The anomaly score calibrated when none is asked for: "heal" for models with a healing head, else "combined"."""
    return "heal" if model.net.heal_head is not None else "combined"


def calibrate_model(model: Model, volumes: list[tuple[np.ndarray, int]], quantile: float = 0.999,
                    score: str | None = None, heal_flip: bool | None = None,
                    heal_invert: float | None = None,
                    profile_volumes: list[tuple[np.ndarray, int]] | None = None) -> None:
    """Set the model's anomaly threshold and out-of-distribution intensity profile from healthy volumes.

    ``volumes`` are on the anomaly grid (``engine.ops.anomaly.anomaly_config``); ``score``: the anomaly score to
    calibrate (default: "heal" for models with a healing head, else "combined"); ``heal_flip``, ``heal_invert``: see
    ``calibrate``. ``profile_volumes``: the same volumes on the model's own grid for the intensity profile (None:
    ``volumes``).
    """
    from ..prep.ood import intensity_profile

    if score is None:
        score = default_score(model)
    model.config.anomaly.quantile = quantile
    model.config.anomaly.threshold = calibrate(model, volumes, quantile, score, heal_flip, heal_invert)
    model.config.intensity_profile = intensity_profile([v for v, _ in (volumes if profile_volumes is None else profile_volumes)])


def calibration_volumes(model: Model, paths: Sequence[str]) -> tuple[list, list]:
    """``paths`` read twice where the model's anomaly grid differs from its own (``anomaly.grid_mm``): (volumes on the
    anomaly grid, for the scores; volumes on the model's grid, for the intensity profile every operation checks)."""
    from ..ops.anomaly import anomaly_config

    own = load_volumes(paths, model.config)
    return (own if model.config.anomaly.grid_mm is None else load_volumes(paths, anomaly_config(model.config))), own


def recalibrate(model_path: str, healthy: Sequence[str], out: str, quantile: float = 0.999,
                score: str | None = None, heal_flip: bool | None = None,
                heal_invert: float | None = None) -> Path:
    """``medvae calibrate``: re-calibrate a model on (local) healthy held-out volumes; writes a new model.

    ``score``: the anomaly score to calibrate (engine.anomaly; default: calibrate_model's); ``heal_flip``: the
    healing head's mirror averaging (None: keep the model's setting; see ``calibrate``); ``heal_invert``: the
    inverted-intensity healing's weight (None: keep; see ``calibrate``)."""
    model = load_model(model_path, device="cpu")
    if score is not None and score not in SCORES:
        raise InputError(f"anomaly score must be one of {', '.join(SCORES)}, not {score!r}")
    if heal_flip is not None and (score or default_score(model)) not in HEAL_SCORES:
        raise InputError("--heal-flip applies to the healing head's scores (heal, healed) only")
    check_heal_invert(heal_invert, score or default_score(model))
    vols, own = calibration_volumes(model, healthy)
    calibrate_model(model, vols, quantile, score, heal_flip, heal_invert, profile_volumes=own)
    model.config.training = {**(model.config.training or {}), "calibrated_on": f"{len(vols)} volumes",
                             "calibration_files": [Path(p).name for p in healthy]}
    return save_checkpoint(out, model.config, model.net.state_dict())
