"""The painted-region head: training adds it without touching the rest, inpaint blends it in, bad options are refused."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from napari_medvae.cli import main
from napari_medvae.engine import inpaint, load_model
from napari_medvae.engine.checkpoint import load_checkpoint
from napari_medvae.engine.inpaint import first_guess, region_head_fill
from napari_medvae.engine.networks import RegionHeadConfig, SliceVAEConfig
from napari_medvae.engine.train_region_head import (
    RegionHeadTrainConfig,
    _sample,
    random_region,
    train_region_head,
    val_regions,
)
from napari_medvae.errors import Cancelled, InputError, ModelError

inp = importlib.import_module("napari_medvae.engine.inpaint")


@pytest.fixture(scope="module")
def rh_model(tmp_path_factory, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    out = tmp_path_factory.mktemp("rhmodel") / "m"
    tc = RegionHeadTrainConfig(train=files[:1], val=files[1:], out=str(out), steps=3, batch_size=2, patch=(16, 16, 16),
                               channels=(4, 8), strides=(2,), num_res_units=1, device="cpu")
    return train_region_head(tc)


def test_training_adds_a_region_head_and_keeps_the_rest(rh_model, model):
    m = load_model(rh_model, device="cpu")
    assert m.net.region_head is not None
    assert m.config.architecture["region_head"] == {"channels": [4, 8], "strides": [2], "num_res_units": 1, "inputs": 2}
    rec = m.config.training["region_head"]
    assert rec["steps"] == 3 and rec["history"] and "val_psnr_head" in rec["history"][-1]
    assert rec["history"][-1]["val_psnr_biharmonic"] > 10
    base = model.net.state_dict()
    for k, v in m.net.state_dict().items():
        if not k.startswith("region_head."):
            assert torch.equal(v, base[k]), k  # the VAE and the other heads are frozen


@pytest.mark.parametrize("stride", [1, 2])
def test_region_head_fill_changes_only_the_mask(rh_model, stride):
    m = load_model(rh_model, device="cpu")
    rng = np.random.default_rng(0)
    vol = rng.random((30, 28, 26)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[10:14, 8:13, 9:12] = True
    init = first_guess(vol, mask)
    out = region_head_fill(m, init, mask, stride)
    assert out.shape == vol.shape and np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_array_equal(out[~mask], init[~mask])
    assert not np.array_equal(out[mask], init[mask])  # the (untrained, random-ish) head does change the fill
    np.testing.assert_array_equal(region_head_fill(m, init, np.zeros(vol.shape, bool)), init)  # nothing to fill


def test_inpaint_uses_the_region_head_for_painted_regions_only(rh_model, read, monkeypatch):
    m = load_model(rh_model, device="cpu")
    vol, geom = read("mni_t1_healthy.nii.gz")
    calls = []
    real = inp.region_head_fill
    monkeypatch.setattr(inp, "region_head_fill", lambda *a, **k: calls.append(1) or real(*a, **k))
    region = np.zeros(vol.shape, bool)
    region[40:44, 50:56, 50:56] = True
    out = inpaint(m, vol, geom.spacing, mask=region)
    assert len(calls) >= 1  # cross-validation always runs it; the real mask when its weight is > 0
    assert out.shape == vol.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out[~region], vol[~region].astype(np.float32))
    calls.clear()
    holed = vol.copy()
    holed[[40, 41, 42]] = 0
    inpaint(m, holed, geom.spacing, missing_slices=[40, 41, 42], axis=0)
    assert calls == []  # missing slices: no region head


def test_training_regions_are_seeded_and_centred():
    shape = (16, 24, 24)
    a = random_region(shape, (8, 12, 12), np.random.default_rng(5))
    b = random_region(shape, (8, 12, 12), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.any() and a.sum() < a.size // 4
    vol = np.zeros((24, 32, 32), np.float32)
    vol[4:20, 6:26, 6:26] = 0.5
    x, y, w = _sample([vol], (16, 16, 16), np.random.default_rng(2))
    assert x.shape == (2, 16, 16, 16) and y.shape == w.shape == (1, 16, 16, 16)
    np.testing.assert_array_equal(w[0] > 0, x[1] > 0)  # the loss counts exactly the masked voxels
    m = val_regions(np.pad(vol, 8), np.random.default_rng(0))
    assert m.any() and not (m & (np.pad(vol, 8) == 0)).any()  # validation regions lie in tissue


@pytest.mark.parametrize("kw,msg", [
    ({"patch": (17, 16, 16)}, "patch"),
    ({"patch": (8, 16, 16)}, "patch"),
    ({"patch": (16, 16)}, "patch"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"strides": (3,)}, "strides"),
    ({"train": []}, "no training volumes"),
])
def test_bad_region_head_options_are_refused(tmp_path, head_data, kw, msg):
    files = sorted(str(p) for p in head_data.iterdir())
    opts = {"train": files, "out": str(tmp_path / "x"), "channels": (4, 8), "strides": (2,), "steps": 2, "patch": (16, 16, 16)}
    opts.update(kw)
    with pytest.raises(InputError, match=msg):
        train_region_head(RegionHeadTrainConfig(**opts))
    assert not (tmp_path / "x.safetensors").exists()


def test_cancelled_region_head_training_writes_nothing(tmp_path, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    tc = RegionHeadTrainConfig(train=files[:1], out=str(tmp_path / "c"), steps=50, batch_size=1, patch=(16, 16, 16),
                               channels=(4, 8), strides=(2,), device="cpu")
    n = []
    with pytest.raises(Cancelled):
        train_region_head(tc, callback=n.append, cancel=lambda: len(n) >= 2)
    assert not (tmp_path / "c.safetensors").exists()


def test_cli_train_region_head(rh_model, tmp_path, head_data, capsys):
    rc = main(["train-region-head", str(rh_model), "--data", str(rh_model.parent), "-o", str(rh_model.with_suffix(""))])
    assert rc != 0
    assert "refusing to overwrite" in capsys.readouterr().err
    rc = main(["train-region-head", str(rh_model), "--data", str(head_data), "-o", str(tmp_path / "new"), "--steps", "2",
               "--batch-size", "1", "--patch", "16", "16", "16", "--channels", "4", "8", "--res-units", "1"])
    assert rc == 0
    m = load_model(tmp_path / "new.safetensors", device="cpu")
    assert m.net.region_head is not None
    assert m.config.training["region_head"]["continued"][-1]["steps"] == 2  # same architecture: fine-tuned


def test_bad_region_head_config_is_refused(tmp_path, rh_model):
    cfg = json.loads(rh_model.with_suffix(".json").read_text())
    for bad in ({"channels": [4, 8], "strides": [2], "colour": 1}, {"channels": [4, 8], "strides": [2], "inputs": 1}, "unet"):
        cfg["architecture"]["region_head"] = bad
        stem = tmp_path / "bad"
        stem.with_suffix(".json").write_text(json.dumps(cfg))
        stem.with_suffix(".safetensors").write_bytes(rh_model.read_bytes())
        with pytest.raises(ModelError, match="region_head"):
            load_checkpoint(stem)


def test_region_head_config_round_trips():
    d = RegionHeadConfig((8, 16, 32), (1, 2), 1).to_dict()
    assert d["inputs"] == 2
    assert RegionHeadConfig.from_dict(d).to_dict() == d
    assert "region_head" not in SliceVAEConfig().to_dict()
