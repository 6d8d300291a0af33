"""Training: a tiny run from scratch writes a loadable, calibrated model; resume continues it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_medvae.engine import load_model
from napari_medvae.engine.training.vae import TrainConfig, corrupt, train
from napari_medvae.io import Geometry, write_volume


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, read):
    d = tmp_path_factory.mktemp("train")
    vol, _ = read("mni_t1_healthy.nii.gz")
    vol = vol[20:44, 20:84, 20:84]
    for i in range(3):
        write_volume(d / f"v{i}.nii.gz", np.roll(vol, i * 3, axis=2), Geometry.identity((2.0, 2.0, 2.0)))
    return d


def test_tiny_training_run_writes_calibrated_model_and_resumes(tmp_path, tiny_data):
    files = sorted(str(p) for p in tiny_data.iterdir())
    tc = TrainConfig(train=files[:2], val=files[2:], out=str(tmp_path / "m"), steps=4, batch_size=2, crop=32,
                     val_every=2, channels=(8, 16, 16), latent_channels=4, device="cpu")
    seen = []
    path = train(tc, callback=seen.append)
    m = load_model(path, device="cpu")
    assert m.config.anomaly.threshold > 0
    assert m.config.training["steps"] == 4 and [s["step"] for s in seen] == [1, 2, 3, 4]
    state = json.loads((tmp_path / "m.trainstate.json").read_text())
    assert state["step"] == 4
    tc.steps, tc.resume = 6, True
    seen.clear()
    train(tc, callback=seen.append)
    assert [s["step"] for s in seen] == [5, 6]


def test_training_can_be_stopped_and_still_saves(tmp_path, tiny_data):
    files = sorted(str(p) for p in tiny_data.iterdir())
    tc = TrainConfig(train=files, out=str(tmp_path / "s"), steps=50, batch_size=2, crop=32, val_every=10,
                     channels=(8, 16, 16), latent_channels=4, device="cpu")
    n = []
    path = train(tc, callback=n.append, cancel=lambda: len(n) >= 3)
    m = load_model(path, device="cpu")
    assert m.config.training["stopped_early"] and m.config.training["steps"] == 3


def test_corruption_masks_are_zeroed():
    rng = np.random.default_rng(1)
    clean = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32) + 0.2
    outside = np.zeros_like(clean, dtype=bool)
    for _ in range(30):
        img, mask, w = corrupt(clean, outside, rng)
        assert (img[mask] == 0).all() and w.shape == (32, 32) and w.min() >= 1
