"""Anomaly heatmaps: restoration residuals between a volume and healthy versions of it.

A residual score is the median filter of |input - healthy version| (normalised units, model grid), restricted
to the brain. Up to three healthy versions are used, as the model's calibration says (``anomaly.score``):

* the VAE's normal reconstruction, whose skip connections keep fine anatomy sharp (few false alarms at edges)
  but also copy part of a lesion through, mostly dark (hypo-intense) ones that look like sulci or ventricles;
* the VAE's reconstruction decoded from the latent alone (skips off), which cannot copy a lesion through but is
  blurrier;
* the healing head's output (a 3D UNet trained to remove synthetic blobs and coarse intensity changes from
  healthy volumes, see train_heal_head), which sees the lesion's 3D surroundings and so also removes dark ones.

"heal" (the shipped model): the healing residual alone, divided by its healthy 99th percentile; the VAE still
reconstructs the volume, for the residual ratio below. On tuning subjects (never scored) the VAE's two residuals
added nothing to it on T1 (AUROC 0.999, AUPRC 0.934 and best Dice 0.858 with or without them, 18 volumes) and
noise on the T2-like contrast the VAE never learned (AUROC 0.916 alone, 0.889 with them, 30 volumes). Models
calibrated with ``heal_flip`` average the head's output over a left-right mirror (see ``heal``).
"combined": the two VAE residuals, each divided by its healthy 99th percentile, joined by their geometric mean
(a voxel must be unusual for both). "healed" (models with a healing head): that combined score and the healing
residual (divided by its healthy 99th percentile) joined by their root sum of squares (unusual for either is
enough). "residual": the first residual alone (the oldest models). The VAE runs on whole slices (not the box
around the signal), which detects dark lesions better.
The score is divided by the calibrated threshold (a high quantile of healthy held-out scores), so that
1.0 means "as unusual as the top 0.1 % of healthy voxels". Candidates are connected regions above it. Healthy
brains have such regions too (a few per volume, at folds and the brain's edge), so models calibrated with
``healthy_peak`` (the highest candidate peak in their healthy calibration volumes) mark each candidate whose peak
exceeds it (``above_healthy``): nothing is hidden, but those are the ones no healthy brain produced.

The calibration holds only for volumes the model reconstructs about as well as its healthy calibration volumes.
Models calibrated with ``residual_median`` (the healthy median of the smoothed reconstruction residual inside
the brain, see smooth_residual) report how many times larger this volume's median is (``residual_ratio``) and warn
above RESIDUAL_RATIO_LIMIT: the heatmap is still made, but its 1.0 no longer means "top 0.1 % of healthy voxels".
The smoothing keeps Rician noise, which the median filter of the score mostly absorbs, from raising the ratio.
Models calibrated with ``heal_invert`` = w > 0 heal such flagged volumes a second way too: the head heals the
volume with its intensities inverted inside the brain (1 - x, which turns a T2-like tissue order into the
T1-like one the head learnt; a bright lesion at grey-matter brightness in white matter becomes a dark one), the
result is inverted back, and the healthy version is (1 - w) × the normal one + w × that one (``heal_blended``).
Models calibrated with ``brain_quantiles`` also map the inverted intensities onto their healthy calibration
volumes' brain intensities by quantile before that healing, and back after (``heal_inverted``).
Volumes within the limit, such as the healthy calibration volumes, are healed as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from ..model.checkpoint import AnomalySettings, ModelConfig
from ..model.loader import Model
from ..prep.brainmask import auto_brain_mask
from ..prep.ood import ood_warning
from ..prep.preprocess import Prepared, check_spacing, prepare, volume_ml
from .runner import CancelFn, Progress, ProgressFn, check_mask, slice_lerp

MIN_CANDIDATE_MM3 = 20.0
# a volume's median smoothed residual / the healthy calibration's, above which the heatmap is flagged. Healthy
# tuning subjects 20990-20999, clean and with 5 % Rician noise, shipped model: T1 0.77-1.62, T2-like 1.88-4.50
# (one of 20 below the limit)
RESIDUAL_RATIO_LIMIT = 2.0
# What calibration now stores (anomaly.ratio_every, anomaly.heal_margin; models calibrated before keep every slice and
# 16 voxels). "heal" models: the residual ratio's reconstruction runs on every RATIO_EVERY-th slice (and the smoothed
# residual is taken on those slices): a quarter of the VAE's time on a whole head, still about half a million brain
# voxels for the median. The healing head sees HEAL_MARGIN voxels of background around the signal: on a 1 mm head
# 2.5 instead of 3.3 s for both mirrored passes (16 voxels); on validation scans sub-55..57 with synthetic lesions
# the same AUROC / AUPRC / best Dice (0.902 / 0.339 / 0.416) once recalibrated.
RATIO_EVERY = 4
HEAL_MARGIN = 8
QUANTILE_LEVELS = 201  # brain_quantiles stored at calibration: levels 0, 0.5 %, ..., 100 %


@dataclass
class AnomalyResult:
    """Heatmap (float32, 1.0 = calibrated threshold), candidate labels (int32) and their report rows."""

    heatmap: np.ndarray
    labels: np.ndarray
    candidates: list[dict] = field(default_factory=list)
    threshold: float = 1.0
    healthy_peak: float | None = None  # the model's highest healthy candidate peak (None: not calibrated)
    residual_ratio: float | None = None  # median smoothed residual / the healthy calibration's (None: not calibrated)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_above_healthy(self) -> int | None:
        """How many candidates peak above the model's healthy maximum (None: the model has none)."""
        if self.healthy_peak is None:
            return None
        return sum(bool(c["above_healthy"]) for c in self.candidates)


def anomaly_config(config: ModelConfig) -> ModelConfig:
    """The configuration anomaly maps are prepared (and calibrated) with: the model's own, or, for a model calibrated
    with ``anomaly.grid_mm``, a copy whose grid is that many millimetres in-plane and between slices.

    A healing head trained on a grid coarser than the VAE's sees more anatomy around a lesion in its patch (a 2 mm
    head grafted into ``real_t1``, see docs/method.md); the map is made on that grid and brought back to the input's.
    """
    g = config.anomaly.grid_mm
    if g is None:
        return config
    return replace(config, spacing_mm=float(g), slice_spacing_mm=float(g))


def brain_box(brain: np.ndarray, reach: int) -> tuple[slice, ...]:
    """The bounding box of ``brain`` (bool, not empty) grown by ``reach`` voxels on every side, within the volume: where
    a filter that reaches ``reach`` voxels must run for its values at the brain's voxels to equal the whole volume's."""
    found = ndi.find_objects(np.asarray(brain, dtype=bool).view(np.uint8))[0]
    return tuple(slice(max(0, b.start - reach), min(n, b.stop + reach)) for b, n in zip(found, brain.shape, strict=True))


def residual_score(prep_data: np.ndarray, rec: np.ndarray, brain: np.ndarray, median_size: int) -> np.ndarray:
    """Uncalibrated score on the model grid: median-filtered absolute residual inside ``brain``.

    The median filter runs on the brain's bounding box (plus the filter's reach) only, which gives the same
    values inside the brain for less work.
    """
    score = np.zeros(prep_data.shape, dtype=np.float32)
    if not brain.any():
        return score
    box = brain_box(brain, median_size // 2 + 1)
    score[box] = ndi.median_filter(np.abs(prep_data[box] - rec[box]), size=median_size)
    score[~brain] = 0.0
    return score


def combined_score(skip: np.ndarray, latent: np.ndarray, settings: AnomalySettings) -> np.ndarray:
    """Geometric mean of the two residual scores, each divided by its healthy scale (see module doc)."""
    a = skip / np.float32(settings.skip_scale)
    b = latent / np.float32(settings.latent_scale)
    return np.sqrt(np.maximum(a * b, 0)).astype(np.float32)


def healed_score(vae: np.ndarray, heal: np.ndarray, settings: AnomalySettings) -> np.ndarray:
    """The "healed" score: the VAE's combined score and the healing head's residual (divided by its healthy scale)
    joined by their root sum of squares, so that a voxel unusual for either counts (see module doc)."""
    h = heal / np.float32(settings.heal_scale)
    return np.sqrt(vae * vae + h * h).astype(np.float32)


def heal(model: Model, data: np.ndarray, flip: bool | None = None) -> np.ndarray:
    """The healing head's healthy version of ``data`` (D, H, W, normalised, model grid at its slice spacing).

    With ``flip`` (default: the model's ``anomaly.heal_flip``) it is the mean of the head's output for ``data`` and
    for ``data`` mirrored along its last axis (mirrored back): the head was trained with that mirroring, so both are
    estimates of the same healthy volume, and their mean is less noisy (test-time augmentation).
    """
    from ..model.networks import HealHeadConfig
    from .runner import HEAD_MARGIN, head_box, run_head3d

    if model.net.heal_head is None:
        raise InputError("this model has no healing head (add one with medvae train-heal-head)")
    mult = HealHeadConfig.from_dict(model.config.architecture["heal_head"]).multiple
    x = np.asarray(data, dtype=np.float32)[None]  # a view when the data are float32 already (no copy of the volume)
    # the box around the signal, found once: the mirrored volume's box is its mirror image, and the head runs on
    # the box alone (what run_head3d(crop=True) does, without finding the box a second time)
    margin = model.config.anomaly.heal_margin
    box = head_box(x, 0, HEAD_MARGIN if margin is None else int(margin))
    inner = np.ascontiguousarray(x if box is None else x[(slice(None), *box)])
    healed = run_head3d(model, model.net.heal_head, inner, mult, base=0)
    if bool(model.config.anomaly.heal_flip) if flip is None else flip:
        mirrored = run_head3d(model, model.net.heal_head, np.ascontiguousarray(inner[..., ::-1]), mult, base=0)
        healed = (healed + mirrored[..., ::-1]) / np.float32(2)
    if box is None:
        return healed
    out = x[0].copy()  # the input outside the box
    out[box] = healed
    return out


def score_kind(model: Model) -> str:
    """The model's anomaly score: "residual", "combined", "healed" or "heal" (see module doc)."""
    return model.config.anomaly.score


def increasing(q: np.ndarray) -> np.ndarray:
    """``q`` (non-decreasing quantiles) made strictly increasing by a ramp of 1e-6 per level, so that np.interp can map
    through it both ways (ties: e.g. many background-dark voxels, or quantiles rounded in the model's JSON)."""
    return np.asarray(q, np.float64) + np.arange(len(q)) * 1e-6


def brain_quantiles(values: np.ndarray, n: int = QUANTILE_LEVELS) -> np.ndarray:
    """``n`` quantiles (levels 0 to 1, evenly spaced) of the intensities ``values`` (a brain's voxels)."""
    return np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, n))


def heal_inverted(model: Model, data: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The head's healthy version of ``data`` found through its inverted intensities (1 - x inside ``brain``, 0
    outside, as the head was trained with), inverted back.

    Models calibrated with ``brain_quantiles`` (the intensity quantiles inside the brain of their healthy
    calibration volumes) map the inverted intensities onto them by quantile (histogram matching, rank kept) before
    healing and back after: a T2-like volume then looks like the contrast the head learnt best in its levels too, not
    only in the order of its tissues. Older models heal the inverted intensities as they are."""
    inverted = np.where(brain, np.float32(1) - data, np.float32(0)).astype(np.float32)
    ref = model.config.anomaly.brain_quantiles
    if not ref or not brain.any():
        return np.where(brain, np.float32(1) - heal(model, inverted), np.float32(0)).astype(np.float32)
    ref = increasing(np.asarray(ref, np.float64))
    own = increasing(brain_quantiles(inverted[brain], len(ref)))
    mapped = np.where(brain, np.interp(inverted, own, ref), 0.0).astype(np.float32)
    back = np.interp(heal(model, mapped), ref, own)
    return np.where(brain, 1.0 - back, 0.0).astype(np.float32)


def heal_blended(model: Model, data: np.ndarray, brain: np.ndarray, weight: float) -> np.ndarray:
    """``heal`` of ``data`` blended with ``heal_inverted``: (1 - weight) × heal(x) + weight × heal_inverted(x).

    See the module doc. Tuning subjects 20990-20999 (never scored), AUROC / AUPRC / best Dice, with the head shipped
    before its last 4000 steps (seed 22; the README's tuning table has the shipped one): plain
    inversion at weight 0.2 took T2-like volumes from 0.977 / 0.789 / 0.748 to 0.982 / 0.792 / 0.753 (30) and T1
    ones from 1.000 / 0.955 / 0.884 to 1.000 / 0.950 / 0.875 (18), hence only for volumes flagged by the residual
    ratio; with the quantile mapping, on flagged volumes (27 of the 30 T2-like), weight 0.5 gave 0.9817 / 0.826 /
    0.785 against 0.9797 / 0.792 / 0.752 at 0.2 without it (0.4: 0.9815 / 0.824 / 0.780; 0.6: 0.9817 / 0.822 /
    0.784; 0.7: 0.9814 / 0.809 / 0.774; 1.0: 0.972 / 0.716 / 0.691)."""
    out = heal(model, data)
    if weight <= 0:
        return out
    back = heal_inverted(model, data, brain)
    return ((1 - np.float32(weight)) * out + np.float32(weight) * back).astype(np.float32)


def residual_ratio(model: Model, smooth: np.ndarray) -> float | None:
    """Median of ``smooth`` (smooth_residual at the brain's voxels) over the model's healthy ``residual_median``;
    None for models calibrated without one or an empty brain."""
    ref = model.config.anomaly.residual_median
    return float(np.median(smooth)) / float(ref) if ref and smooth.size else None


def _heal_for(model: Model, data: np.ndarray, brain: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """The healthy version the heal scores use: ``heal_blended`` at the model's ``heal_invert`` weight when this
    volume's residual ratio is above RESIDUAL_RATIO_LIMIT, else ``heal``."""
    w = float(model.config.anomaly.heal_invert or 0.0)
    ratio = residual_ratio(model, smooth) if w > 0 else None
    flagged = ratio is not None and ratio > RESIDUAL_RATIO_LIMIT
    return heal_blended(model, data, brain, w) if flagged else heal(model, data)


def raw_scores(model: Model, data: np.ndarray, brain: np.ndarray, progress: Progress,
               kind: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(residual score, latent-only residual score, healing-head residual score, smoothed residual) of ``data``
    whose slices are the model's slice spacing apart; the first three are None where ``kind`` does not use
    them. The last is |G(x) - G(reconstruction)| inside the brain (``smooth_residual``), for the residual ratio
    ("heal": on every ``anomaly.ratio_every``-th slice)."""
    from .runner import run_network

    med = int(model.config.anomaly.median_size)
    if kind == "heal":  # the VAE serves the residual ratio only: a subset of slices is enough for a median
        every = int(model.config.anomaly.ratio_every or 1)
        if not brain[::every].any():  # a thin slab whose brain misses those slices: every slice, rather than no ratio
            every = 1
        rec = run_network(model, data, None, 1, progress, every=every)
        sub = slice(None, None, every)
        smooth = smooth_residual(data[sub], rec[sub], brain[sub])
        progress.check()
        return None, None, residual_score(data, _heal_for(model, data, brain, smooth), brain, med), smooth
    if kind == "residual":
        rec = run_network(model, data, None, 1, progress)
        return residual_score(data, rec, brain, med), None, None, smooth_residual(data, rec, brain)
    rec, rec0 = run_network(model, data, None, 1, progress, full_frame=True, both=True)
    heal_res = None
    smooth = smooth_residual(data, rec, brain)
    if kind == "healed":
        progress.check()
        heal_res = residual_score(data, _heal_for(model, data, brain, smooth), brain, med)
    return residual_score(data, rec, brain, med), residual_score(data, rec0, brain, med), heal_res, smooth


SMOOTH_SIGMA, SMOOTH_TRUNCATE = 1.0, 4.0  # voxels: the Gaussian of smooth_residual reaches 4 voxels


def smooth_residual(data: np.ndarray, rec: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """|G(data) - G(rec)| (Gaussian, sigma 1 voxel) at the brain's voxels (1D): how far the reconstruction is from
    the volume at the scale of tissue, not of noise (noise is smoothed away on both sides, a contrast the model
    did not learn is not). Filtered on the brain's box plus the Gaussian's reach only: the same values at the
    brain's voxels as filtering the whole volume, for a fraction of the work on a head."""
    if not brain.any():
        return np.zeros(0, np.float32)
    box = brain_box(brain, int(SMOOTH_TRUNCATE * SMOOTH_SIGMA + 0.5))
    d = ndi.gaussian_filter(data[box].astype(np.float32, copy=False), SMOOTH_SIGMA, truncate=SMOOTH_TRUNCATE)
    r = ndi.gaussian_filter(rec[box].astype(np.float32), SMOOTH_SIGMA, truncate=SMOOTH_TRUNCATE)
    return np.abs(d - r)[brain[box]]


def final_score(skip: np.ndarray | None, latent: np.ndarray | None, heal: np.ndarray | None,
                settings: AnomalySettings) -> np.ndarray:
    """The model's score from its raw residual scores (uncalibrated: not yet divided by the threshold)."""
    if skip is None:  # "heal"
        return (heal / np.float32(settings.heal_scale)).astype(np.float32)
    if latent is None:
        return skip
    vae = combined_score(skip, latent, settings)
    if heal is None:
        return vae
    return healed_score(vae, heal, settings)


def score_prepared(model: Model, prep: Prepared, progress: Progress, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Uncalibrated score on the model grid (the model's "residual", "combined", "healed" or "heal" score, see
    module doc).

    Slices closer than the model's slice spacing (``prep.stride`` > 1, e.g. 1 mm) are scored on every
    ``stride``-th slice, at the model's own spacing, and linearly interpolated in between: the model works
    on a 2 mm grid in-plane too, and this keeps whole-brain maps within seconds.
    """
    return score_and_ratio(model, prep, progress, brain_mask)[0]


def score_and_ratio(model: Model, prep: Prepared, progress: Progress,
                    brain_mask: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
    """``score_prepared``'s score and the volume's residual ratio (median smoothed residual inside the brain divided
    by the model's healthy ``residual_median``; None for models calibrated without one)."""
    brain = prep.mask_to_model(brain_mask) if brain_mask is not None else auto_brain_mask(prep.data)
    st = prep.stride
    *raws, smooth = raw_scores(model, prep.data[::st], brain[::st], progress, score_kind(model))
    score = final_score(*raws, model.config.anomaly)
    ratio = residual_ratio(model, smooth)
    if st > 1:
        score = slice_lerp(score, prep.data.shape[0], st)
        score[~brain] = 0.0
    return score, ratio


def ratio_warning(ratio: float | None) -> str | None:
    """The warning for a residual ratio above RESIDUAL_RATIO_LIMIT (None when within it or unknown)."""
    if ratio is None or ratio <= RESIDUAL_RATIO_LIMIT:
        return None
    return (f"the model reconstructs this volume {ratio:.1f}x worse than its healthy calibration volumes (median "
            f"smoothed residual; above {RESIDUAL_RATIO_LIMIT}x): a contrast or anatomy it did not learn, or heavy noise "
            "or artefacts. The heatmap's 1.0 is not calibrated for it; compare candidates by rank")


def threshold_candidates(heatmap: np.ndarray, spacing: Sequence[float], threshold: float = 1.0,
                         geometry=None, min_volume_mm3: float = MIN_CANDIDATE_MM3,
                         healthy_peak: float | None = None) -> tuple[np.ndarray, list[dict]]:
    """Connected regions of ``heatmap > threshold`` (>= min_volume_mm3) as labels + report rows.

    Rows are sorted by peak score (label 1 = highest peak); centroids in voxel (z, y, x) and, when a
    ``geometry`` (io.Geometry) is given, world (x, y, z) mm. With ``healthy_peak`` each row also says whether
    its peak is above it (``above_healthy``).
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
    labels = lab.astype(np.int32, copy=False)  # relabelled in place: no second whole-volume label array
    labels[where] = relabel[ids]
    rows = []
    for new, (old, peak, count) in enumerate(keep, start=1):
        cen_old = cen[old]
        row = {
            "label": new,
            "voxels": count,
            "volume_mm3": round(count * voxel_mm3, 2),
            "peak": round(peak, 4),
            # the reported (rounded) peak is compared: calibration stores the rounded peaks of its healthy volumes,
            # and a healthy volume's own top candidate must not read as above them
            **({} if healthy_peak is None else {"above_healthy": bool(round(peak, 4) > healthy_peak)}),
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
    thr = model.config.anomaly.threshold
    if not thr:
        raise InputError("this model has no calibrated anomaly threshold (train it with held-out healthy volumes)")
    sp = check_spacing(spacing)
    bm = None if brain_mask is None else check_mask(brain_mask, volume.shape, "brain mask")
    if bm is not None and not bm.any():
        raise InputError("the brain mask is empty")
    prep = prepare(volume, sp, anomaly_config(model.config), axis, force=force, warn=False)
    p = Progress(len(range(0, prep.data.shape[0], prep.stride)) + 1, progress, cancel)
    p.check()
    score, ratio = score_and_ratio(model, prep, p, bm)
    heat = prep.to_original(score / np.float32(thr), denormalise=False)
    np.clip(heat, 0, None, out=heat)  # in place: a 512 x 512 x 400 heatmap is 0.42 GB per copy
    if bm is not None:
        heat[~bm] = 0.0
    hp = model.config.anomaly.healthy_peak
    labels, rows = threshold_candidates(heat, sp, threshold, geometry, healthy_peak=hp)
    p.step()
    found = [ood_warning(prep.ood, model.config.intensity_profile, volume_ml(volume.shape, sp)), ratio_warning(ratio)]
    return AnomalyResult(heat.astype(np.float32, copy=False), labels, rows, threshold, hp,
                         None if ratio is None else round(ratio, 3), [w for w in found if w])
