"""The npe2 manifest: every python_name imports, every contribution points at a declared command,
npe2 validates it, and nothing napari imports at start-up pulls in torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = "napari-medvae"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution(PLUGIN)


def test_every_python_name_imports(manifest):
    for cmd in manifest.contributions.commands:
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.python_name


def test_contributions_point_at_declared_commands(manifest):
    c = manifest.contributions
    declared = {cmd.id for cmd in c.commands}
    used = ([r.command for r in c.readers] + [w.command for w in c.writers] + [w.command for w in c.widgets]
            + [s.command for s in c.sample_data] + [m.command for items in (c.menus or {}).values() for m in items])
    assert set(used) <= declared, set(used) - declared
    assert {w.display_name for w in c.widgets} == {"Model", "Reconstruct & Denoise", "Inpaint", "Anomaly review",
                                                   "Generate"}
    assert {s.key for s in c.sample_data} >= {"real_brain", "real_head", "healthy", "lesion", "missing", "noisy"}
    patterns = {p for r in c.readers for p in r.filename_patterns}
    assert patterns >= {"*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd"}
    assert all(r.accepts_directories for r in c.readers)  # DICOM series folders
    assert {w.layer_types[0] for w in c.writers} == {"image", "labels"}


def test_manifest_is_the_top_level_file_shipped_in_the_package():
    link = ROOT / "src" / "napari_medvae" / "napari.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "napari.yaml").resolve()


def test_npe2_validate_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    cmd = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    res = subprocess.run([*cmd, "validate", PLUGIN, "--imports"], capture_output=True, timeout=300,
                         encoding="utf-8", errors="replace")  # npe2 prints non-ASCII marks; CI may have a C locale
    assert res.returncode == 0, res.stdout + res.stderr


def test_modules_napari_imports_do_not_import_torch(manifest):
    modules = sorted({cmd.python_name.split(":")[0] for cmd in manifest.contributions.commands})
    code = ("import sys\n"
            f"for m in {modules!r}:\n"
            "    __import__(m)\n"
            "heavy = [m for m in ('torch', 'monai', 'napari_medvae.engine') if m in sys.modules]\n"
            "print(heavy)\n"
            "sys.exit(1 if heavy else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"start-up imports pull in {res.stdout.strip()} {res.stderr[-2000:]}"
