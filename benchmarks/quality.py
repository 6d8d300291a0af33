"""Quality benchmark: the model against the strongest classical baselines, in the same run, on held-out data.

Test subjects come from the MNI152 templates through the training generator with held-out seeds
(>= 20000, see benchmarks/_data.py), at 2 mm; a second, T2-like contrast (never trained on) is
reported separately as generalisation. Every method is timed next to its score.

    python benchmarks/quality.py                  # full table (< 20 min on a 2-core CPU)
    python benchmarks/quality.py --quick          # CI mode (< 3 min): 1 subject, denoise at 5 % only, no BM4D/dipy
    python benchmarks/quality.py --model my.safetensors --out /tmp/q.md
    python benchmarks/quality.py --subjects 3 --t2-subjects 3   # subjects per task (full mode's defaults)

BM4D (`pip install bm4d`, non-commercial licence) and dipy are optional benchmark-only baselines:
their rows are skipped with a note when not importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _data  # noqa: E402

from napari_medvae.engine import anomaly, denoise, inpaint, reconstruct  # noqa: E402
from napari_medvae.engine.metrics import psnr_db  # noqa: E402
from napari_medvae.engine.training import synth  # noqa: E402
from napari_medvae.service import get_model  # noqa: E402

MODEL = "medvae"
# skimage NLM tuned for PSNR on a separate subject (seed _data.SEED_TUNE, never scored): patch 5 / distance 6
# beat patch 3 / distance 5 by 2-4 dB; the best h (in units of the known sigma) falls with the noise level:
# 3 %: 0.7 (of 0.4-1.0), 5 %: 0.55 (of 0.4-0.8), 9 %: 0.4 (of 0.2-0.7).
NLM_PATCH, NLM_DISTANCE = 5, 6
NLM_H = {0.03: 0.7, 0.05: 0.55, 0.09: 0.4}


def nlm_h(frac: float) -> float:
    keys = sorted(NLM_H)
    return float(np.interp(frac, keys, [NLM_H[k] for k in keys]))


# ---- metrics ----------------------------------------------------------------------------------




def ssim(a, b, mask, peak) -> float:
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(b.astype(np.float64), a.astype(np.float64), data_range=peak, full=True)
    return float(smap[mask].mean())


def best_dice(score: np.ndarray, truth: np.ndarray) -> float:
    """Exact best Dice over all thresholds of ``score`` (1-D arrays of the evaluated voxels)."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], truth[order]
    tp = np.cumsum(t)
    k = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # only cut between distinct scores
    dice = 2 * tp[last] / (k[last] + t.sum())
    return float(dice.max()) if len(dice) else 0.0


def detection(score, truth, brain):
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = truth[brain], score[brain].astype(np.float64)
    return roc_auc_score(y, s), average_precision_score(y, s), best_dice(s, y)


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, task, method, score, seconds, target="", verdict=""):
        sec = "" if seconds is None else f"{seconds:.2f}"
        self.rows.append((task, method, score, sec, target, verdict))

    def markdown(self) -> str:
        out = ["| task | method | score | s / volume | target | result |", "|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(out)


def mean(rows, i):
    return float(np.mean([r[i] for r in rows]))


def pooled_psnr(pairs, peak_key=None):
    """PSNR of the pooled squared error over several (out, truth, mask, peak) cases (peak: their mean)."""
    est = np.concatenate([o[m].ravel() for o, _, m, _ in pairs])
    ref = np.concatenate([t[m].ravel() for _, t, m, _ in pairs])
    return psnr_db(est, ref, float(np.mean([p for *_, p in pairs])))


def plural(n: int) -> str:
    return f"{n} volume" + ("" if n == 1 else "s")


SYNTHETIC_TARGETS = {"auroc": 0.97, "dice": 0.6, "missing_gain": 2.0, "missing_ref": "linear"}
REAL_TARGETS = {"auroc": 0.95, "dice": 0.5, "missing_gain": 1.5, "missing_ref": "best"}  # the real-scans issue's


def detection_fails(auc: float, ap: float, dice: float, thresholding_ap: float, targets=SYNTHETIC_TARGETS) -> list[str]:
    """Anomaly targets missed; a missed AUROC is given to 4 decimals, since 0.9697 prints as 0.970 in the table."""
    a, d = targets["auroc"], targets["dice"]
    checks = (("AUPRC", ap >= 2 * thresholding_ap), ("Dice", dice >= d), (f"AUROC {auc:.4f} < {a}", auc >= a))
    return [name for name, ok in checks if not ok]


def detection_target(thr_ap: float, targets=SYNTHETIC_TARGETS) -> str:
    return (f"AUPRC ≥ 2 × best thresholding ({2 * thr_ap:.3f}); best Dice ≥ {targets['dice']}; "
            f"AUROC ≥ {targets['auroc']}")


def verdict(ok: bool, detail: str = "") -> str:
    return "PASS" if ok else ("FAIL" + (f" ({detail})" if detail else ""))


# ---- baselines --------------------------------------------------------------------------------


def nlm(noisy, sigma, h_factor):
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(noisy, patch_size=NLM_PATCH, patch_distance=NLM_DISTANCE, h=h_factor * sigma, sigma=sigma,
                            fast_mode=True, preserve_range=True).astype(np.float32)


def dipy_nlm(noisy, sigma):
    from dipy.denoise.nlmeans import nlmeans

    return nlmeans(noisy.astype(np.float64), sigma=sigma, rician=True).astype(np.float32)


def bm4d_rician(noisy, sigma):
    """BM4D models Gaussian noise: remove the Rician bias first (E[y^2] = x^2 + 2 sigma^2), then denoise."""
    import bm4d

    x = np.sqrt(np.maximum(noisy.astype(np.float64) ** 2 - sigma**2, 0))
    return np.asarray(bm4d.bm4d(x, sigma), dtype=np.float32).reshape(noisy.shape)


def interp_slices(vol, missing, kind):
    from scipy.interpolate import interp1d

    known = np.setdiff1d(np.arange(vol.shape[0]), missing)
    f = interp1d(known, vol[known].astype(np.float64), axis=0, kind=kind, bounds_error=False, fill_value=0.0)
    out = vol.astype(np.float32).copy()
    out[missing] = np.clip(f(np.asarray(missing)), 0, None).astype(np.float32)
    return out


def normalized_convolution(vol, mask, sigma=2.0):
    """Gaussian-weighted mean of the known voxels (sigma in voxels, grown until every hole is reached)."""
    known = (~mask).astype(np.float32)
    data = vol.astype(np.float32) * known
    while True:
        num, den = ndi.gaussian_filter(data, sigma), ndi.gaussian_filter(known, sigma)
        if (den[mask] > 1e-3).all() or sigma > 20:
            break
        sigma *= 1.5
    out = vol.astype(np.float32).copy()
    out[mask] = num[mask] / np.maximum(den[mask], 1e-6)
    return out


def biharmonic(vol, mask, margin=4):
    """skimage inpaint_biharmonic in 3D on the bounding box of each region plus a margin (for speed)."""
    from skimage.restoration import inpaint_biharmonic

    out = vol.astype(np.float32).copy()
    lab, _ = ndi.label(mask)
    for sl in ndi.find_objects(lab):
        box = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in sl)
        out[box] = inpaint_biharmonic(vol[box].astype(np.float64), mask[box]).astype(np.float32)
    return out


def local_tissue_mean(vol, brain, sigma=4.0):
    b = brain.astype(np.float32)
    return ndi.gaussian_filter(vol * b, sigma) / np.maximum(ndi.gaussian_filter(b, sigma), 1e-3)


# ---- tasks ------------------------------------------------------------------------------------


def task_denoise(table, model, subs, levels, baselines, label):
    for frac in levels:
        scores: dict[str, list] = {}
        for seed, (img, brain, _, sp) in subs:
            peak = float(img.max())
            sigma = frac * peak
            noisy = synth.rician(img, sigma, np.random.default_rng(seed + round(frac * 1000)))
            res = {"noisy input": (noisy, None), f"{MODEL} denoise": timed(denoise, model, noisy, sp)}
            hf = nlm_h(frac)
            res[f"skimage NLM (patch 5, distance 6, h {hf:.2f}σ, known σ)"] = timed(nlm, noisy, sigma, hf)
            if "dipy" in baselines:
                res["dipy nlmeans (rician, known σ)"] = timed(dipy_nlm, noisy, sigma)
            if "bm4d" in baselines:
                res["BM4D (Rician bias removed, known σ)"] = timed(bm4d_rician, noisy, sigma)
            for k, (out, sec) in res.items():
                scores.setdefault(k, []).append((psnr_db(out, img, peak, brain), ssim(out, img, brain, peak), sec))
        bm = next((v for k, v in scores.items() if k.startswith("BM4D")), None)
        others = {k: mean(v, 0) for k, v in scores.items() if k not in (f"{MODEL} denoise", "noisy input")}
        best_k = max(others, key=others.get)
        for k, v in scores.items():
            p, s = mean(v, 0), mean(v, 1)
            sec = None if v[0][2] is None else mean(v, 2)
            tgt = vd = ""
            if k == f"{MODEL} denoise":
                if bm:
                    ref, tgt = mean(bm, 0), f"PSNR ≥ BM4D ({mean(bm, 0):.2f} dB)"
                else:
                    ref, tgt = others[best_k], f"PSNR ≥ BM4D (not run; best baseline {others[best_k]:.2f} dB)"
                vd = verdict(p >= ref, f"{p - ref:+.2f} dB")
            table.add(f"{label}denoise, Rician {frac * 100:.0f} % of max", k, f"PSNR {p:.2f} dB, SSIM {s:.3f}", sec,
                      tgt, vd)


GAPS = {"single slices": [[20], [33], [46], [59]], "3-slice gaps": [[27, 28, 29], [52, 53, 54]]}


def task_missing(table, model, subs, label, targets=SYNTHETIC_TARGETS):
    for name, gaps in GAPS.items():
        missing = sorted(i for g in gaps for i in g)
        scores: dict[str, list] = {}
        for _, (img, brain, _, sp) in subs:
            vol = img.copy()
            vol[missing] = 0
            m = np.zeros(img.shape, bool)
            m[missing] = True
            m &= brain
            peak = float(img.max())
            res = {
                f"{MODEL} inpaint": timed(inpaint, model, vol, sp, missing_slices=missing, axis=0),
                "linear interpolation": timed(interp_slices, vol, missing, "linear"),
                "cubic interpolation": timed(interp_slices, vol, missing, "cubic"),
            }
            for k, (out, sec) in res.items():
                scores.setdefault(k, []).append((psnr_db(out, img, peak, m), ssim(out, img, m, peak), sec))
        gain = targets["missing_gain"]
        if targets["missing_ref"] == "best":
            ref_name, ref = "best interpolation", max(mean(scores[k], 0) for k in scores if "interpolation" in k)
        else:
            ref_name, ref = "linear", mean(scores["linear interpolation"], 0)
        for k, v in scores.items():
            p = mean(v, 0)
            tgt = vd = ""
            if k == f"{MODEL} inpaint":
                tgt = f"PSNR ≥ {ref_name} + {gain:g} dB ({ref + gain:.2f} dB)"
                vd = verdict(p >= ref + gain, f"{p - ref:+.2f} dB vs {ref_name}")
            table.add(f"{label}missing {name} (axis 0, {len(missing)} slices)", k,
                      f"PSNR {p:.2f} dB, SSIM {mean(v, 1):.3f}", mean(v, 2), tgt, vd)


def task_regions(table, model, subs, label):
    pairs: dict[str, list] = {}
    secs: dict[str, list] = {}
    for seed, (img, brain, _, sp) in subs:
        regions = _data.painted_regions(brain, sp[0], np.random.default_rng(seed + 31))
        mask = np.logical_or.reduce([m for _, m in regions])
        vol = np.where(mask, 0, img).astype(np.float32)
        peak = float(img.max())
        res = {
            f"{MODEL} inpaint": timed(inpaint, model, vol, sp, mask=mask),
            "normalised convolution (σ 2 vox)": timed(normalized_convolution, vol, mask),
            "skimage inpaint_biharmonic (3D, cropped)": timed(biharmonic, vol, mask),
        }
        for k, (out, sec) in res.items():
            secs.setdefault(k, []).append(sec)
            for dmm, r in regions:
                pairs.setdefault(k, []).append((out, img, r, peak, dmm))
    psnrs = {}
    for k, pr in pairs.items():
        small = [p[:4] for p in pr if p[4] <= 10]
        large = [p[:4] for p in pr if p[4] > 10]
        psnrs[k] = (pooled_psnr([p[:4] for p in pr]), pooled_psnr(small) if small else np.nan,
                    pooled_psnr(large) if large else np.nan)
    best = max(v[0] for k, v in psnrs.items() if k != f"{MODEL} inpaint")
    n = len(next(iter(pairs.values())))
    for k, (p, ps, pl) in psnrs.items():
        tgt = vd = ""
        if k == f"{MODEL} inpaint":
            tgt = f"PSNR ≥ best baseline + 2 dB ({best + 2:.2f} dB)"
            vd = verdict(p >= best + 2, f"{p - best:+.2f} dB vs best")
        table.add(f"{label}painted regions 5-20 mm ({n} spheres/ellipsoids)", k,
                  f"PSNR {p:.2f} dB in regions (6-10 mm: {ps:.2f}, 14-20 mm: {pl:.2f})", float(np.mean(secs[k])), tgt, vd)


LESION_CASES = {
    "hyper-intense": [("hyper", 2.5), ("hyper", 4.0), ("hyper", 6.0)],
    "hypo-intense": [("hypo", 2.5), ("hypo", 4.0), ("hypo", 6.0)],
    "mixed hyper + hypo": [("hyper", 3.0), ("hypo", 3.5), ("hyper", 5.0), ("hypo", 5.5)],
}
THRESHOLDING = ("plain intensity x", "plain intensity −x", "|x − brain median|", "|x − local tissue mean|")


def candidate_stats(res, truth) -> np.ndarray:
    """Lesion-level reading of the candidate list: [lesions, lesions overlapped by a candidate, ... by one peaking
    above the model's healthy maximum, candidates overlapping no lesion, ... of them above the healthy maximum,
    1 if the volume was flagged as unlike the calibration volumes]. A lesion is a 26-connected region of the truth
    mask."""
    lab, n = ndi.label(truth, np.ones((3, 3, 3)))
    above = {c["label"] for c in res.candidates if c.get("above_healthy")}
    hit, hit_above, fp, fp_above = set(), set(), 0, 0
    for c in res.candidates:
        ls = set(np.unique(lab[(res.labels == c["label"]) & (lab > 0)]).tolist())
        hit |= ls
        if c["label"] in above:
            hit_above |= ls
        fp += not ls
        fp_above += (not ls) and c["label"] in above
    return np.array([n, len(hit), len(hit_above), fp, fp_above, bool(res.warnings)], float)


def candidates_text(stats: list[np.ndarray]) -> str:
    t = np.sum(stats, axis=0)
    return (f"; lesions with a candidate {t[1]:.0f}/{t[0]:.0f} (peak above the healthy maximum: {t[2]:.0f}), "
            f"other candidates {t[3] / len(stats):.1f} per volume (above it: {t[4] / len(stats):.1f}); "
            f"flagged as unlike the calibration volumes: {t[5]:.0f}/{len(stats)}")


def task_anomaly(table, model, subs, label, targets=SYNTHETIC_TARGETS, radius_scale=1.0):
    """Synthetic lesions (LESION_CASES; radii in voxels at 2 mm, times ``radius_scale``) against thresholding."""
    per: dict[str, dict[str, list]] = {}
    cands: dict[str, list] = {}
    for seed, (img, brain, wm, sp) in subs:
        for ci, (case, spec) in enumerate(LESION_CASES.items()):
            spec = [(kind, r * radius_scale) for kind, r in spec]
            vol, truth = _data.lesion_case(img, brain, wm, np.random.default_rng(seed * 10 + ci), spec)
            kinds = {k for k, _ in spec}

            last = []

            def ours(v, sp=sp, last=last):
                last.append(anomaly(model, v, sp))
                return last[0].heatmap

            res = {
                f"{MODEL} anomaly heatmap": timed(ours, vol),
                "residual to smoothed input |x − G₂(x)|": timed(lambda v: np.abs(v - ndi.gaussian_filter(v, 2.0)), vol),
                "|x − brain median|": timed(lambda v, b=brain: np.abs(v - np.median(v[b])), vol),
                "|x − local tissue mean|": timed(lambda v, b=brain: np.abs(v - local_tissue_mean(v, b)), vol),
            }
            cands.setdefault(case, []).append(candidate_stats(last[0], truth))  # not timed
            if kinds == {"hyper"}:
                res["plain intensity x"] = (vol, 0.0)
            if kinds == {"hypo"}:
                res["plain intensity −x"] = (-vol, 0.0)
            for k, (s, sec) in res.items():
                per.setdefault(case, {}).setdefault(k, []).append((*detection(s, truth, brain), sec))
    for case, d in per.items():
        thr = max((mean(v, 1), k) for k, v in d.items() if k in THRESHOLDING)
        for k, v in d.items():
            auc, ap, dice = mean(v, 0), mean(v, 1), mean(v, 2)
            tgt = vd = extra = ""
            if k.startswith(MODEL):
                extra = candidates_text(cands[case]) if model.config.anomaly.healthy_peak else ""
                tgt = detection_target(thr[0], targets)
                fails = detection_fails(auc, ap, dice, thr[0], targets)
                vd = verdict(not fails, ", ".join(fails) + ("; AUPRC target > 1 is unreachable" if 2 * thr[0] > 1 else ""))
            table.add(f"{label}anomaly, {case} lesions ({plural(len(v))})", k,
                      f"AUROC {auc:.3f}, AUPRC {ap:.3f}, best Dice {dice:.3f}{extra}", mean(v, 3), tgt, vd)
    # all cases together: mean over every volume; thresholding = its best variant on each volume
    mv = [r for d in per.values() for r in d[f"{MODEL} anomaly heatmap"]]
    best_thr = []
    for d in per.values():
        variants = [v for k, v in d.items() if k in THRESHOLDING]
        best_thr += [max((v[i] for v in variants), key=lambda r: r[1]) for i in range(len(variants[0]))]
    auc, ap, dice = mean(mv, 0), mean(mv, 1), mean(mv, 2)
    tap = mean(best_thr, 1)
    fails = detection_fails(auc, ap, dice, tap, targets)
    extra = candidates_text([c for v in cands.values() for c in v]) if model.config.anomaly.healthy_peak else ""
    table.add(f"{label}anomaly, all cases combined ({plural(len(mv))})", f"{MODEL} anomaly heatmap",
              f"AUROC {auc:.3f}, AUPRC {ap:.3f}, best Dice {dice:.3f}{extra}", mean(mv, 3),
              detection_target(tap, targets), verdict(not fails, ", ".join(fails)))
    table.add(f"{label}anomaly, all cases combined ({plural(len(mv))})", "best thresholding variant per volume",
              f"AUROC {mean(best_thr, 0):.3f}, AUPRC {tap:.3f}, best Dice {mean(best_thr, 2):.3f}", mean(best_thr, 3))


def task_reconstruct(table, model, subs, label):
    rows = []
    for seed, (img, brain, wm, sp) in subs:
        vol, les = _data.lesion_case(img, brain, wm, np.random.default_rng(seed * 10 + 7),
                                     [("hyper", 4.5), ("hypo", 4.0)])
        rec, sec = timed(reconstruct, model, vol, sp)
        peak = float(img.max())
        healthy = brain & ~ndi.binary_dilation(les, iterations=2)
        rows.append((psnr_db(rec, img, peak, healthy), ssim(rec, img, healthy, peak),
                     psnr_db(vol, img, peak, les), psnr_db(rec, img, peak, les), sec))
    p, s, pin, prec, sec = (mean(rows, i) for i in range(5))
    task = f"{label}reconstruction of volumes with lesions ({plural(len(rows))})"
    table.add(f"{task}, healthy tissue", f"{MODEL} reconstruct", f"PSNR {p:.2f} dB, SSIM {s:.3f}", sec,
              "PSNR ≥ 30 dB, SSIM ≥ 0.9", verdict(p >= 30 and s >= 0.9))
    table.add(f"{task}, inside lesions vs lesion-free truth", "input itself", f"PSNR {pin:.2f} dB", None)
    table.add(f"{task}, inside lesions vs lesion-free truth", f"{MODEL} reconstruct",
              f"PSNR {prec:.2f} dB ({prec - pin:+.2f} dB vs input)", sec, "≥ input + 3 dB",
              verdict(prec - pin >= 3, f"{prec - pin:+.2f} dB"))


def task_healthy(table, model, subs, label):
    """Healthy held-out scans: native-resolution reconstruction and the anomaly map's false alarms."""
    rows, warned, found, above = [], 0, [], []
    for _, (img, brain, _, sp) in subs:
        rec, sec = timed(reconstruct, model, img, sp)
        peak = float(img.max())
        res, asec = timed(anomaly, model, img, sp)
        rows.append((psnr_db(rec, img, peak, brain), ssim(rec, img, brain, peak), sec, asec))
        warned += bool(res.warnings)
        found.append(len(res.candidates))
        above.append(res.n_above_healthy or 0)
    p, s, sec, asec = (mean(rows, i) for i in range(4))
    task = f"{label}healthy scans ({plural(len(rows))})"
    table.add(f"{task}, reconstruction in the brain", f"{MODEL} reconstruct", f"PSNR {p:.2f} dB, SSIM {s:.3f}", sec,
              "PSNR ≥ 30 dB at native resolution", verdict(p >= 30, f"{p - 30:+.2f} dB"))
    ok = warned == 0 and np.mean(above) <= 1
    table.add(f"{task}, anomaly false alarms", f"{MODEL} anomaly heatmap",
              f"candidates {np.mean(found):.1f} per scan, above the healthy maximum {np.mean(above):.1f} per scan; "
              f"'not calibrated' warnings {warned}/{len(rows)}", asec,
              "no warning; ≤ 1 candidate above the healthy maximum per scan",
              verdict(ok, f"{warned} warned" if warned else "too many above the healthy maximum"))


def slab(sub, n: int = 48):
    """The central ``n`` slices (axis 0) of a subject: BM4D and NLM cost minutes on a whole 1 mm brain."""
    img, brain, wm, sp = sub
    c = int(np.mean(np.nonzero(brain.any(axis=(1, 2)))[0]))
    sl = slice(max(0, c - n // 2), max(0, c - n // 2) + n)
    return img[sl].copy(), brain[sl].copy(), wm[sl].copy(), sp


def real_section(table, model, n, quick, baselines, notes) -> str:
    """The real held-out scans (ds002748 test split); returns the description line for the table's header."""
    import _real

    if not _real.available():
        notes.append("real scans not found, their rows are skipped (run `python scripts/fetch_real_data.py CLONE`)")
        return ""
    subs = [(70000 + k, s) for k, s in _real.subjects(n)]
    g = "real T1 (ds002748 held-out): "
    # denoise: two scans in full mode (BM4D takes about 2 min a level on each slab); one scan hid a failure that
    # only a brighter-peaked scan showed (see engine.ops.runner.signal_mask)
    den = [(seed, slab(s)) for seed, s in subs[:1 if quick else 2]]
    task_healthy(table, model, subs, g)
    task_denoise(table, model, den, [0.05] if quick else [0.03, 0.05, 0.09], baselines, g)
    task_missing(table, model, subs, g, REAL_TARGETS)
    task_regions(table, model, subs, g)
    task_anomaly(table, model, subs, g, REAL_TARGETS, radius_scale=2.0 / float(np.mean(subs[0][1][3])))
    shape = "×".join(str(s) for s in subs[0][1][0].shape)
    sp = "×".join(f"{s:.2f}" for s in subs[0][1][3])
    return (f"Real scans: OpenNeuro ds002748 (CC0) held-out test subjects sub-59… ({n}; denoise: the central 48 "
            f"slices of {len(den)}), skull-stripped T1, {sp} mm, cropped to the brain (first: {shape} voxels); lesion radii "
            f"scaled to the same millimetres as the synthetic ones. ")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model .safetensors (default: the shipped model)")
    ap.add_argument("--quick", action="store_true", help="CI mode: one subject per task, denoise at 5 %% only, no BM4D/dipy, < 3 min")
    ap.add_argument("--subjects", type=int, help="held-out T1 subjects per task (default: quick 1, full 3; "
                                                 "denoise uses at most 2 in full mode for BM4D's sake)")
    ap.add_argument("--t2-subjects", type=int, help="held-out T2-like subjects per task (default: quick 1, full 3; "
                                                    "denoise uses 1 in full mode for BM4D's sake)")
    ap.add_argument("--real-subjects", type=int, help="held-out real scans (ds002748 sub-59..72) per task "
                                                      "(default: quick 1, full 3; 0 skips the real section; denoise uses "
                                                      "at most 2 in full mode, 1 in quick mode)")
    ap.add_argument("--real-only", action="store_true", help="only the real held-out section "
                                                             "(default output benchmarks/results/quality_real.md)")
    ap.add_argument("--out", type=Path, help="markdown file (default benchmarks/results/quality[_quick].md)")
    a = ap.parse_args(argv)
    n = a.subjects if a.subjects is not None else (1 if a.quick else 3)
    n_den = n if (a.quick or a.subjects is not None) else min(n, 2)
    n2 = a.t2_subjects if a.t2_subjects is not None else (1 if a.quick else 3)
    n2_den = n2 if (a.quick or a.t2_subjects is not None) else 1
    n_real = a.real_subjects if a.real_subjects is not None else (1 if a.quick else 3)
    if n < 1 or n2 < 1:
        ap.error("--subjects and --t2-subjects must be at least 1")
    if n_real < 0:
        ap.error("--real-subjects must be 0 or more")
    if a.real_only and n_real < 1:
        ap.error("--real-only needs --real-subjects of 1 or more")
    name = "quality_real" if a.real_only else "quality"
    out = a.out or Path(__file__).resolve().parent / "results" / (f"{name}_quick.md" if a.quick else f"{name}.md")
    notes = []
    baselines = set()
    for mod in ("bm4d", "dipy"):
        if a.quick:
            notes.append(f"{mod} skipped (--quick)")
        elif importlib.util.find_spec(mod):
            baselines.add(mod)
        else:
            notes.append(f"{mod} not installed, its rows are skipped (`pip install {mod}`)")
    t0 = time.perf_counter()
    model = get_model(a.model, "cpu")
    table = Table()
    if a.real_only:
        real_line = real_section(table, model, n_real, a.quick, baselines, notes)
        if not real_line:
            raise SystemExit("error: --real-only, but the real scans are missing: " + "; ".join(notes))
        synth_line = ""
    else:
        t1 = [(_data.SEED_T1 + i, _data.subject(_data.SEED_T1 + i, "t1")) for i in range(n)]
        t2 = [(_data.SEED_T2 + i, _data.subject(_data.SEED_T2 + i, "t2")) for i in range(n2)]
        reconstruct(model, t1[0][1][0], t1[0][1][3])  # warm-up (thread pools, allocator), not timed
        real_line = real_section(table, model, n_real, a.quick, baselines, notes) if n_real else ""
        # quick (CI) mode: one noise level, since skimage NLM, its only denoise baseline there, costs about 35 s a level
        task_denoise(table, model, t1[:n_den], [0.05] if a.quick else [0.03, 0.05, 0.09], baselines, "")
        task_missing(table, model, t1, "")
        task_regions(table, model, t1, "")
        task_anomaly(table, model, t1, "")
        task_reconstruct(table, model, t1, "")
        g = "T2-like (generalisation): "
        task_denoise(table, model, t2[:n2_den], [0.05], baselines, g)
        task_missing(table, model, t2, g)
        task_regions(table, model, t2, g)
        if not a.quick:
            task_anomaly(table, model, t2, g)
        shape = "×".join(str(s) for s in t1[0][1][0].shape)
        synth_line = (f"Synthetic held-out subjects (MNI152-derived, seeds ≥ 20000, never trained on): {n} T1 "
                      f"(denoise: {n_den}) and {n2} T2-like (denoise: {n2_den}), 2 mm, {shape} voxels (z, y, x). ")
    total = time.perf_counter() - t0
    cmd = " ".join(["python benchmarks/quality.py", *argv])
    md = "\n".join([
        f"Command: `{cmd}`",
        "",
        f"Model {_data.model_id(model)} on CPU; {_data.machine()}. " + real_line + synth_line
        + f"Total {total:.0f} s." + (f" Notes: {'; '.join(notes)}." if notes else ""),
        "",
        "PSNR/SSIM inside the brain mask; missing slices: on the missing slices inside the brain; painted "
        "regions: inside the regions (pooled error). Anomaly metrics over brain voxels, mean over volumes; "
        "best Dice is the best over all thresholds. Seconds per volume, mean over volumes.",
        "",
        table.markdown(),
        "",
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
