"""The model card, rendered from a model's JSON config in one place.

Two parts, both Markdown: a short summary for the radiologist who reads the maps (what the model was
trained on, which scans it takes and which it refuses, how to read the anomaly heatmap, what it cannot
do), then the technical section for whoever maintains or retrains the model. ``medvae info``, the Model
widget and ``scripts/model_card.py`` (which writes docs/model_card.md) all call :func:`model_card` or
:func:`card_summary`; nothing else writes a card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import ModelError
from .checkpoint import ModelConfig

SUMMARY_TITLE = "What this model is for"
TECHNICAL_TITLE = "Technical details"


def _as_dict(config: ModelConfig | dict) -> dict:
    """The config as a plain dict; a dict is validated as a model config first (ModelError names the bad field)."""
    if isinstance(config, ModelConfig):
        return config.to_dict()
    if isinstance(config, dict):
        return ModelConfig.from_dict(config, source="model card config").to_dict()
    raise ModelError(f"a model card needs a ModelConfig or its JSON dict, not {type(config).__name__}")


def _mm(v: Any) -> str:
    return f"{float(v):g} mm"


def _summary_lines(c: dict) -> list[str]:
    """The radiologist's part: one Markdown line per heading, paragraph or bullet (no line breaks inside)."""
    arch, an, t = c.get("architecture") or {}, c.get("anomaly") or {}, c.get("training") or {}
    from ..prep.preprocess import NATIVE_TOLERANCE as tol

    sp, ssp = c.get("spacing_mm", 2.0), c.get("slice_spacing_mm", 2.0)
    n_train, data = t.get("n_train"), str(t.get("data") or "").strip()
    thr = an.get("threshold")
    lines = [
        f"## {SUMMARY_TITLE}",
        "",
        f"Model name: {c.get('name', '?')} (napari-medvae {c.get('package_version') or '?'}).",
        "",
        "Research software, not a medical device: no clinical validation comes with this model. Its maps "
        "point at places worth a second look; they do not diagnose.",
        "",
        "### What it was trained on",
        "",
        f"- Scans: {c.get('modality', '?')}"
        + (f", {n_train} healthy training volume{'' if n_train == 1 else 's'}." if n_train else "."),
        *([f"- Training data, in its trainer's words: {data.rstrip('.')}."] if data else []),
        *([f"- The healing head behind the anomaly map started from another model's (a '"
           f"{t['heal_head_graft']['donor_name']}' model, whose card names its training data) and was fine-tuned "
           f"as the table below lists; it works on a {_mm(an.get('grid_mm') or sp)} grid."] if t.get("heal_head_graft") else []),
        *([f"- Calibrated on healthy brains it did not train on ({t['calibrated_on']})."]
          if t.get("calibrated_on") else []),
        "",
        "### Which scans it takes",
        "",
        f"- 3D brain scans of the kind above, at any voxel size. Scans within {tol:.0%} of {_mm(sp)} in-plane "
        f"({float(sp) * (1 - tol):.2g}-{float(sp) * (1 + tol):.2g} mm) run on their own grid, at full detail; others are "
        f"resampled to {_mm(sp)} in-plane for the model and the results put back on the scan's own grid.",
        "- Before any work, a scan whose intensities are far from the training scans' is refused, for example CT "
        "or a head whose skull has not been removed when skull stripping is off. 'Run on unusual volumes' (CLI: "
        "--force) runs it anyway; the results are then unreliable." + _warn_text(c.get("intensity_profile")),
        "- Single 2D images, colour images and masks given as images are refused too.",
        "",
        "### How to read the anomaly heatmap",
        "",
    ]
    if thr:
        calib = t.get("calibrated_on") or "held-out volumes"
        pct = f"{100 * float(an.get('quantile', 0.999)):g} %"
        lines += [
            "- The heatmap has no units of its own: 1.0 is the anomaly threshold, the calibrated healthy limit. "
            f"In the healthy calibration brains ({calib}), {pct} of brain voxels scored below 1.0.",
            "- Above 1.0: the scan differs there from what the model expects of a healthy brain. The higher the "
            "value, the stronger the difference; 2.0 means twice the healthy limit.",
            "- Candidates are connected regions above the threshold, listed by their highest value.",
        ]
        if an.get("healthy_peak"):
            lines.append(
                "- Healthy brains have a few weak spots above 1.0 too, at folds, ventricle edges and the brain "
                f"surface: {_peak_text(an)}. Candidates above that value (the healthy maximum) are marked.")
        if an.get("residual_median"):
            lines.append(
                "- A scan that differs from the calibration scans as a whole (another scanner, contrast or "
                "noise level) gets a warning: its 1.0 is then not calibrated, and many spots may exceed it.")
        if arch.get("heal_head"):
            lines.append(
                "- The map compares the scan with the model's healthy version of the same brain (suspicious "
                "tissue replaced by what healthy tissue there would look like)"
                + (", averaged with the mirror image of the brain." if an.get("heal_flip") else "."))
    else:
        lines.append("- This model is not calibrated: its heatmap has no healthy limit. Calibrate it on healthy "
                     "scans (medvae calibrate) before reading its maps.")
    does = ["- Reconstruction: the model's healthy-looking version of the scan."]
    does.append("- Denoising of MRI noise (steered by the reconstruction; every model denoises, with or without a "
                "denoising head).")
    does.append("- Filling of missing or corrupted slices"
                + (f" (its learned part only at {_mm(ssp)} between slices)." if arch.get("slice_head") else "."))
    does.append("- Filling of regions painted by hand"
                + (f" (its learned prior whole for regions up to about {(arch['region_prior']['patch'] - 4) * sp:g} mm "
                   "across; larger ones along their edge, the classical fill inside)." if arch.get("region_prior")
                   else "."))
    does.append("- An uncertainty map: where repeated reconstructions disagree, in the scan's own intensity units.")
    lines += ["", "### What it does", "", *does, "", "### Known limitations", ""]
    med = an.get("median_size")
    lims = [f"- It has seen only {c.get('modality', '?')} scans"
            + (", all synthetic (see above), never a patient's." if "synthetic" in data.lower() else ".")
            + " Anatomy it never saw (surgery, large lesions, atrophy, children) may be flagged or missed."]
    lims.append(f"- Maps are made at about {_mm(sp)} in-plane"
                + (f" and smoothed over {med} voxels: spots smaller than about {med * float(sp):g} mm are blurred "
                   "or missed." if med else ".")
                + f" Scans finer than {float(sp) * (1 - tol):.2g} mm lose detail in the reconstruction.")
    lims.append("- A filled slice or region is an estimate from the surrounding tissue, not a measurement: never "
                "read a finding in it.")
    return lines + lims


def _warn_text(profile: dict | None) -> str:
    """The sentence on scans flagged but run (engine.prep.ood.ood_warning), if the model flags any below refusal."""
    from ..prep.ood import DEFAULT_THRESHOLD, warn_level

    if not profile or warn_level(profile) >= float(profile.get("threshold", DEFAULT_THRESHOLD)):
        return ""
    return (f" Scans somewhat unlike them (out-of-distribution score above {warn_level(profile):.2g}: another MRI "
            "contrast such as T2 or FLAIR, a contrast agent, another scanner) run with a warning.")


def _peak_text(an: dict) -> str:
    """How the healthy maximum was set: the highest calibration volume's peak, or the second-highest (robust)."""
    peaks = an.get("healthy_peaks")
    if peaks and len(peaks) >= 4:
        return (f"the strongest candidate of each healthy calibration brain peaked at {min(peaks):.2f} to "
                f"{max(peaks):.2f}; all but the highest of them stayed at or below {float(an['healthy_peak']):.2f}")
    return f"the strongest candidate in the healthy calibration brains peaked at {float(an['healthy_peak']):.2f}"


def card_summary(config: ModelConfig | dict) -> str:
    """The radiologist's summary (Markdown) of a model config: trained on, scans taken and refused, heatmap, limits."""
    return "\n".join(_summary_lines(_as_dict(config))) + "\n"


def _contrast(run: dict) -> str:
    """The random-contrast, tissue-mimicking, white-matter and small-blob shares of a healing-head run, if any."""
    p, m, w, s = (run.get(k) or 0 for k in ("contrast_prob", "mimic_prob", "wm_prob", "small_prob"))
    return ((f", {100 * p:.0f} % of patches with a random contrast" if p else "")
            + (f", {100 * m:.0f} % of blobs at another tissue's intensity" if m else "")
            + (f", {100 * w:.0f} % of blobs centred in white matter" if w else "")
            + (f", {100 * s:.0f} % of blobs small (radius 1.5-3 voxels)" if s else ""))


def _anomaly_row(an: dict) -> str:
    score = an.get("score", "residual")
    thr = an.get("threshold")
    s = f"{score} score"
    if an.get("heal_flip"):
        s += " (healing head averaged over a left-right mirror)"
    if an.get("heal_invert"):
        s += (f" (on volumes flagged by the residual ratio, {an['heal_invert']:g} of the healing of the "
              "intensity-inverted volume"
              + (", mapped by quantile onto the calibration volumes' brain intensities," if an.get("brain_quantiles")
                 else "")
              + " blended in)")
    s += (f"; threshold {thr:.4f} = {an.get('quantile')} quantile of healthy held-out voxel scores inside the brain "
          f"(median filter {an.get('median_size')})" if thr else "; not calibrated (no threshold)")
    if score in ("combined", "healed"):
        s += (f"; residual scales (healthy 99th percentiles) {an['skip_scale']:.4f} with skips, "
              f"{an['latent_scale']:.4f} from the latent alone")
    if score == "healed":
        s += f", {an['heal_scale']:.4f} from the healing head"
    if score == "heal":
        s += f"; healing residual's scale (healthy 99th percentile) {an['heal_scale']:.4f}"
    if an.get("healthy_peak"):
        s += f"; healthy maximum {an['healthy_peak']:.2f} ({_peak_text(an)})"
    if an.get("residual_median"):
        s += f"; their median smoothed residual {an['residual_median']:.4f} (volumes above 2 × it get a warning)"
    return s


def _slice_head_text(arch: dict, rec: dict | None, runs: str) -> str:
    """A missing-slice head's architecture and training runs (``rec``: its training record, if any)."""
    text = (f"3D UNet (MONAI), channels {arch['channels']}, strides {arch['strides']}, {arch['num_res_units']} residual "
            "units" + ("; started from the missing-slice head" if rec and rec.get("initialised_from") else ""))
    if not rec:
        return text
    return (text + f"; {rec['steps']} steps × batch {rec['batch_size']} patches of "
            f"{'×'.join(str(n) for n in rec['patch'])} voxels from {rec['n_train']} volumes ({runs}), Adam lr "
            f"{rec['lr']}, VAE frozen, {rec['seconds'] / 60:.1f} min on {rec['device']}"
            + "".join(f"; then {e['steps']} more steps, Adam lr {e['lr']}, {e['seconds'] / 60:.1f} min"
                      for e in rec.get("continued", [])))


def _head_rows(arch: dict, t: dict, slice_fill: str = "validated",
               config_anomaly: dict | None = None) -> list[tuple[str, str]]:
    """Rows for the 3D heads and the region prior that the config has (architecture + training record)."""
    rows: list[tuple[str, str]] = []
    head, td = arch.get("denoiser"), t.get("denoiser")
    if head:
        rows.append(("denoising head", f"3D UNet (MONAI), channels {head['channels']}, strides {head['strides']}, "
                                       f"{head['num_res_units']} residual units"
                     + (f"; {td['steps']} steps × batch {td['batch_size']} patches of {td['patch']}³ from "
                        f"{td['n_train']} volumes × {td['copies']} noisy copies (Rician {td['noise_range'][0]:g}-"
                        f"{td['noise_range'][1]:g} × max, lesions in {td['lesion_prob'] * 100:.0f} %), Adam lr "
                        f"{td['lr']}, VAE frozen, {td['seconds'] / 60:.1f} min on {td['device']}" if td else "")))
        last = (td or {}).get("history", [{}])[-1] if (td or {}).get("history") else {}
        if "val_psnr_head" in last:
            rows.append(("denoising head, validation", f"PSNR {last['val_psnr_wiener']:.2f} dB (Wiener stage) → "
                                                       f"{last['val_psnr_head']:.2f} dB (head), mean over {td['n_val']} "
                                                       "held-out volumes × Rician 3, 5, 9 %"))
    else:
        rows.append(("denoising head", "none (Wiener and block-matching stages only)"))
    sh, ts = arch.get("slice_head"), t.get("slice_head")
    if sh:
        rows.append(("missing-slice head", _slice_head_text(sh, ts, "runs of 1-3 missing slices")))
        hist = ((ts.get("continued") or [ts])[-1].get("history") if ts else None)  # the latest run's validation
        last = hist[-1] if hist else {}
        if "val_psnr_head" in last:
            rows.append(("missing-slice head, validation", f"PSNR in the missing slices {last['val_psnr_cubic']:.2f} dB "
                                                           f"(cubic) → {last['val_psnr_head']:.2f} dB (head alone), mean "
                                                           f"over {ts['n_val']} held-out volumes × single slices and "
                                                           "3-slice gaps"))
        ss, tss = arch.get("slice_head_single"), t.get("slice_head_single")
        if ss:
            rows.append(("single-slice head", _slice_head_text(ss, tss, "single missing slices only")))
            hist = ((tss.get("continued") or [tss])[-1].get("history") if tss else None)
            last = hist[-1] if hist else {}
            if "val_psnr_run1_head" in last:
                rows.append(("single-slice head, validation", f"PSNR in single missing slices {last['val_psnr_run1_cubic']:.2f} "
                                                              f"dB (cubic) → {last['val_psnr_run1_head']:.2f} dB (head), mean "
                                                              f"over {tss['n_val']} held-out volumes"))
        rows.append(("missing slices are filled by", ("the single-slice head (single missing slices) and the "
                                                      "missing-slice head (longer runs)" if ss else
                                                      "the missing-slice head alone") + " (slice_fill 'head')"
                     if slice_fill == "head" else "cubic interpolation corrected by the VAE and the head, "
                     "weighted by how well each corrects known slices of the same volume (slice_fill 'validated')"))
    else:
        rows.append(("missing-slice head", "none"))
    hh, th = arch.get("heal_head"), t.get("heal_head")
    if hh:
        rows.append(("healing head (anomaly)", f"3D UNet (MONAI), channels {hh['channels']}, strides {hh['strides']}, "
                                               f"{hh['num_res_units']} residual units"
                     + (f"; {th['steps']} steps × batch {th['batch_size']} patches of "
                        f"{'×'.join(str(n) for n in th['patch'])} voxels from {th['n_train']} volumes (synthetic blobs "
                        f"and coarse noise removed), Adam lr {th['lr']}, VAE frozen, {th['seconds'] / 60:.1f} min on "
                        f"{th['device']}" + _contrast(th)
                        + "".join(f"; then {e['steps']} more steps, Adam lr {e['lr']}{_contrast(e)}, "
                                  f"{e['seconds'] / 60:.1f} min" for e in th.get("continued", []))
                        if th else "")))
        graft = t.get("heal_head_graft")
        if graft:
            first = (th or {}).get("base_model")
            runs = graft.get("runs")
            rows.append(("healing head origin", f"grafted from the recipe stage '{graft['from_stage']}' (a model "
                         f"'{graft['donor_name']}'" + (f"; its first run above started from {first}" if first else "")
                         + ")" + (f"; the last {runs} run{'s' if runs != 1 else ''} above were this model's recipe, on "
                                  f"its {graft.get('n_train')} training volumes (validated on its {graft.get('n_val')})"
                                  if runs else "")))
        grid = (config_anomaly or {}).get("grid_mm")
        if grid:
            rows.append(("healing head grid", f"{grid:g} mm in-plane and between slices: anomaly maps are made and "
                                              "calibrated on it and brought back to the scan's grid"))
        hist = ((th.get("continued") or [th])[-1].get("history") if th else None)  # the latest run's validation
        last = hist[-1] if hist else {}
        if "val_psnr_head" in last:
            n_val = graft["n_val"] if graft and graft.get("runs") else th["n_val"]  # latest run: this recipe's?
            rows.append(("healing head, validation", f"PSNR inside synthetic blobs {last['val_psnr_input']:.2f} dB "
                                                     f"(input) → {last['val_psnr_head']:.2f} dB (healed), mean over "
                                                     f"{n_val} held-out volumes"))
    else:
        rows.append(("healing head (anomaly)", "none"))
    rp, tr = arch.get("region_prior"), t.get("region_prior")
    if rp:
        rows.append(("region prior (painted regions)",
                     f"mean and covariance of a ball {rp['patch']} voxels across, in cubes inside the brain, of the "
                     f"intensities to the power {rp.get('power', 1.0):g}"
                     + (f", {tr['n_patches']} cubes ({tr['per_volume']} per volume) from {tr['n_train']} training "
                        f"volumes, mirror-averaged, seed {tr['seed']}, {tr['seconds']:.0f} s" if tr else "")
                     + f"; regions up to {rp['patch'] - 4} voxels across in one cube, larger ones along their edge"))
    else:
        rows.append(("region prior (painted regions)", "none (biharmonic fill)"))
    return rows


def card_technical(config: ModelConfig | dict, weights: str | os.PathLike | None = None) -> str:
    """The technical section (Markdown table): architecture, grid, training runs, validation and calibration.

    ``weights``: the model's ``.safetensors`` file, named with its size in the card when it exists.
    """
    c = _as_dict(config)
    arch, t, an = c["architecture"], c.get("training") or {}, c.get("anomaly") or {}
    rows: list[tuple[str, str]] = [
        ("name / format", f"`{c['name']}`, format {c['format_version']}, napari-medvae {c.get('package_version') or '?'}"),
    ]
    if weights is not None:
        w = Path(weights)
        size = f" ({w.stat().st_size / 1e6:.1f} MB)" if w.is_file() else " (weights file not found)"
        rows.append(("files", f"`{w.with_suffix('.safetensors').name}` + `{w.with_suffix('.json').name}`{size}"))
    if c.get("float16_heads"):
        rows.append(("stored as float16", ", ".join(c["float16_heads"]) + " (weights read back as float32; the file is "
                                                                          "smaller, results change by rounding only)"))
    rows += [
        ("modality", c["modality"]),
        ("architecture", f"{arch.get('type')}: context ±{arch.get('context')} slices, channels {arch.get('channels')}, "
                         f"latent {arch.get('latent_channels')} × ¼ resolution, prefill {arch.get('prefill', False)}"),
        ("grid", f"{c['spacing_mm']} mm in-plane, context slices {c['slice_spacing_mm']} mm apart"),
        ("normalisation", f"divide by the {c['normalization']['percentile']}th percentile of the volume"),
    ]
    if t.get("data"):
        rows.append(("training data", str(t["data"])))
    if "steps" in t:
        rows.append(("training", f"{t['steps']} steps × batch {t.get('batch_size', '?')} crops of {t.get('crop', '?')}² px, "
                                 f"AdamW lr {t.get('lr', '?')} (warm-up + cosine), KL weight {t.get('kl_weight', '?')}, "
                                 f"skip drop {t.get('skip_drop', '?')}, seed {t.get('seed', '?')}, "
                                 f"{t.get('world_size', 1)} process(es) on {t.get('device', '?')}, "
                                 f"{t.get('seconds', 0) / 60:.1f} min"
                                 + (f"; fine-tuned from `{Path(str(t['fine_tuned_from'])).name}`"
                                    if t.get("fine_tuned_from") else "")))
    if t.get("val_loss") is not None:
        rows.append(("validation loss", f"{t['val_loss']} (weighted L1 + KL on corrupted held-out slices)"))
    rows.append(("anomaly calibration", _anomaly_row(an)
                 + (f"; calibrated on {t['calibrated_on']}" if t.get("calibrated_on") else "")))
    prof = c.get("intensity_profile") or {}
    if prof:
        rows.append(("out-of-distribution check", f"total-variation distance of the normalised intensity histogram "
                                                  f"to the healthy held-out volumes'; refused above "
                                                  f"{prof.get('threshold')} (healthy maximum "
                                                  f"{prof.get('healthy_max_score')})"))
    rows += _head_rows(arch, t, c.get("slice_fill", "validated"), c.get("anomaly"))
    out = [f"## {TECHNICAL_TITLE}", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += ["", "Generated from the model's JSON config by `napari_medvae.engine.model.card` (`medvae info` prints it; "
                "`python scripts/model_card.py` writes docs/model_card.md)."]
    return "\n".join(out) + "\n"


def model_card(config: ModelConfig | dict, weights: str | os.PathLike | None = None) -> str:
    """The whole card (Markdown): title, the radiologist's summary, then the technical section."""
    c = _as_dict(config)
    return f"# Model card: {c['name']}\n\n{card_summary(c)}\n{card_technical(c, weights)}"
