"""``medvae`` start-up: importing the CLI, ``--help`` and refusals of bad input import no torch (it takes seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "napari_medvae.engine")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _heavy_after(code: str) -> list[str]:
    res = _run(code + f"\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    assert res.returncode == 0, res.stderr[-2000:]
    return eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list


def test_importing_the_cli_does_not_import_torch():
    assert _heavy_after("import napari_medvae.cli") == []


@pytest.mark.parametrize("argv, msg", [
    (["--help"], None),
    (["reconstruct", "missing.nii.gz", "-o", "OUT/o.nii.gz"], "no such file"),
    (["inpaint", "sample_data/mni_t1_missing.nii.gz", "-o", "OUT/o.nii.gz", "--missing-slices", "4 to x"],
     "--missing-slices"),
    (["inpaint", "sample_data/mni_t1_missing.nii.gz", "-o", "OUT/o.nii.gz", "--missing-slices", "5,500",
      "--axis", "axial"], "out of range"),
    (["anomaly", "sample_data/mni_t1_lesion.nii.gz", "-o", "OUT/o.nii.gz", "--axis", "9"], "--axis"),
])
def test_refusals_and_help_do_not_import_torch(tmp_path, argv, msg):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    argv = [a.replace("sample_data", str(root / "sample_data")).replace("OUT", str(tmp_path)) for a in argv]
    code = ("import contextlib, io, sys\n"
            "from napari_medvae.cli import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        rc = main({argv!r})\n"
            "    except SystemExit as e:\n"
            "        rc = e.code\n"
            "print(repr(err.getvalue()))\n"
            "print(rc)")
    res = _run(code + f"\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    assert res.returncode == 0, res.stderr[-2000:]
    err, rc, heavy = res.stdout.strip().splitlines()[-3:]
    assert heavy == "[]", f"{argv} imported {heavy}"
    if msg is None:
        assert rc == "0"
    else:
        assert rc == "2" and msg in eval(err)  # noqa: S307 - our own printed repr
    assert list(tmp_path.iterdir()) == []
