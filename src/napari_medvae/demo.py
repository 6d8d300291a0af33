"""``medvae demo``: every operation on the sample volumes, written to a folder with a PNG montage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import InputError


def sample_data_dir() -> Path:
    """The sample volumes: inside the installed package, else the source checkout's top-level folder."""
    from importlib.resources import files

    packaged = Path(str(files("napari_medvae"))) / "sample_data"
    if (packaged / "mni_t1_healthy.nii.gz").exists():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "sample_data"
    if (checkout / "mni_t1_healthy.nii.gz").exists():
        return checkout
    raise InputError("the sample volumes are missing from this installation (expected napari_medvae/sample_data)")


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a[mask].astype(np.float64) - b[mask]) ** 2))
    return 10 * np.log10(peak**2 / max(mse, 1e-12))


def _linear_fill(vol: np.ndarray, axis: int) -> np.ndarray:
    """Baseline: blank slices filled by linear interpolation between the nearest non-blank ones."""
    from scipy.interpolate import interp1d

    moved = np.moveaxis(vol.astype(np.float32), axis, 0)
    known = np.flatnonzero(moved.reshape(moved.shape[0], -1).any(axis=1))
    f = interp1d(known, moved[known], axis=0, bounds_error=False, fill_value=0.0)
    return np.moveaxis(f(np.arange(moved.shape[0])).astype(np.float32), 0, axis)


def _tile(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def run_demo(out: Path, model_path: str | None = None, device: str = "auto", quiet: bool = False) -> dict:
    """Run reconstruct, denoise, inpaint (slices + region), anomaly, uncertainty and sample; returns a summary."""
    from PIL import Image, ImageDraw

    from .engine import anomaly, denoise, inpaint, load_model, reconstruct, sample, uncertainty
    from .engine.inpaint import first_guess
    from .io import Geometry, read_volume, write_volume

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if not out.resolve().parent.is_dir():
        raise InputError(f"parent folder of {out} does not exist")
    out.mkdir(exist_ok=True)
    src = sample_data_dir()
    model = load_model(model_path, device=device)
    say = (lambda *a: None) if quiet else print
    summary: dict = {"model": model.config.name, "device": str(model.device), "outputs": {}, "metrics": {}}

    def timed(name, fn, **kw):
        t = time.perf_counter()
        res = fn(model=model, **kw)
        summary["outputs"][name] = {"seconds": round(time.perf_counter() - t, 2)}
        return res

    lesion, geo = read_volume(src / "mni_t1_lesion.nii.gz")
    truth, _ = read_volume(src / "mni_t1_lesion_truth.nii.gz")
    lmask, _ = read_volume(src / "mni_t1_lesion_mask.nii.gz")
    rec = timed("reconstruction", reconstruct, volume=lesion, spacing=geo.spacing)
    write_volume(out / "lesion_reconstruction.nii.gz", rec, geo)
    an = timed("anomaly", anomaly, volume=lesion, spacing=geo.spacing, geometry=geo)
    write_volume(out / "lesion_anomaly.nii.gz", an.heatmap, geo)
    write_volume(out / "lesion_candidates.nii.gz", an.labels.astype(np.int16), geo)
    (out / "lesion_candidates.json").write_text(json.dumps(an.candidates, indent=2) + "\n")

    noisy, ngeo = read_volume(src / "mni_t1_noisy.nii.gz")
    ntruth, _ = read_volume(src / "mni_t1_noisy_truth.nii.gz")
    den = timed("denoised", denoise, volume=noisy, spacing=ngeo.spacing)
    write_volume(out / "noisy_denoised.nii.gz", den, ngeo)

    missing, mgeo = read_volume(src / "mni_t1_missing.nii.gz")
    mtruth, _ = read_volume(src / "mni_t1_missing_truth.nii.gz")
    filled = timed("inpainted_slices", inpaint, volume=missing, spacing=mgeo.spacing, missing_slices="auto", axis=0)
    write_volume(out / "missing_inpainted.nii.gz", filled, mgeo)

    healthy, hgeo = read_volume(src / "mni_t1_healthy.nii.gz")
    region = np.zeros(healthy.shape, dtype=bool)
    c = np.array(healthy.shape) // 2
    zz, yy, xx = np.ogrid[: healthy.shape[0], : healthy.shape[1], : healthy.shape[2]]
    region[((zz - c[0]) ** 2 + (yy - c[1] + 10) ** 2 + (xx - c[2] - 12) ** 2) <= 16] = True
    holed = np.where(region, 0, healthy).astype(healthy.dtype)
    write_volume(out / "healthy_with_hole.nii.gz", holed, hgeo)
    write_volume(out / "healthy_hole_mask.nii.gz", region.astype(np.uint8), hgeo)
    refill = timed("inpainted_region", inpaint, volume=holed, spacing=hgeo.spacing, mask=region)
    write_volume(out / "healthy_inpainted.nii.gz", refill, hgeo)

    unc = timed("uncertainty", uncertainty, volume=healthy, spacing=hgeo.spacing, samples=4)
    write_volume(out / "healthy_uncertainty.nii.gz", unc, hgeo)
    gen = timed("sample", sample, n=1, seed=0)
    sp = model.config.spacing_mm
    write_volume(out / "sample_000.nii.gz", gen[0], Geometry.identity((model.config.slice_spacing_mm, sp, sp)))

    brain = truth > 0.1 * truth.max()
    healthy_t = brain & (lmask == 0)
    peak = float(truth.max())
    m = summary["metrics"]
    m["reconstruction_psnr_healthy_tissue_db"] = round(_psnr(rec, truth, healthy_t, peak), 2)
    m["lesion_abs_error_input"] = round(float(np.abs(lesion[lmask > 0] - truth[lmask > 0]).mean()), 2)
    m["lesion_abs_error_reconstruction"] = round(float(np.abs(rec[lmask > 0] - truth[lmask > 0]).mean()), 2)
    nb = ntruth > 0.1 * ntruth.max()
    m["denoise_psnr_noisy_db"] = round(_psnr(noisy, ntruth, nb, float(ntruth.max())), 2)
    m["denoise_psnr_denoised_db"] = round(_psnr(den, ntruth, nb, float(ntruth.max())), 2)
    ms = np.zeros(missing.shape, dtype=bool)
    ms[[i for i in range(missing.shape[0]) if not missing[i].any()]] = True
    ms &= mtruth > 0.1 * mtruth.max()
    m["missing_slices_psnr_db"] = round(_psnr(filled, mtruth, ms, float(mtruth.max())), 2)
    m["missing_slices_psnr_linear_interpolation_db"] = round(_psnr(_linear_fill(missing, 0), mtruth, ms, float(mtruth.max())), 2)
    bih = first_guess(holed.astype(np.float32), region)  # the engine's classical fill: biharmonic for a region
    hp = float(healthy.max())
    m["painted_region_psnr_db"] = round(_psnr(refill, healthy, region, hp), 2)
    m["painted_region_psnr_biharmonic_db"] = round(_psnr(bih, healthy, region, hp), 2)
    m["anomaly_peak_in_lesion"] = bool(lmask[np.unravel_index(np.argmax(an.heatmap), an.heatmap.shape)] > 0)
    m["anomaly_candidates"] = len(an.candidates)
    if an.residual_ratio is not None:
        m["anomaly_residual_ratio"] = an.residual_ratio
    if an.n_above_healthy is not None:
        m["anomaly_candidates_above_healthy_peak"] = an.n_above_healthy

    # montage: one axial slice per result (through the lesion / a missing slice / the hole)
    zl = int(np.argmax((lmask > 0).sum(axis=(1, 2))))
    zm = int(np.flatnonzero(~missing.reshape(missing.shape[0], -1).any(axis=1))[1])
    rows = [
        ("lesion", lesion[zl], 0, peak), ("reconstruction", rec[zl], 0, peak),
        ("anomaly", an.heatmap[zl], 0, 2.0), ("noisy", noisy[noisy.shape[0] // 2], 0, peak),
        ("denoised", den[noisy.shape[0] // 2], 0, peak), ("missing slice", missing[zm], 0, peak),
        ("inpainted slice", filled[zm], 0, peak), ("painted hole", holed[c[0]], 0, peak),
        ("inpainted hole", refill[c[0]], 0, peak), ("uncertainty", unc[c[0]], 0, float(np.percentile(unc, 99.9)) or 1),
        ("generated", gen[0][gen.shape[1] // 2], 0, 1.2),
    ]
    th, tw = rows[0][1].shape
    cols = 4
    canvas = Image.new("L", (cols * tw, ((len(rows) + cols - 1) // cols) * (th + 14)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (name, img, lo, hi) in enumerate(rows):
        tile = Image.fromarray(_tile(np.flipud(img), lo, hi)).resize((tw, th))
        x, y = (i % cols) * tw, (i // cols) * (th + 14)
        canvas.paste(tile, (x, y + 14))
        draw.text((x + 2, y + 1), name, fill=255)
    canvas = canvas.resize((canvas.width * 2, canvas.height * 2), Image.NEAREST)
    tmp = out / ".montage.png.tmp"
    canvas.save(tmp, format="PNG")
    tmp.replace(out / "montage.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(json.dumps(summary, indent=2))
    say(f"wrote {len(list(out.iterdir()))} files to {out}")
    return summary
