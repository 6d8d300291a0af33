"""Anomaly heatmaps: restoration residuals between a volume and its healthy reconstructions.

A residual score is the median filter of |input - reconstruction| (normalised units, model grid),
restricted to the brain. Two reconstructions are used ("combined" score, set by calibration):

* the normal one, whose skip connections keep fine anatomy sharp (few false alarms at edges) but also
  copy part of a lesion through, mostly dark (hypo-intense) ones that look like sulci or ventricles;
* one decoded from the latent alone (skips off), which cannot copy a lesion through but is blurrier.

Each is divided by its healthy 99th percentile and the two are combined by their geometric mean, so a
voxel must be unusual for both. Both run on whole slices (not the box around the signal), which detects
dark lesions better. Models calibrated before this use the first score alone ("residual").
The score is divided by the calibrated threshold (a high quantile of healthy held-out scores), so that
1.0 means "as unusual as the top 0.1 % of healthy voxels". Candidates are connected regions above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from .model import Model
from .preprocess import Prepared, check_spacing, prepare
from .runner import CancelFn, Progress, ProgressFn, check_mask, slice_lerp

MIN_CANDIDATE_MM3 = 20.0


@dataclass
class AnomalyResult:
    """Heatmap (float32, 1.0 = calibrated threshold), candidate labels (int32) and their report rows."""

    heatmap: np.ndarray
    labels: np.ndarray
    candidates: list[dict] = field(default_factory=list)
    threshold: float = 1.0


def auto_brain_mask(x: np.ndarray) -> np.ndarray:
    """Signal region of a normalised (skull-stripped) volume, eroded to skip the boundary rim."""
    sig = ndi.gaussian_filter(x, 1.0) > 0.15
    sig = ndi.binary_fill_holes(sig)
    return ndi.binary_erosion(sig, iterations=2)


def residual_score(prep_data: np.ndarray, rec: np.ndarray, brain: np.ndarray, median_size: int) -> np.ndarray:
    """Uncalibrated score on the model grid: median-filtered absolute residual inside ``brain``.

    The median filter runs on the brain's bounding box (plus the filter's reach) only, which gives the same
    values inside the brain for less work.
    """
    score = np.zeros(prep_data.shape, dtype=np.float32)
    if not brain.any():
        return score
    reach = median_size // 2 + 1
    box = tuple(slice(max(0, int(i.min()) - reach), int(i.max()) + 1 + reach) for i in np.nonzero(brain))
    score[box] = ndi.median_filter(np.abs(prep_data[box] - rec[box]), size=median_size)
    score[~brain] = 0.0
    return score


def combined_score(skip: np.ndarray, latent: np.ndarray, settings: dict) -> np.ndarray:
    """Geometric mean of the two residual scores, each divided by its healthy scale (see module doc)."""
    a = skip / np.float32(settings["skip_scale"])
    b = latent / np.float32(settings["latent_scale"])
    return np.sqrt(np.maximum(a * b, 0)).astype(np.float32)


def uses_combined_score(model: Model) -> bool:
    return model.config.anomaly.get("score", "residual") == "combined"


def raw_scores(model: Model, data: np.ndarray, brain: np.ndarray, progress: Progress,
               combined: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(residual score, latent-only residual score or None) of ``data`` whose slices are the model's slice spacing apart."""
    from .runner import run_network

    med = int(model.config.anomaly.get("median_size", 3))
    if not combined:
        return residual_score(data, run_network(model, data, None, 1, progress), brain, med), None
    rec, rec0 = run_network(model, data, None, 1, progress, full_frame=True, both=True)
    return residual_score(data, rec, brain, med), residual_score(data, rec0, brain, med)


def score_prepared(model: Model, prep: Prepared, progress: Progress, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Uncalibrated score on the model grid (the model's "residual" or "combined" score, see module doc).

    Slices closer than the model's slice spacing (``prep.stride`` > 1, e.g. 1 mm) are scored on every
    ``stride``-th slice, at the model's own spacing, and linearly interpolated in between: the model works
    on a 2 mm grid in-plane too, and this keeps whole-brain maps within seconds.
    """
    brain = prep.mask_to_model(brain_mask) if brain_mask is not None else auto_brain_mask(prep.data)
    st = prep.stride
    combined = uses_combined_score(model)
    skip, latent = raw_scores(model, prep.data[::st], brain[::st], progress, combined)
    score = skip if latent is None else combined_score(skip, latent, model.config.anomaly)
    if st > 1:
        score = slice_lerp(score, prep.data.shape[0], st)
        score[~brain] = 0.0
    return score


def threshold_candidates(heatmap: np.ndarray, spacing: Sequence[float], threshold: float = 1.0,
                         geometry=None, min_volume_mm3: float = MIN_CANDIDATE_MM3) -> tuple[np.ndarray, list[dict]]:
    """Connected regions of ``heatmap > threshold`` (>= min_volume_mm3) as labels + report rows.

    Rows are sorted by peak score (label 1 = highest peak); centroids in voxel (z, y, x) and, when a
    ``geometry`` (io.Geometry) is given, world (x, y, z) mm.
    """
    sp = check_spacing(spacing)
    if not np.isfinite(threshold) or threshold <= 0:
        raise InputError(f"threshold must be a positive number, not {threshold}")
    voxel_mm3 = float(np.prod(sp))
    lab, n = ndi.label(heatmap > threshold)
    if n == 0:
        return np.zeros(heatmap.shape, dtype=np.int32), []
    # statistics over the (few) candidate voxels only, not the whole volume
    where = np.nonzero(lab)
    ids = lab[where]
    vals = heatmap[where].astype(np.float64)
    counts = np.bincount(ids, minlength=n + 1)
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, ids, vals)
    wsum = np.bincount(ids, weights=vals, minlength=n + 1)
    cen = np.stack([np.bincount(ids, weights=vals * c, minlength=n + 1) for c in where], axis=1) / np.maximum(wsum, 1e-12)[:, None]
    keep = [(i, float(peaks[i]), int(counts[i])) for i in range(1, n + 1) if counts[i] * voxel_mm3 >= min_volume_mm3]
    keep.sort(key=lambda t: -t[1])
    relabel = np.zeros(n + 1, dtype=np.int32)  # old label -> rank by peak (0 = dropped)
    for new, (old, _, _) in enumerate(keep, start=1):
        relabel[old] = new
    labels = np.zeros(heatmap.shape, dtype=np.int32)
    labels[where] = relabel[ids]
    rows = []
    for new, (old, peak, count) in enumerate(keep, start=1):
        cen_old = cen[old]
        row = {
            "label": new,
            "voxels": count,
            "volume_mm3": round(count * voxel_mm3, 2),
            "peak": round(peak, 4),
            "centroid_voxel_zyx": [round(float(c), 2) for c in cen_old],
        }
        if geometry is not None:
            row["centroid_world_xyz_mm"] = [round(float(c), 2) for c in geometry.index_to_world(cen_old)]
        rows.append(row)
    return labels, rows


def anomaly(model: Model, volume: np.ndarray, spacing: Sequence[float], *, brain_mask: np.ndarray | None = None,
            axis: int | None = None, threshold: float = 1.0, geometry=None,
            force: bool = False, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> AnomalyResult:
    """Anomaly heatmap of ``volume`` (z, y, x) on its own grid, plus candidates above ``threshold``."""
    thr = model.config.anomaly.get("threshold")
    if not thr:
        raise InputError("this model has no calibrated anomaly threshold (train it with held-out healthy volumes)")
    sp = check_spacing(spacing)
    bm = None if brain_mask is None else check_mask(brain_mask, volume.shape, "brain mask")
    if bm is not None and not bm.any():
        raise InputError("the brain mask is empty")
    prep = prepare(volume, sp, model.config, axis, force=force)
    p = Progress(len(range(0, prep.data.shape[0], prep.stride)) + 1, progress, cancel)
    p.check()
    score = score_prepared(model, prep, p, bm)
    heat = prep.to_original(score / np.float32(thr), denormalise=False)
    heat = np.clip(heat, 0, None)
    if bm is not None:
        heat[~bm] = 0.0
    labels, rows = threshold_candidates(heat, sp, threshold, geometry)
    p.step()
    return AnomalyResult(heat.astype(np.float32), labels, rows, threshold)
