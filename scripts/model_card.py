"""Print the README's model-card table from a model's JSON config (and a `medvae demo` summary.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _contrast(run: dict) -> str:
    """The random-contrast, tissue-mimicking, white-matter and small-blob shares of a healing-head run, if it had them."""
    p, m, w, s = (run.get(k) or 0 for k in ("contrast_prob", "mimic_prob", "wm_prob", "small_prob"))
    return ((f", {100 * p:.0f} % of patches with a random contrast" if p else "")
            + (f", {100 * m:.0f} % of blobs at another tissue's intensity" if m else "")
            + (f", {100 * w:.0f} % of blobs centred in white matter" if w else "")
            + (f", {100 * s:.0f} % of blobs small (radius 1.5-3 voxels)" if s else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", type=Path, nargs="?", default=Path("src/napari_medvae/models/default.json"))
    ap.add_argument("--demo-summary", type=Path, help="summary.json written by `medvae demo`")
    a = ap.parse_args()
    c = json.loads(a.config.read_text())
    t = c["training"]
    arch = c["architecture"]
    rows = [
        ("name / format", f"`{c['name']}`, format {c['format_version']}, napari-medvae {c['package_version']}"),
        ("files", f"`{a.config.with_suffix('.safetensors').name}` + `{a.config.name}` "
                  f"({a.config.with_suffix('.safetensors').stat().st_size / 1e6:.1f} MB)"),
        ("modality", c["modality"]),
        ("architecture", f"{arch['type']}: context ±{arch['context']} slices, channels {arch['channels']}, "
                         f"latent {arch['latent_channels']} × ¼ resolution, prefill {arch.get('prefill', False)}"),
        ("grid", f"{c['spacing_mm']} mm in-plane, context slices {c['slice_spacing_mm']} mm apart"),
        ("normalisation", f"divide by the {c['normalization']['percentile']}th percentile of the volume"),
        ("training data", t["data"]),
        ("training", f"{t['steps']} steps × batch {t['batch_size']} crops of {t['crop']}² px, AdamW lr {t['lr']} "
                     f"(warm-up + cosine), KL weight {t['kl_weight']}, skip drop {t['skip_drop']}, seed {t['seed']}, "
                     f"{t['world_size']} process(es) on {t['device']}, {t['seconds'] / 60:.1f} min"),
        ("validation loss", f"{t['val_loss']} (weighted L1 + KL on corrupted held-out slices)"),
        ("anomaly calibration", f"{c['anomaly'].get('score', 'residual')} score"
                                + (" (healing head averaged over a left-right mirror)" if c['anomaly'].get('heal_flip') else "")
                                + (f" (on volumes flagged by the residual ratio, {c['anomaly']['heal_invert']:g} of the "
                                   "healing of the intensity-inverted volume"
                                   + (", mapped by quantile onto the calibration volumes' brain intensities,"
                                      if c['anomaly'].get('brain_quantiles') else "")
                                   + " blended in)"
                                   if c['anomaly'].get('heal_invert') else "")
                                + "; threshold "
                                f"{c['anomaly']['threshold']:.4f} = {c['anomaly']['quantile']} quantile of healthy held-out "
                                f"voxel scores (median filter {c['anomaly']['median_size']})"
                                + (f"; residual scales (healthy 99th percentiles) {c['anomaly']['skip_scale']:.4f} "
                                   f"with skips, {c['anomaly']['latent_scale']:.4f} from the latent alone"
                                   if c['anomaly'].get('score') in ('combined', 'healed') else "")
                                + (f", {c['anomaly']['heal_scale']:.4f} from the healing head"
                                   if c['anomaly'].get('score') == 'healed' else "")
                                + (f"; healing residual's scale (healthy 99th percentile) {c['anomaly']['heal_scale']:.4f}"
                                   if c['anomaly'].get('score') == 'heal' else "")
                                + (f"; highest candidate peak in those healthy volumes {c['anomaly']['healthy_peak']:.2f}"
                                   if c['anomaly'].get('healthy_peak') else "")
                                + (f"; their median smoothed residual {c['anomaly']['residual_median']:.4f} (volumes above 2 × "
                                   "it get a warning)" if c['anomaly'].get('residual_median') else "")),
    ]
    head, td = arch.get("denoiser"), t.get("denoiser")
    if head and td:
        last = td["history"][-1] if td.get("history") else {}
        lo, hi = td["noise_range"]
        rows.append(("denoising head", f"3D UNet (MONAI), channels {head['channels']}, strides {head['strides']}, "
                                       f"{head['num_res_units']} residual units; {td['steps']} steps × batch "
                                       f"{td['batch_size']} patches of {td['patch']}³ from {td['n_train']} volumes × "
                                       f"{td['copies']} noisy copies (Rician {lo:g}-{hi:g} × max, lesions in "
                                       f"{td['lesion_prob'] * 100:.0f} %), Adam lr {td['lr']}, VAE frozen, "
                                       f"{td['seconds'] / 60:.1f} min on {td['device']}"))
        if "val_psnr_head" in last:
            rows.append(("denoising head, validation", f"PSNR {last['val_psnr_wiener']:.2f} dB (Wiener stage) → "
                                                       f"{last['val_psnr_head']:.2f} dB (head), mean over {td['n_val']} "
                                                       "held-out volumes × Rician 3, 5, 9 %"))
    sh, ts = arch.get("slice_head"), t.get("slice_head")
    if sh and ts:
        last = ts["history"][-1] if ts.get("history") else {}
        rows.append(("missing-slice head", f"3D UNet (MONAI), channels {sh['channels']}, strides {sh['strides']}, "
                                           f"{sh['num_res_units']} residual units; {ts['steps']} steps × batch "
                                           f"{ts['batch_size']} patches of {'×'.join(str(n) for n in ts['patch'])} voxels "
                                           f"from {ts['n_train']} volumes (runs of 1-3 missing slices), Adam lr {ts['lr']}, "
                                           f"VAE frozen, {ts['seconds'] / 60:.1f} min on {ts['device']}"))
        if "val_psnr_head" in last:
            rows.append(("missing-slice head, validation", f"PSNR in the missing slices {last['val_psnr_cubic']:.2f} dB "
                                                           f"(cubic) → {last['val_psnr_head']:.2f} dB (head alone), mean "
                                                           f"over {ts['n_val']} held-out volumes × single slices and "
                                                           "3-slice gaps"))
    hh, th = arch.get("heal_head"), t.get("heal_head")
    if hh and th:
        hist = (th.get("continued") or [th])[-1].get("history")  # the latest training run's validation
        last = hist[-1] if hist else {}
        rows.append(("healing head (anomaly)", f"3D UNet (MONAI), channels {hh['channels']}, strides {hh['strides']}, "
                                               f"{hh['num_res_units']} residual units; {th['steps']} steps × batch "
                                               f"{th['batch_size']} patches of {'×'.join(str(n) for n in th['patch'])} voxels "
                                               f"from {th['n_train']} volumes (synthetic blobs and coarse noise removed), "
                                               f"Adam lr {th['lr']}, VAE frozen, {th['seconds'] / 60:.1f} min on {th['device']}"
                                               + _contrast(th)
                                               + "".join(f"; then {e['steps']} more steps, Adam lr {e['lr']}"
                                                         f"{_contrast(e)}, {e['seconds'] / 60:.1f} min"
                                                         for e in th.get("continued", []))))
        if "val_psnr_head" in last:
            rows.append(("healing head, validation", f"PSNR inside synthetic blobs {last['val_psnr_input']:.2f} dB "
                                                     f"(input) → {last['val_psnr_head']:.2f} dB (healed), mean over "
                                                     f"{th['n_val']} held-out volumes"))
    rp, tr = arch.get("region_prior"), t.get("region_prior")
    if rp and tr:
        rows.append(("region prior (painted regions)", f"mean and covariance of a ball {rp['patch']} voxels across, in cubes inside the brain, of the intensities "
                                                      f"to the power {rp.get('power', 1.0):g}, "
                                                      f"{tr['n_patches']} cubes ({tr['per_volume']} per volume) from "
                                                      f"{tr['n_train']} training volumes, mirror-averaged, seed {tr['seed']}, "
                                                      f"{tr['seconds']:.0f} s; regions up to {rp['patch'] - 4} voxels across"))
    print("| | |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if a.demo_summary:
        s = json.loads(a.demo_summary.read_text())
        print("\nOn the sample volumes (never seen in training), from `medvae demo` "
              f"({s['device']}):\n\n| metric | value |\n|---|---|")
        for k, v in s["metrics"].items():
            print(f"| {k} | {v} |")
        print("\n| operation | seconds |\n|---|---|")
        for k, v in s["outputs"].items():
            print(f"| {k} | {v['seconds']} |")


if __name__ == "__main__":
    main()
