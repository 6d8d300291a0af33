"""Shared fixtures: the shipped model and the sample volumes (2 mm, MNI152-derived, held out from training).

Most tests exercise the tool's mechanics on the 2 mm MNI152 sample volumes; they run with the shipped 2 mm model
``synthetic_mni`` (set as the session's default through ``MEDVAE_MODEL``, which subprocesses inherit), which runs
on those volumes at their own grid. Tests of the shipped default itself (``real_t1``, 1 mm) on the real sample
volumes use the ``default_model`` fixture, which clears that variable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
os.environ["MEDVAE_MODEL"] = "synthetic_mni"  # see the module docstring


@pytest.fixture
def default_model(monkeypatch) -> str:
    """The shipped default model: ``MEDVAE_MODEL`` cleared for this test (and its subprocesses)."""
    monkeypatch.delenv("MEDVAE_MODEL", raising=False)
    from napari_medvae.engine.model.loader import DEFAULT_MODEL

    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def model():
    from napari_medvae.engine import load_model

    return load_model(None, device="cpu")


@pytest.fixture(scope="session")
def read():
    from napari_medvae.io import read_volume

    cache: dict = {}

    def _read(name: str):
        if name not in cache:
            cache[name] = read_volume(SAMPLE / name)
        arr, geo = cache[name]
        return arr.copy(), geo

    return _read


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a[mask].astype(np.float64) - b[mask].astype(np.float64)) ** 2))
    return 10 * np.log10(peak**2 / max(mse, 1e-12))


@pytest.fixture(scope="session")
def head_data(tmp_path_factory, read):
    """Two small healthy training volumes (2 mm) in a folder, for the 3D heads' trainers."""
    from napari_medvae.io import Geometry, write_volume

    d = tmp_path_factory.mktemp("head")
    vol, _ = read("mni_t1_healthy.nii.gz")
    vol = vol[30:62, 16:96, 16:96]
    for i in range(2):
        write_volume(d / f"v{i}.nii.gz", np.roll(vol, i * 4, axis=2), Geometry.identity((2.0, 2.0, 2.0)))
    return d


@pytest.fixture
def slow_forward(monkeypatch):
    """Every batch of slices takes at least 0.3 s more: jobs last several seconds, still running when a test acts."""
    import napari_medvae.engine.ops.runner as runner

    real = runner._forward

    def forward(*args, **kw):
        time.sleep(0.3)
        return real(*args, **kw)

    monkeypatch.setattr(runner, "_forward", forward)
