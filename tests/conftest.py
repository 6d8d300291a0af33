"""Shared fixtures: the shipped model and the sample volumes (2 mm, MNI152-derived, held out from training)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


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
