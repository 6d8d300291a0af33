"""The wheel carries what napari and the CLI need at run time: manifest, default model, sample data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_manifest_model_and_samples(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                   check=True, timeout=300)
    wheel = next(tmp_path.glob("napari_medvae-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("napari_medvae/napari.yaml", "napari_medvae/models/synthetic_mni.safetensors",
                 "napari_medvae/models/synthetic_mni.json", "napari_medvae/models/synthetic_mni.provenance.json",
                 "napari_medvae/models/real_t1.safetensors",
                 "napari_medvae/models/real_t1.json", "napari_medvae/models/real_t1.provenance.json",
                 "napari_medvae/sample_data/mni_t1_healthy.nii.gz",
                 "napari_medvae/sample_data/real_t1_ds002748_sub-51_slab.nii.gz",  # medvae demo's input
                 "napari_medvae/sample_data/real_t1_head_ds011_sub-01_2mm.nii.gz",
                 "napari_medvae/sample_data/README.md"):
        assert need in names, need
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    assert "napari_medvae:napari.yaml" in text and "medvae = napari_medvae.cli:main" in text
    manifest = zipfile.ZipFile(wheel).read("napari_medvae/napari.yaml").decode()
    assert manifest == (ROOT / "napari.yaml").read_text()


def test_engine_io_cli_do_not_import_qt_or_napari():
    code = (
        "import sys, napari_medvae.engine, napari_medvae.io, napari_medvae.cli, napari_medvae.demo;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('napari','qtpy','PyQt5','PyQt6','PySide2','PySide6','magicgui','superqt')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_help_does_not_import_torch():
    code = "import sys; from napari_medvae.cli import build_parser; build_parser(); sys.exit('torch' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
