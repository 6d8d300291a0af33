"""Quality benchmark: the shipped model against classical baselines, in the same run, on held-out data.

Test subjects come from the MNI152 templates through the same generator as the training data but with
seeds >= 20000 (training 1-999, validation 5001-5999, sample data 9001-9999), at 2 mm; a second contrast
(T2-like, synthesised from the tissue maps, never trained on) is reported separately.

    python benchmarks/quality.py            # full table (BM4D and dipy rows if those packages are installed)
    python benchmarks/quality.py --quick    # CI mode, one subject, no BM4D/dipy

Writes markdown to --out (default benchmarks/results/quality[_quick].md) and prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_medvae.engine import anomaly, denoise, inpaint, load_model, reconstruct, synth

SEED0 = 20000


def psnr(a, b, mask, peak) -> float:
    mse = float(np.mean((a[mask].astype(np.float64) - b[mask].astype(np.float64)) ** 2))
    return 10 * np.log10(peak**2 / max(mse, 1e-12))


def ssim(a, b, mask, peak) -> float:
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(b.astype(np.float64), a.astype(np.float64), data_range=peak, full=True)
    return float(smap[mask].mean())


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, task, method, score, seconds, target="", verdict=""):
        self.rows.append((task, method, score, f"{seconds:.2f}", target, verdict))

    def markdown(self) -> str:
        out = ["| task | method | score | seconds | target | |", "|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in self.rows]
        return "\n".join(out)


def subjects(tpl, n, contrast="t1", offset=0):
    for i in range(n):
        seed = SEED0 + offset + i
        img, brain, wm = synth.make_subject(tpl, seed, contrast=contrast)
        yield seed, img, brain, wm


# ---- baselines ------------------------------------------------------------------------------


def nlm(noisy, sigma):
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(noisy, patch_size=3, patch_distance=5, h=0.8 * sigma, sigma=sigma, fast_mode=True,
                            preserve_range=True).astype(np.float32)


def dipy_nlm(noisy, sigma):
    from dipy.denoise.nlmeans import nlmeans

    return nlmeans(noisy.astype(np.float64), sigma=sigma, rician=True).astype(np.float32)


def bm4d_vst(noisy, sigma):
    """BM4D (Gaussian model) after a crude variance-stabilising correction for Rician bias."""
    import bm4d

    x = np.sqrt(np.maximum(noisy.astype(np.float64) ** 2 - sigma**2, 0))
    return np.asarray(bm4d.bm4d(x, sigma), dtype=np.float32)


def interp_slices(vol, missing, kind):
    from scipy.interpolate import interp1d

    known = np.setdiff1d(np.arange(vol.shape[0]), missing)
    f = interp1d(known, vol[known].astype(np.float64), axis=0, kind=kind, bounds_error=False, fill_value=0.0)
    out = vol.astype(np.float32).copy()
    out[missing] = f(np.asarray(missing)).astype(np.float32)
    return out


def normalized_convolution(vol, mask, sigma=2.0):
    known = (~mask).astype(np.float32)
    num = ndi.gaussian_filter(vol.astype(np.float32) * known, sigma)
    den = ndi.gaussian_filter(known, sigma)
    for _ in range(5):
        if (den[mask] > 1e-3).all():
            break
        sigma *= 1.6
        num = ndi.gaussian_filter(vol.astype(np.float32) * known, sigma)
        den = ndi.gaussian_filter(known, sigma)
    out = vol.astype(np.float32).copy()
    out[mask] = num[mask] / np.maximum(den[mask], 1e-6)
    return out


def biharmonic(vol, mask, margin=4):
    from skimage.restoration import inpaint_biharmonic

    out = vol.astype(np.float32).copy()
    lab, n = ndi.label(mask)
    for sl in ndi.find_objects(lab):
        box = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in sl)
        out[box] = inpaint_biharmonic(vol[box].astype(np.float64), mask[box]).astype(np.float32)
    return out


# ---- tasks ----------------------------------------------------------------------------------


def task_denoise(table, model, subs, levels, baselines, label):
    for frac in levels:
        scores: dict[str, list] = {}
        for seed, img, brain, _ in subs:
            peak = float(img.max())
            sigma = frac * peak
            noisy = synth.rician(img, sigma, np.random.default_rng(seed + 777))
            methods = {"noisy input": (noisy, 0.0)}
            methods["medvae denoise"] = timed(denoise, model, noisy, (2.0, 2.0, 2.0))
            methods["skimage NLM (known sigma)"] = timed(nlm, noisy, sigma)
            if "dipy" in baselines:
                methods["dipy nlmeans (rician)"] = timed(dipy_nlm, noisy, sigma)
            if "bm4d" in baselines:
                methods["BM4D (+Rician bias correction)"] = timed(bm4d_vst, noisy, sigma)
            for k, (out, sec) in methods.items():
                scores.setdefault(k, []).append((psnr(out, img, brain, peak), ssim(out, img, brain, peak), sec))
        best_other = max((np.mean([s[0] for s in v]) for k, v in scores.items() if k not in ("medvae denoise",)), default=0)
        bm = scores.get("BM4D (+Rician bias correction)")
        for k, v in scores.items():
            p, s, sec = (float(np.mean([x[i] for x in v])) for i in range(3))
            target = verdict = ""
            if k == "medvae denoise":
                ref = float(np.mean([x[0] for x in bm])) if bm else best_other
                target = f"≥ {'BM4D' if bm else 'best baseline run'} ({ref:.2f} dB)"
                verdict = "PASS" if p >= ref else f"FAIL ({p - ref:+.2f} dB)"
            table.add(f"{label}denoise, Rician {int(frac * 100)} %", k, f"PSNR {p:.2f} dB, SSIM {s:.3f}", sec, target, verdict)


def task_missing(table, model, subs, label):
    for name, gaps in (("single slices", [[25], [38], [52], [66]]), ("3-slice gaps", [[30, 31, 32], [58, 59, 60]])):
        scores: dict[str, list] = {}
        for _, img, brain, _ in subs:
            missing = sorted(i for g in gaps for i in g)
            vol = img.copy()
            vol[missing] = 0
            m = np.zeros(img.shape, bool)
            m[missing] = True
            m &= brain
            peak = float(img.max())
            res = {
                "medvae inpaint": timed(inpaint, model, vol, (2.0, 2.0, 2.0), missing_slices=missing, axis=0),
                "linear interpolation": timed(interp_slices, vol, missing, "linear"),
                "cubic interpolation": timed(interp_slices, vol, missing, "cubic"),
            }
            for k, (out, sec) in res.items():
                scores.setdefault(k, []).append((psnr(out, img, m, peak), sec))
        lin = float(np.mean([x[0] for x in scores["linear interpolation"]]))
        for k, v in scores.items():
            p, sec = float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))
            tgt = vd = ""
            if k == "medvae inpaint":
                tgt = f"≥ linear + 2 dB ({lin + 2:.2f})"
                vd = "PASS" if p >= lin + 2 else f"FAIL ({p - lin:+.2f} dB vs linear)"
            table.add(f"{label}missing {name}", k, f"PSNR {p:.2f} dB", sec, tgt, vd)


def _sphere_masks(brain, rng, radii):
    inner = ndi.binary_erosion(brain, iterations=7)
    pts = np.argwhere(inner)
    zz, yy, xx = np.indices(brain.shape)
    mask = np.zeros(brain.shape, bool)
    for r in radii:
        c = pts[rng.integers(len(pts))]
        mask |= ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r
    return mask


def task_regions(table, model, subs, label):
    scores: dict[str, list] = {}
    for seed, img, brain, _ in subs:
        rng = np.random.default_rng(seed + 31)
        mask = _sphere_masks(brain, rng, [1.5, 2.5, 3.5, 5.0])  # radii in 2 mm voxels: 6-20 mm diameter
        vol = np.where(mask, 0, img).astype(np.float32)
        peak = float(img.max())
        res = {
            "medvae inpaint": timed(inpaint, model, vol, (2.0, 2.0, 2.0), mask=mask),
            "normalised convolution": timed(normalized_convolution, vol, mask),
            "skimage inpaint_biharmonic": timed(biharmonic, vol, mask),
        }
        for k, (out, sec) in res.items():
            scores.setdefault(k, []).append((psnr(out, img, mask, peak), sec))
    means = {k: (float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))) for k, v in scores.items()}
    best = max(p for k, (p, _) in means.items() if k != "medvae inpaint")
    for k, (p, sec) in means.items():
        tgt = vd = ""
        if k == "medvae inpaint":
            tgt = f"≥ best baseline + 2 dB ({best + 2:.2f})"
            vd = "PASS" if p >= best + 2 else f"FAIL ({p - best:+.2f} dB vs best)"
        table.add(f"{label}painted regions 6-20 mm", k, f"PSNR {p:.2f} dB (inside region)", sec, tgt, vd)


def best_dice(score, truth, n=60):
    qs = np.quantile(score, np.linspace(0.9, 0.99995, n))
    best = 0.0
    t = truth.sum()
    for q in qs:
        pred = score > q
        inter = np.logical_and(pred, truth).sum()
        best = max(best, 2 * inter / max(1, pred.sum() + t))
    return best


def task_anomaly(table, model, subs, label):
    from sklearn.metrics import average_precision_score, roc_auc_score

    per: dict[str, dict[str, list]] = {}
    for seed, img, brain, wm in subs:
        rng = np.random.default_rng(seed + 99)
        for kind in ("hyper", "hypo"):
            vol = img.copy()
            truth = np.zeros(img.shape, bool)
            for r in (2.5, 4.0, 6.0):
                vol, m = synth.add_lesion(vol, brain, wm * ~truth, rng, kind=kind, radius_vox=r)
                truth |= m
            med = float(np.median(vol[brain]))
            res = {
                "medvae anomaly": timed(lambda v: anomaly(model, v, (2.0, 2.0, 2.0)).heatmap, vol),
                "residual to smoothed input": timed(lambda v: np.abs(v - ndi.gaussian_filter(v, 2.0)), vol),
                "intensity thresholding |x - median|": timed(lambda v, med=med: np.abs(v - med), vol),
            }
            for k, (s, sec) in res.items():
                y, sc = truth[brain], s[brain]
                row = (roc_auc_score(y, sc), average_precision_score(y, sc), best_dice(np.where(brain, s, 0), truth), sec)
                per.setdefault(k, {}).setdefault(kind, []).append(row)
    thr_ap = {kind: float(np.mean([r[1] for r in per["intensity thresholding |x - median|"][kind]])) for kind in ("hyper", "hypo")}
    for kind in ("hyper", "hypo"):
        for k, d in per.items():
            auc, ap, dice, sec = (float(np.mean([r[i] for r in d[kind]])) for i in range(4))
            tgt = vd = ""
            if k == "medvae anomaly":
                tgt = f"AUPRC ≥ 2×thr ({2 * thr_ap[kind]:.3f}), Dice ≥ 0.6, AUROC ≥ 0.97"
                ok = ap >= 2 * thr_ap[kind] and dice >= 0.6 and auc >= 0.97
                vd = "PASS" if ok else "FAIL"
            table.add(f"{label}anomaly, {kind}-intense lesions", k, f"AUROC {auc:.3f}, AUPRC {ap:.3f}, best Dice {dice:.3f}",
                      sec, tgt, vd)


def task_reconstruct(table, model, subs, label):
    rows = []
    for seed, img, brain, wm in subs:
        rng = np.random.default_rng(seed + 5)
        vol, m1 = synth.add_lesion(img, brain, wm, rng, kind="hyper", radius_vox=4.5)
        vol, m2 = synth.add_lesion(vol, brain, wm * ~m1, rng, kind="hypo", radius_vox=4.0)
        les = m1 | m2
        rec, sec = timed(reconstruct, model, vol, (2.0, 2.0, 2.0))
        peak = float(img.max())
        healthy = brain & ~ndi.binary_dilation(les, iterations=2)
        rows.append((psnr(rec, img, healthy, peak), ssim(rec, img, healthy, peak),
                     psnr(vol, img, les, peak), psnr(rec, img, les, peak), sec))
    p, s, pin, prec, sec = (float(np.mean([r[i] for r in rows])) for i in range(5))
    table.add(f"{label}reconstruction, healthy tissue", "medvae reconstruct", f"PSNR {p:.2f} dB, SSIM {s:.3f}", sec,
              "PSNR ≥ 30 dB, SSIM ≥ 0.9", "PASS" if p >= 30 and s >= 0.9 else "FAIL")
    table.add(f"{label}reconstruction, inside lesions", "input itself", f"PSNR {pin:.2f} dB", 0.0)
    table.add(f"{label}reconstruction, inside lesions", "medvae reconstruct", f"PSNR {prec:.2f} dB ({prec - pin:+.2f})", sec,
              "≥ input + 3 dB", "PASS" if prec - pin >= 3 else "FAIL")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model .safetensors (default: the shipped model)")
    ap.add_argument("--quick", action="store_true", help="CI mode: one subject, no BM4D/dipy, < 3 min")
    ap.add_argument("--subjects", type=int, help="held-out subjects per task (default 1 quick, 3 full)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    n = a.subjects or (1 if a.quick else 3)
    out = a.out or Path(__file__).parent / "results" / ("quality_quick.md" if a.quick else "quality.md")
    baselines = set()
    if not a.quick:
        for mod in ("bm4d", "dipy"):
            if importlib.util.find_spec(mod):
                baselines.add(mod)
    t0 = time.time()
    model = load_model(a.model, device="cpu")
    tpl = synth.load_templates(2.0)
    t1 = list(subjects(tpl, n))
    table = Table()
    task_denoise(table, model, t1, [0.03, 0.05, 0.09], baselines, "")
    task_missing(table, model, t1, "")
    task_regions(table, model, t1, "")
    task_anomaly(table, model, t1, "")
    task_reconstruct(table, model, t1, "")
    t2 = list(subjects(tpl, 1, contrast="t2", offset=500))
    task_denoise(table, model, t2, [0.05], baselines, "T2-like (generalisation): ")
    task_missing(table, model, t2, "T2-like (generalisation): ")
    cmd = "python benchmarks/quality.py" + (" --quick" if a.quick else "") + (f" --subjects {a.subjects}" if a.subjects else "")
    missing = sorted({"bm4d", "dipy"} - baselines)
    md = "\n".join([
        f"Command: `{cmd}` — model `{model.config.name}` ({model.path.name if model.path else 'memory'}), "
        f"{n} held-out T1 subject(s) (seeds {SEED0}…) and 1 T2-like subject, 2 mm, CPU "
        f"({platform.processor() or platform.machine()}, torch threads {__import__('torch').get_num_threads()}); "
        f"total {time.time() - t0:.0f} s." + (f" Not installed, rows skipped: {', '.join(missing)}." if missing else ""),
        "",
        "PSNR/SSIM inside the brain mask (painted regions: inside the region; missing slices: on the missing slices "
        "inside the brain). Seconds per volume.",
        "",
        table.markdown(),
        "",
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
