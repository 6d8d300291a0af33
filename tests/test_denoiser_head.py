"""The denoising head: training adds it without touching the VAE, denoise uses it, bad options are refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_medvae.cli import main
from napari_medvae.engine import denoise, load_model
from napari_medvae.engine.model.checkpoint import load_checkpoint
from napari_medvae.engine.model.loader import from_config
from napari_medvae.engine.model.networks import DenoiserConfig, SliceVAEConfig
from napari_medvae.engine.ops.denoise import head_correction
from napari_medvae.engine.training.denoiser import DenoiserTrainConfig, train_denoiser
from napari_medvae.errors import Cancelled, InputError, ModelError


@pytest.fixture(scope="module")
def head_model(tmp_path_factory, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    out = tmp_path_factory.mktemp("headmodel") / "m"
    tc = DenoiserTrainConfig(train=files[:1], val=files[1:], out=str(out), steps=3, patch=16, copies=1,
                             channels=(4, 8), strides=(2,), num_res_units=1, device="cpu")
    return train_denoiser(tc)


def test_training_adds_a_head_and_keeps_the_vae(head_model, model):
    m = load_model(head_model, device="cpu")
    assert m.net.denoiser is not None
    assert m.config.architecture["denoiser"] == {"channels": [4, 8], "strides": [2], "num_res_units": 1, "inputs": 3}
    rec = m.config.training["denoiser"]
    assert rec["steps"] == 3 and rec["history"] and "val_psnr_head" in rec["history"][-1]
    base = model.net.state_dict()
    for k, v in m.net.state_dict().items():
        if not k.startswith("denoiser."):
            assert torch.equal(v, base[k]), k  # the VAE is frozen


def test_denoise_runs_the_head_whole_and_tiled_alike(head_model, read):
    m = load_model(head_model, device="cpu")
    vol, geom = read("mni_t1_noisy.nii.gz")
    out = denoise(m, vol, geom.spacing)
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isfinite(out).all()
    noisy = np.random.default_rng(0).random((20, 40, 36)).astype(np.float32)
    est = noisy * 0.5
    whole = head_correction(m, noisy, est, 0.05, 1)
    tiled = head_correction(m, noisy, est, 0.05, 1, max_voxels=1000)
    assert whole.shape == est.shape
    # both are valid estimates; tiling blends overlapping windows, so they agree closely, not bit for bit
    assert np.abs(whole - tiled).mean() < 0.05


def test_head_correction_without_a_head_returns_the_estimate(model):
    arch = {k: v for k, v in model.config.architecture.items() if k != "denoiser"}
    cfg = dataclasses.replace(model.config, architecture=arch)
    bare = from_config(cfg, {k: v for k, v in model.net.state_dict().items() if not k.startswith("denoiser.")}, "cpu")
    assert bare.net.denoiser is None
    est = np.ones((8, 16, 16), np.float32)
    assert head_correction(bare, est, est, 0.1, 1) is est


def test_a_head_of_the_same_architecture_is_trained_further(tmp_path, head_model, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    tc = DenoiserTrainConfig(train=files[:1], out=str(tmp_path / "again"), model=str(head_model), steps=2, patch=16,
                             copies=1, channels=(4, 8), strides=(2,), num_res_units=1, device="cpu")
    m = load_model(train_denoiser(tc), device="cpu")
    rec = m.config.training["denoiser"]
    first = load_model(head_model, device="cpu").config.training["denoiser"]
    assert rec["steps"] == first["steps"] and rec["history"] == first["history"]  # the first training stays recorded
    assert rec["continued"][-1]["fine_tuned"] is True and rec["continued"][-1]["steps"] == 2


def test_head_runs_on_interleaved_sub_volumes(head_model):
    m = load_model(head_model, device="cpu")
    noisy = np.random.default_rng(1).random((24, 32, 32)).astype(np.float32)
    out = head_correction(m, noisy, noisy.copy(), 0.05, 2)
    assert out.shape == noisy.shape and np.isfinite(out).all()


@pytest.mark.parametrize("kw, msg", [
    ({"patch": 15}, "multiple of 2"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"noise_range": (0.2, 0.1)}, "noise range"),
    ({"strides": (3,)}, "strides"),
    ({"train": []}, "no training volumes"),
])
def test_bad_training_options_are_refused(tmp_path, head_data, kw, msg):
    files = sorted(str(p) for p in head_data.iterdir())
    opts = {"train": files, "out": str(tmp_path / "x"), "channels": (4, 8), "strides": (2,), "steps": 2, "patch": 16}
    opts.update(kw)
    with pytest.raises(InputError, match=msg):
        train_denoiser(DenoiserTrainConfig(**opts))
    assert not (tmp_path / "x.safetensors").exists()


def test_cancelled_training_writes_nothing(tmp_path, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    tc = DenoiserTrainConfig(train=files[:1], out=str(tmp_path / "c"), steps=50, patch=16, copies=1,
                             channels=(4, 8), strides=(2,), device="cpu")
    n = []
    with pytest.raises(Cancelled):
        train_denoiser(tc, callback=n.append, cancel=lambda: len(n) >= 2)
    assert not (tmp_path / "c.safetensors").exists()


def test_cli_train_denoiser_refuses_to_overwrite_its_source(tmp_path, head_model, capsys):
    rc = main(["train-denoiser", str(head_model), "--data", str(head_model.parent), "-o", str(head_model.with_suffix(""))])
    assert rc != 0
    assert "refusing to overwrite" in capsys.readouterr().err


def test_bad_denoiser_config_is_refused(tmp_path, head_model):
    cfg = json.loads(head_model.with_suffix(".json").read_text())
    for bad in ({"channels": [4, 8], "strides": [2], "colour": 1}, {"channels": [4], "strides": []},
                {"channels": [4, 8], "strides": [2], "inputs": 2}, "unet"):
        cfg["architecture"]["denoiser"] = bad
        stem = tmp_path / "bad"
        stem.with_suffix(".json").write_text(json.dumps(cfg))
        stem.with_suffix(".safetensors").write_bytes(head_model.read_bytes())
        with pytest.raises(ModelError, match="denoiser"):
            load_checkpoint(stem)


def test_denoiser_config_round_trips():
    d = DenoiserConfig((8, 16, 32), (1, 2), 1).to_dict()
    assert DenoiserConfig.from_dict(d).to_dict() == d
    assert DenoiserConfig.from_dict(d).multiple == 2
    assert "denoiser" not in SliceVAEConfig().to_dict()


def test_cli_train_denoiser_refuses_to_overwrite_the_shipped_model(head_data, capsys):
    from napari_medvae.engine.model.loader import default_model_path

    rc = main(["train-denoiser", "--data", str(head_data), "-o", str(default_model_path().with_suffix(""))])
    assert rc != 0
    assert "refusing to overwrite" in capsys.readouterr().err
