"""``medvae demo``: every operation on the sample volumes, written to a folder with a PNG montage.

A model with a 1 mm grid (``real_t1``, the default) is shown on the real sample slab (ds002748 sub-51, a validation
subject) with synthetic lesions, noise, missing slices and a blanked region made here from a fixed seed; a 2 mm
model (``synthetic_mni``) on the synthetic MNI152 sample volumes it was made for.
"""

from __future__ import annotations

import json
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




def _linear_fill(vol: np.ndarray, axis: int) -> np.ndarray:
    """Baseline: blank slices filled by linear interpolation between the nearest non-blank ones."""
    from scipy.interpolate import interp1d

    moved = np.moveaxis(vol.astype(np.float32), axis, 0)
    known = np.flatnonzero(moved.reshape(moved.shape[0], -1).any(axis=1))
    f = interp1d(known, moved[known], axis=0, bounds_error=False, fill_value=0.0)
    return np.moveaxis(f(np.arange(moved.shape[0])).astype(np.float32), 0, axis)


def _montage(path: Path, *, model, lesion: tuple, noisy: tuple, missing: tuple, region: tuple,
             uncertainty: tuple, generated: np.ndarray, grey_max: float) -> Path:
    """montage.png: every result as a radiologist reads it (module ``montage``).

    Axial cuts through the lesions and the painted region, a coronal cut across the missing axial slices
    (arrows mark them), the anomaly and uncertainty maps as colour overlays on the scan with colour bars in
    their own units, orientation letters on every panel.
    """
    from .io import Geometry
    from .montage import Overlay, Panel, plan_cut, render
    from .service import save_png

    vol, geo, lmask, rec, heat = lesion
    noisy_vol, den, ngeo = noisy
    miss, filled, mgeo, gap = missing
    holed, refill, hole, hgeo = region
    healthy, unc = uncertainty
    g = (0.0, float(grey_max))
    zl = int(np.argmax((lmask > 0).sum(axis=(1, 2))))  # the axial slice with the most lesion
    ax_les = plan_cut(geo, vol.shape, 0, zl)
    ax_noise = plan_cut(ngeo, noisy_vol.shape, 0, noisy_vol.shape[0] // 2)
    d = np.asarray(mgeo.direction).reshape(3, 3)
    across = max((1, 2), key=lambda a: abs(d[1, 2 - a]))  # the cut across axis 0 nearest to coronal
    through = int(np.argmax((filled > 0).sum(axis=tuple(a for a in range(3) if a != across))))
    cor = plan_cut(mgeo, miss.shape, across, through)
    gap_rows = np.zeros(miss.shape, dtype=bool)
    gap_rows[gap] = True
    zh = int(np.argmax(hole.sum(axis=(1, 2))))
    ax_hole = plan_cut(hgeo, holed.shape, 0, zh)
    thr_max = 4.0
    heat_overlay = Overlay(heat, "inferno", 0.0, thr_max, show_from=0.5, opaque_at=1.0,
                           label="anomaly score (1.0 = calibrated healthy limit)",
                           ticks=[(0.0, "0"), (1.0, "1.0 limit"), (2.0, "2"), (3.0, "3"), (thr_max, f"{thr_max:g}+")])
    brain = healthy > 0.1 * healthy.max()
    umax = float(np.percentile(unc[brain], 99.5)) if brain.any() else float(unc.max())
    umax = umax if umax > 0 else 1.0
    unc_overlay = Overlay(unc, "viridis", 0.0, umax, show_from=0.3 * umax, opaque_at=0.8 * umax,
                          label="spread of 4 reconstructions (SD, scan intensity)",
                          ticks=[(0.0, "0"), (umax / 2, f"{umax / 2:.3g}"), (umax, f"{umax:.3g}")])
    gen_geo = Geometry(spacing=(model.config.slice_spacing_mm, model.config.spacing_mm, model.config.spacing_mm),
                       direction=hgeo.direction)  # the model's own grid, stored as its training scans are
    panels = [
        Panel("T1 with synthetic lesions", vol, ax_les, g),
        Panel("Model's reconstruction", rec, ax_les, g),
        Panel("Anomaly heatmap on the T1", vol, ax_les, g, overlay=heat_overlay),
        Panel("Noisy T1 (noise 5 % of max)", noisy_vol, ax_noise, g),
        Panel("Denoised", den, ax_noise, g),
        Panel("5 axial slices missing", miss, cor, g, mark_rows=gap_rows, caption="arrows: the missing slices"),
        Panel("Missing slices filled in", filled, cor, g, mark_rows=gap_rows,
              caption="arrows: slices estimated by the model"),
        Panel("Region blanked out", holed, ax_hole, g),
        Panel("Region filled in", refill, ax_hole, g, outline=hole, caption="cyan: edge of the filled region"),
        Panel("Uncertainty on a healthy T1", healthy, plan_cut(hgeo, healthy.shape, 0, zh), g, overlay=unc_overlay),
        Panel("Sample from the model's prior", generated, plan_cut(gen_geo, generated.shape, 0, generated.shape[0] // 2),
              (0.0, 1.2), caption="texture, not a brain: generation is not yet useful"),
    ]
    return save_png(render(panels, columns=4), path)


REAL_SLAB = "real_t1_ds002748_sub-51_slab.nii.gz"
REAL_GRID_MM = 1.5  # models whose in-plane grid is this fine or finer are shown on the real slab


def _ball(shape: tuple, spacing, centre, radius_mm: float, edge_mm: float = 1.5) -> np.ndarray:
    """A ball's soft weight (1 inside, 0 outside, linear over ``edge_mm``) on a grid of ``spacing`` mm."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre, spacing, strict=True))
    return np.clip((radius_mm - np.sqrt(d2)) / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)


def mni_inputs(src: Path) -> dict:
    """The demo's inputs from the synthetic MNI152 sample volumes: arrays, and (array, geometry) for the volumes."""
    from .io import read_volume

    lesion, geo = read_volume(src / "mni_t1_lesion.nii.gz")
    noisy, ngeo = read_volume(src / "mni_t1_noisy.nii.gz")
    missing, mgeo = read_volume(src / "mni_t1_missing.nii.gz")
    healthy, hgeo = read_volume(src / "mni_t1_healthy.nii.gz")
    region = np.zeros(healthy.shape, dtype=bool)
    c = np.array(healthy.shape) // 2
    zz, yy, xx = np.ogrid[: healthy.shape[0], : healthy.shape[1], : healthy.shape[2]]
    region[((zz - c[0]) ** 2 + (yy - c[1] + 10) ** 2 + (xx - c[2] - 12) ** 2) <= 16] = True
    return {"lesion": (lesion, geo), "lesion_truth": read_volume(src / "mni_t1_lesion_truth.nii.gz")[0],
            "lesion_mask": read_volume(src / "mni_t1_lesion_mask.nii.gz")[0],
            "noisy": (noisy, ngeo), "noisy_truth": read_volume(src / "mni_t1_noisy_truth.nii.gz")[0],
            "missing": (missing, mgeo), "missing_truth": read_volume(src / "mni_t1_missing_truth.nii.gz")[0],
            "healthy": (healthy, hgeo), "region": region}


def real_inputs(path: Path, seed: int = 0) -> dict:
    """The demo's inputs made from one real skull-stripped T1 (the sample slab), as ``mni_inputs``.

    A bright (6 mm) and a dark (5 mm) lesion in white matter of either hemisphere on the middle axial slice,
    Rician noise of 5 % of the maximum, five blank axial slices (one, a gap of three, one) and a 5 mm blanked ball.
    """
    from scipy import ndimage

    from .engine.training.synth import rician
    from .io import read_volume

    vol, geo = read_volume(path)
    v = vol.astype(np.float32)
    sp = tuple(float(x) for x in geo.spacing)
    brain = v > 0
    inner = ndimage.binary_erosion(brain, iterations=8)
    smooth = ndimage.gaussian_filter(v, 2.0)
    wm = float(np.percentile(v[brain], 90))
    z = v.shape[0] // 2
    nx = v.shape[2]
    lesion, lmask = v.copy(), np.zeros(v.shape, dtype=np.uint8)
    for label, (cols, radius, value) in enumerate(((slice(nx * 15 // 100, nx * 40 // 100), 6.0, 1.4 * wm),
                                                   (slice(nx * 60 // 100, nx * 85 // 100), 5.0, 0.35 * wm)), start=1):
        side = np.zeros(v.shape[2], dtype=bool)
        side[cols] = True
        score = np.where(inner[z] & side[None, :], smooth[z], -np.inf)  # the brightest (white-matter) spot
        y, x = np.unravel_index(int(np.argmax(score)), score.shape)
        w = _ball(v.shape, sp, (z, y, x), radius)
        lesion = lesion * (1 - w) + value * w
        lmask[w > 0.5] = label
    rng = np.random.default_rng(seed)
    sigma = 0.05 * float(v.max())
    noisy = rician(v, sigma, rng)
    missing = v.copy()
    n = v.shape[0]
    missing[[n // 5, n // 2 - 1, n // 2, n // 2 + 1, 4 * n // 5]] = 0
    ys, xs = np.nonzero(inner[z])
    centre = (z, int(np.percentile(ys, 30)), int(np.percentile(xs, 70)))
    region = (_ball(v.shape, sp, centre, 5.0, edge_mm=0.01) > 0.5) & brain

    def as_input(a: np.ndarray) -> np.ndarray:  # the scan's own dtype, as a user's file would be
        if np.issubdtype(vol.dtype, np.integer):
            return np.clip(np.round(a), 0, np.iinfo(vol.dtype).max).astype(vol.dtype)
        return a.astype(vol.dtype)

    return {"lesion": (as_input(lesion), geo),
            "lesion_truth": v, "lesion_mask": lmask,
            "noisy": (as_input(noisy), geo), "noisy_truth": v,
            "missing": (as_input(missing), geo), "missing_truth": v,
            "healthy": (vol, geo), "region": region}


def run_demo(out: Path, model_path: str | None = None, device: str = "auto", quiet: bool = False) -> dict:
    """Run reconstruct, denoise, inpaint (slices + region), anomaly, uncertainty and sample; returns a summary."""
    from . import service as sv
    from .engine.classical.fill import first_guess
    from .engine.metrics import psnr_db
    from .io import Geometry

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if not out.resolve().parent.is_dir():
        raise InputError(f"parent folder of {out} does not exist")
    out.mkdir(exist_ok=True)
    src = sample_data_dir()
    model = sv.get_model(model_path, device)
    say = (lambda *a: None) if quiet else print
    summary: dict = {"model": model.config.name, "device": str(model.device), "outputs": {}, "metrics": {}}
    plain = {"skull_strip": "never"}  # the sample volumes are brains already

    def timed(name, request, volume=None, geo=None, **kw):
        res = sv.run(request, volume, None if geo is None else geo.spacing, model=model, **kw)
        summary["outputs"][name] = {"seconds": round(res.seconds, 2)}
        return res

    if model.config.spacing_mm <= REAL_GRID_MM:
        inp = real_inputs(src / REAL_SLAB)
        summary["inputs"] = f"{REAL_SLAB} (real T1, validation subject) with synthetic changes, seed 0"
    else:
        inp = mni_inputs(src)
        summary["inputs"] = "synthetic MNI152 sample volumes (mni_t1_*.nii.gz)"
    lesion, geo = inp["lesion"]
    truth, lmask = inp["lesion_truth"], inp["lesion_mask"]
    for name in ("lesion", "noisy", "missing", "healthy"):  # what the model was given, to open beside its output
        sv.save(out / f"input_{name}.nii.gz", *inp[name])
    rec = timed("reconstruction", sv.ReconstructRequest(**plain), lesion, geo).volume
    sv.save(out / "lesion_reconstruction.nii.gz", rec, geo)
    an = timed("anomaly", sv.AnomalyRequest(**plain), lesion, geo, geometry=geo)
    sv.save(out / "lesion_anomaly.nii.gz", an.heatmap, geo)
    sv.save(out / "lesion_candidates.nii.gz", an.labels_out(), geo)
    # the same rows as medvae anomaly --report (centroid_voxel_ijk: the file's voxel order)
    sv.save_json(out / "lesion_candidates.json", an.rows())

    noisy, ngeo = inp["noisy"]
    ntruth = inp["noisy_truth"]
    den = timed("denoised", sv.DenoiseRequest(**plain), noisy, ngeo).volume
    sv.save(out / "noisy_denoised.nii.gz", den, ngeo)

    missing, mgeo = inp["missing"]
    mtruth = inp["missing_truth"]
    filled = timed("inpainted_slices", sv.InpaintRequest(missing_slices="auto", axis=0, **plain), missing, mgeo).volume
    sv.save(out / "missing_inpainted.nii.gz", filled, mgeo)

    healthy, hgeo = inp["healthy"]
    region = inp["region"]
    holed = np.where(region, 0, healthy).astype(healthy.dtype)
    sv.save(out / "healthy_with_hole.nii.gz", holed, hgeo)
    sv.save(out / "healthy_hole_mask.nii.gz", region.astype(np.uint8), hgeo)
    refill = timed("inpainted_region", sv.InpaintRequest(**plain), holed, hgeo, mask=region).volume
    sv.save(out / "healthy_inpainted.nii.gz", refill, hgeo)

    unc = timed("uncertainty", sv.UncertaintyRequest(samples=4, **plain), healthy, hgeo).volume
    sv.save(out / "healthy_uncertainty.nii.gz", unc, hgeo)
    drawn = timed("sample", sv.SampleRequest(n=1, seed=0))
    gen = drawn.volumes
    sv.save(out / "sample_000.nii.gz", gen[0], Geometry.identity(drawn.spacing))

    brain = truth > 0.1 * truth.max()
    healthy_t = brain & (lmask == 0)
    peak = float(truth.max())
    m = summary["metrics"]
    m["reconstruction_psnr_healthy_tissue_db"] = round(psnr_db(rec, truth, peak, healthy_t), 2)
    m["lesion_abs_error_input"] = round(float(np.abs(lesion[lmask > 0] - truth[lmask > 0]).mean()), 2)
    m["lesion_abs_error_reconstruction"] = round(float(np.abs(rec[lmask > 0] - truth[lmask > 0]).mean()), 2)
    nb = ntruth > 0.1 * ntruth.max()
    m["denoise_psnr_noisy_db"] = round(psnr_db(noisy, ntruth, float(ntruth.max()), nb), 2)
    m["denoise_psnr_denoised_db"] = round(psnr_db(den, ntruth, float(ntruth.max()), nb), 2)
    ms = np.zeros(missing.shape, dtype=bool)
    ms[[i for i in range(missing.shape[0]) if not missing[i].any()]] = True
    ms &= mtruth > 0.1 * mtruth.max()
    m["missing_slices_psnr_db"] = round(psnr_db(filled, mtruth, float(mtruth.max()), ms), 2)
    m["missing_slices_psnr_linear_interpolation_db"] = round(psnr_db(_linear_fill(missing, 0), mtruth, float(mtruth.max()), ms), 2)
    bih = first_guess(holed.astype(np.float32), region)  # the engine's classical fill: biharmonic for a region
    hp = float(healthy.max())
    m["painted_region_psnr_db"] = round(psnr_db(refill, healthy, hp, region), 2)
    m["painted_region_psnr_biharmonic_db"] = round(psnr_db(bih, healthy, hp, region), 2)
    m["anomaly_peak_in_lesion"] = bool(lmask[np.unravel_index(np.argmax(an.heatmap), an.heatmap.shape)] > 0)
    m["anomaly_candidates"] = len(an.candidates)
    if an.residual_ratio is not None:
        m["anomaly_residual_ratio"] = an.residual_ratio
    if an.n_above_healthy is not None:
        m["anomaly_candidates_above_healthy_peak"] = an.n_above_healthy

    gap = np.array([i for i in range(missing.shape[0]) if not missing[i].any() and mtruth[i].any()], dtype=int)
    _montage(out / "montage.png", model=model, lesion=(lesion, geo, lmask, rec, an.heatmap), noisy=(noisy, den, ngeo),
             missing=(missing, filled, mgeo, gap), region=(holed, refill, region, hgeo),
             uncertainty=(healthy, unc), generated=gen[0], grey_max=peak)
    sv.save_json(out / "summary.json", summary)
    say(json.dumps(summary, indent=2))
    say(f"wrote {len(list(out.iterdir()))} files to {out}")
    return summary
