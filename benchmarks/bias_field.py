"""Does SimpleITK's N4 bias-field correction help the shipped model? Measured on validation scans, not shipped.

    python benchmarks/bias_field.py [--model real_t1] [--subjects 55,56,57] [--strength 0.4]
                                    [--out benchmarks/results/bias_field.md]

Each validation scan of ds002748 (sub-51..58: the split the model is tuned and calibrated on; never the held-out
test subjects) is scored as it is and multiplied by a smooth synthetic bias field (``synth.bias_field``, log
amplitude ``--strength``), each with and without N4 (SimpleITK, fitted inside the brain mask on the volume shrunk
4x, the field then evaluated on the full grid). Reported per variant: the healthy anomaly map's candidates, those
above the model's healthy maximum, "not calibrated" warnings; and synthetic mixed hyper + hypo lesions (the quality
benchmark's case, lesion radii scaled to millimetres) as AUROC / AUPRC / best Dice. The table decides whether the
input pipeline corrects bias fields (see docs/method.md, "Bias fields").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _data  # noqa: E402
import _real  # noqa: E402
from quality import LESION_CASES, detection  # noqa: E402

VAL_SUBJECTS = tuple(range(51, 59))


def val_subject(n: int):
    """A validation subject, prepared exactly as ``_real.subject`` prepares the held-out ones."""
    if n not in VAL_SUBJECTS:
        raise SystemExit(f"subject {n}: this study uses the validation split only (sub-51..58)")
    path_of = _real.path_of
    _real.path_of = lambda k: _real.REAL_DIR / "val" / f"sub-{k:02d}_T1w.nii.gz"
    try:
        return _real.subject(n)
    finally:
        _real.path_of = path_of


def n4(volume: np.ndarray, spacing, mask: np.ndarray, shrink: int = 4) -> np.ndarray:
    """``volume`` divided by N4's bias field (fitted in ``mask`` on the volume shrunk ``shrink``-fold)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume.astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    m = sitk.GetImageFromArray(mask.astype(np.uint8))
    m.CopyInformation(img)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations([50, 50, 50])
    f.Execute(sitk.Shrink(img, [shrink] * 3), sitk.Shrink(m, [shrink] * 3))
    log_field = sitk.GetArrayFromImage(f.GetLogBiasFieldAsImage(img)).astype(np.float32)
    return (volume / np.exp(log_field)).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="real_t1")
    ap.add_argument("--subjects", default="55,56,57", help="validation subjects (51..58), comma-separated")
    ap.add_argument("--strength", type=float, default=0.4, help="log amplitude of the synthetic bias field")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args(argv)
    if not _real.available():
        raise SystemExit("real scans missing: run `python scripts/fetch_real_data.py CLONE`")
    from napari_medvae.engine import anomaly
    from napari_medvae.engine.training import synth
    from napari_medvae.service import get_model

    model = get_model(a.model, "cpu")
    spec = LESION_CASES["mixed hyper + hypo"]
    rows: dict[tuple[str, str], list] = {}
    for n in (int(s) for s in a.subjects.split(",")):
        img, brain, wm, sp = val_subject(n)
        field = synth.bias_field(img.shape, np.random.default_rng(n), strength=a.strength)
        scale = 2.0 / float(np.mean(sp))
        les, truth = _data.lesion_case(img, brain, wm, np.random.default_rng(n * 10 + 2),
                                       [(k, r * scale) for k, r in spec])
        for scan, f in (("as acquired", None), (f"× bias field (strength {a.strength:g})", field)):
            for corr in ("none", "N4"):
                healthy, lesioned = (img, les) if f is None else (img * f, les * f)
                t = time.perf_counter()
                if corr == "N4":
                    healthy, lesioned = n4(healthy, sp, brain), n4(lesioned, sp, brain)
                secs = (time.perf_counter() - t) / 2
                h = anomaly(model, healthy, sp, brain_mask=brain)
                score = anomaly(model, lesioned, sp, brain_mask=brain).heatmap
                auc, apr, dice = detection(score, truth, brain)
                rows.setdefault((scan, corr), []).append(
                    (len(h.candidates), h.n_above_healthy or 0, len(h.warnings), auc, apr, dice, secs))
                print(n, scan, corr, rows[(scan, corr)][-1], flush=True)
    m = statistics.mean
    import platform

    import torch

    cmd = "python benchmarks/bias_field.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    lines = [f"`{cmd}`", "", f"Model `{a.model}` on CPU ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads); validation subjects sub-{a.subjects.replace(',', ', sub-')} (ds002748), "
             "skull-stripped T1, 1 mm. Healthy: per scan. Lesions: mixed hyper + hypo (quality benchmark case).", "",
             "| scan | bias correction | healthy candidates | above healthy max | 'not calibrated' warnings | "
             "lesions AUROC / AUPRC / best Dice | N4 seconds |", "|---|---|---|---|---|---|---|"]
    for (scan, corr), v in rows.items():
        c = list(zip(*v, strict=True))
        lines.append(f"| {scan} | {corr} | {m(c[0]):.1f} | {m(c[1]):.1f} | {sum(c[2])}/{len(v)} | "
                     f"{m(c[3]):.3f} / {m(c[4]):.3f} / {m(c[5]):.3f} | {m(c[6]):.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
