"""Extract the real T1 cohort (OpenNeuro ds002748, CC0) into data_cache/ with the project's fixed split.

The 72 T1-weighted volumes (skull-stripped, 288x288x181, 0.87x0.87x1 mm) are kept in the GitHub repository
aaronsossin/DepressionMRI_AI as ``sub-XX/anat/sub-XX_T1w.nii.gz``. Clone it (or point at a bare mirror of it)
and run:

    python scripts/fetch_real_data.py PATH_TO_CLONE            # writes data_cache/ds002748/{train,val,test}

Split (fixed for the shipped model and every reported number): sub-01..50 train, sub-51..58 validation and
calibration, sub-59..72 held-out test. Data never go into the wheel; data_cache/ is git-ignored.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "data_cache" / "ds002748"
SPLIT = {"train": range(1, 51), "val": range(51, 59), "test": range(59, 73)}
PROVENANCE = """# ds002748 (real T1, skull-stripped)

Source: OpenNeuro ds002748 v1.0.5 "Resting state with closed eyes for patients with depression and healthy
participants" (Bezmaternykh, Melnikov, Savelov, Petrovskii), doi:10.18112/openneuro.ds002748.v1.0.5, licence CC0,
as kept in the GitHub repository aaronsossin/DepressionMRI_AI (sub-XX/anat/sub-XX_T1w.nii.gz).
Cite: Bezmaternykh D.D. et al., Neural Plasticity 2021, 8846097, doi:10.1155/2021/8846097.

Split: train sub-01..50; val (validation + anomaly calibration) sub-51..58; test sub-59..72 (held out: never
trained, tuned or calibrated on).
"""


def split_of(n: int) -> str:
    return next(name for name, r in SPLIT.items() if n in r)


def _git_show(repo: Path, path: str) -> bytes:
    """Read one file of the repository's HEAD (works on a bare mirror and on a normal clone)."""
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    res = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], capture_output=True, check=False)
    if res.returncode:
        raise SystemExit(f"error: {path} is not in the repository at {repo}: {res.stderr.decode().strip()}")
    return res.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path, help="clone or bare mirror of aaronsossin/DepressionMRI_AI")
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="output folder (default data_cache/ds002748)")
    a = ap.parse_args(argv)
    if not a.repo.exists():
        ap.error(f"{a.repo} does not exist; clone aaronsossin/DepressionMRI_AI first")
    for n in range(1, 73):
        dest = a.out / split_of(n) / f"sub-{n:02d}_T1w.nii.gz"
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = _git_show(a.repo, f"sub-{n:02d}/anat/sub-{n:02d}_T1w.nii.gz")
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
    (a.out / "PROVENANCE.md").write_text(PROVENANCE)
    counts = {k: len(list((a.out / k).glob("*.nii.gz"))) for k in SPLIT}
    print(f"{a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
