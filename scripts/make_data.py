"""Make the sample volumes (sample_data/) and the training set of the default model.

Everything is derived from the MNI152 2009c symmetric templates shipped in the nilearn wheel
(see sample_data/README.md for provenance and licence). Seed ranges never overlap:
training subjects 1..999, validation (calibration) 5001..5999, sample/test volumes 9001..9999,
benchmark volumes 20000+ (benchmarks/).

    python scripts/make_data.py sample sample_data
    python scripts/make_data.py train data_cache/train --n 40 --val-dir data_cache/val --n-val 6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_medvae.engine.training import synth
from napari_medvae.io import Geometry, write_volume

TRAIN_SEEDS = range(1, 1000)
VAL_SEEDS = range(5001, 6000)


def _geometry(tpl: synth.Templates) -> Geometry:
    return Geometry(spacing=tpl.spacing, origin=tpl.origin, direction=tpl.direction)


def _int16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 32767).astype(np.int16)


def make_samples(out: Path, spacing: float = 2.0) -> dict:
    """The sample volumes used by the demo, the plugin's File > Open Sample, and the tests."""
    out.mkdir(parents=True, exist_ok=True)
    tpl = synth.load_templates(spacing)
    geo = _geometry(tpl)
    info: dict = {"spacing_mm": spacing, "files": {}}

    def save(name: str, arr: np.ndarray, desc: str) -> None:
        write_volume(out / name, arr, geo)
        info["files"][name] = desc

    img, brain, _ = synth.make_subject(tpl, 9001)
    save("mni_t1_healthy.nii.gz", _int16(img), "healthy synthetic subject (seed 9001)")
    save("mni_t1_brainmask.nii.gz", brain.astype(np.uint8), "brain mask of mni_t1_healthy (seed 9001)")

    img, brain, wm = synth.make_subject(tpl, 9002)
    rng = np.random.default_rng(9002)
    les, m1 = synth.add_lesion(img, brain, wm, rng, kind="hyper", radius_vox=4.5)
    les, m2 = synth.add_lesion(les, brain, wm * ~m1, rng, kind="hypo", radius_vox=3.5)
    save("mni_t1_lesion.nii.gz", _int16(les), "subject seed 9002 with a hyper- (9 mm) and a hypo-intense (7 mm) synthetic lesion")
    save("mni_t1_lesion_truth.nii.gz", _int16(img), "the same subject without lesions")
    save("mni_t1_lesion_mask.nii.gz", (m1.astype(np.uint8) + 2 * (m2 & ~m1).astype(np.uint8)),
         "lesion labels: 1 hyper-intense, 2 hypo-intense")

    img, brain, _ = synth.make_subject(tpl, 9003)
    missing = [30, 44, 45, 46, 60]
    cut = img.copy()
    cut[missing] = 0
    save("mni_t1_missing.nii.gz", _int16(cut), f"subject seed 9003 with axial slices {missing} (array axis 0) blanked")
    save("mni_t1_missing_truth.nii.gz", _int16(img), "the same subject, complete")
    info["missing_slices_axis0"] = missing

    img, brain, _ = synth.make_subject(tpl, 9004)
    noisy = synth.rician(img, 0.05 * float(img.max()), np.random.default_rng(9004))
    save("mni_t1_noisy.nii.gz", _int16(noisy), "subject seed 9004 with Rician noise, sigma = 5 % of max")
    save("mni_t1_noisy_truth.nii.gz", _int16(img), "the same subject without noise")
    (out / "sample_data.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def make_training(out: Path, n: int, val_dir: Path | None, n_val: int, spacing: float = 2.0, contrast: str = "t1") -> None:
    """Healthy training (and held-out validation) subjects; no lesions, no noise (added on the fly)."""
    tpl = synth.load_templates(spacing)
    geo = _geometry(tpl)
    for dst, seeds in ((out, list(TRAIN_SEEDS)[:n]), (val_dir, list(VAL_SEEDS)[:n_val])):
        if dst is None:
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for s in seeds:
            img, _, _ = synth.make_subject(tpl, s, contrast=contrast)
            write_volume(dst / f"subject_{s:04d}.nii.gz", _int16(img), geo)
        print(f"wrote {len(seeds)} volumes to {dst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sample")
    s.add_argument("out", type=Path)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("--n", type=int, default=40)
    t.add_argument("--val-dir", type=Path)
    t.add_argument("--n-val", type=int, default=6)
    args = ap.parse_args()
    if args.what == "sample":
        print(json.dumps(make_samples(args.out), indent=2))
    else:
        make_training(args.out, args.n, args.val_dir, args.n_val)


if __name__ == "__main__":
    main()
