"""The missing-slice head: training adds it without touching the VAE, inpaint blends it in, bad options are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_medvae.cli import main
from napari_medvae.engine import inpaint, load_model
from napari_medvae.engine.model.checkpoint import load_checkpoint
from napari_medvae.engine.model.networks import SliceHeadConfig, SliceVAEConfig
from napari_medvae.engine.ops import inpaint as inp
from napari_medvae.engine.ops.inpaint import blend_weights, first_guess, slice_head_fill
from napari_medvae.engine.training.slice_head import SliceHeadTrainConfig, train_slice_head
from napari_medvae.errors import Cancelled, InputError, ModelError


@pytest.fixture(scope="module")
def sh_model(tmp_path_factory, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    out = tmp_path_factory.mktemp("shmodel") / "m"
    tc = SliceHeadTrainConfig(train=files[:1], val=files[1:], out=str(out), steps=3, batch_size=2, patch=(16, 16, 16),
                              channels=(4, 8), strides=(2,), num_res_units=1, device="cpu")
    return train_slice_head(tc)


def test_training_adds_a_slice_head_and_keeps_the_rest(sh_model, model):
    m = load_model(sh_model, device="cpu")
    assert m.net.slice_head is not None
    assert m.config.architecture["slice_head"] == {"channels": [4, 8], "strides": [2], "num_res_units": 1, "inputs": 2}
    rec = m.config.training["slice_head"]
    assert rec["steps"] == 3 and rec["history"] and "val_psnr_head" in rec["history"][-1]
    base = model.net.state_dict()
    for k, v in m.net.state_dict().items():
        if not k.startswith("slice_head."):
            assert torch.equal(v, base[k]), k  # the VAE (and the denoising head) are frozen


def test_slice_head_fill_changes_only_the_masked_slices(sh_model):
    m = load_model(sh_model, device="cpu")
    rng = np.random.default_rng(0)
    vol = rng.random((30, 28, 26)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[[10, 11, 12]] = True
    init = first_guess(vol, mask)
    out = slice_head_fill(m, init, mask)
    assert out.shape == vol.shape and np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_array_equal(out[~mask], init[~mask])
    np.testing.assert_array_equal(slice_head_fill(m, init, np.zeros(vol.shape, bool)), init)  # nothing to fill


def test_blend_weights_fit_jointly_and_drop_harmful_fills():
    rng = np.random.default_rng(1)
    first = rng.random(500)
    a, b, noise = rng.random(500), rng.random(500), rng.random(500)
    truth = first + 0.5 * (a - first) + 0.3 * (b - first)
    w = blend_weights(truth, first, [a, b])
    np.testing.assert_allclose(w, [0.5, 0.3], atol=1e-6)
    truth2 = first + 0.6 * (a - first) - 0.4 * (noise - first)  # the second fill only hurts: weight 0
    w2 = blend_weights(truth2, first, [a, noise])
    assert w2[1] == 0.0 and 0.0 < w2[0] <= 1.0
    assert blend_weights(first, first, [first, first]) == [0.0, 0.0]  # fills equal to the first guess: nothing to weigh


def test_inpaint_uses_the_slice_head_for_missing_slices_only(sh_model, read, monkeypatch):
    m = load_model(sh_model, device="cpu")
    vol, geom = read("mni_t1_healthy.nii.gz")
    calls = []
    real = inp.slice_head_fill
    monkeypatch.setattr(inp, "slice_head_fill", lambda *a, **k: calls.append(1) or real(*a, **k))
    holed = vol.copy()
    holed[[40, 41, 42]] = 0
    out = inpaint(m, holed, geom.spacing, missing_slices=[40, 41, 42], axis=0)
    assert len(calls) >= 1  # cross-validation always runs it; the real mask when its weight is > 0
    assert out.shape == vol.shape and np.isfinite(out).all()
    keep = np.ones(vol.shape[0], bool)
    keep[[40, 41, 42]] = False
    np.testing.assert_array_equal(out[keep], holed[keep].astype(np.float32))
    calls.clear()
    region = np.zeros(vol.shape, bool)
    region[40:44, 50:56, 50:56] = True
    inpaint(m, vol, geom.spacing, mask=region)
    assert calls == []  # painted regions: no slice head


@pytest.mark.parametrize("kw,msg", [
    ({"patch": (17, 16, 16)}, "patch"),
    ({"patch": (8, 16, 16)}, "patch"),
    ({"patch": (16, 16)}, "patch"),
    ({"steps": 0}, "steps"),
    ({"strides": (3,)}, "strides"),
    ({"train": []}, "no training volumes"),
    ({"runs": ()}, "runs must be"),
    ({"runs": (0,)}, "runs must be"),
    ({"runs": (9,)}, "runs must be"),
    ({"runs": (1, 8)}, "need a patch of at least 18 slices"),
    ({"single": True, "runs": (1, 3)}, "single missing slices only"),
])
def test_bad_slice_head_options_are_refused(tmp_path, head_data, kw, msg):
    files = sorted(str(p) for p in head_data.iterdir())
    opts = {"train": files, "out": str(tmp_path / "x"), "channels": (4, 8), "strides": (2,), "steps": 2, "patch": (16, 16, 16)}
    opts.update(kw)
    with pytest.raises(InputError, match=msg):
        train_slice_head(SliceHeadTrainConfig(**opts))
    assert not (tmp_path / "x.safetensors").exists()


def test_cancelled_slice_head_training_writes_nothing(tmp_path, head_data):
    files = sorted(str(p) for p in head_data.iterdir())
    tc = SliceHeadTrainConfig(train=files[:1], out=str(tmp_path / "c"), steps=50, batch_size=1, patch=(16, 16, 16),
                              channels=(4, 8), strides=(2,), device="cpu")
    n = []
    with pytest.raises(Cancelled):
        train_slice_head(tc, callback=n.append, cancel=lambda: len(n) >= 2)
    assert not (tmp_path / "c.safetensors").exists()


def test_cli_train_slice_head_refuses_to_overwrite_its_source(sh_model, capsys):
    rc = main(["train-slice-head", str(sh_model), "--data", str(sh_model.parent), "-o", str(sh_model.with_suffix(""))])
    assert rc != 0
    assert "refusing to overwrite" in capsys.readouterr().err


def test_cli_train_slice_head_writes_a_model(tmp_path, head_data):
    rc = main(["train-slice-head", "--data", str(head_data), "-o", str(tmp_path / "new"), "--steps", "2",
               "--batch-size", "1", "--patch", "16", "16", "16", "--channels", "4", "8", "--res-units", "1"])
    assert rc == 0
    assert load_model(tmp_path / "new.safetensors", device="cpu").net.slice_head is not None


def test_bad_slice_head_config_is_refused(tmp_path, sh_model):
    cfg = json.loads(sh_model.with_suffix(".json").read_text())
    for bad in ({"channels": [4, 8], "strides": [2], "colour": 1}, {"channels": [4, 8], "strides": [2], "inputs": 3}, "unet"):
        cfg["architecture"]["slice_head"] = bad
        stem = tmp_path / "bad"
        stem.with_suffix(".json").write_text(json.dumps(cfg))
        stem.with_suffix(".safetensors").write_bytes(sh_model.read_bytes())
        with pytest.raises(ModelError, match="slice_head"):
            load_checkpoint(stem)


def test_slice_head_config_round_trips():
    d = SliceHeadConfig((8, 16, 32), (1, 2), 1).to_dict()
    assert d["inputs"] == 2
    assert SliceHeadConfig.from_dict(d).to_dict() == d
    assert "slice_head" not in SliceVAEConfig().to_dict()


def _with_slice_fill(sh_model, tmp_path, value):
    from napari_medvae.engine.model.checkpoint import save_checkpoint

    cfg, state = load_checkpoint(sh_model)
    cfg.slice_fill = value
    return save_checkpoint(tmp_path / "m", cfg, state)


def test_slice_fill_head_uses_the_head_alone_without_the_vae(sh_model, read, monkeypatch, tmp_path):
    m = load_model(_with_slice_fill(sh_model, tmp_path, "head"), device="cpu")
    assert m.config.slice_fill == "head"
    vol, geom = read("mni_t1_healthy.nii.gz")
    holed = vol.copy()
    holed[[40, 41, 42]] = 0
    monkeypatch.setattr(inp, "refine", lambda *a, **k: pytest.fail("the VAE refinement ran"))
    monkeypatch.setattr(inp, "validation_mask", lambda *a, **k: pytest.fail("cross-validation ran"))
    out = inpaint(m, holed, geom.spacing, missing_slices=[40, 41, 42], axis=0)
    assert out.shape == vol.shape and np.isfinite(out).all()
    keep = np.ones(vol.shape[0], bool)
    keep[[40, 41, 42]] = False
    np.testing.assert_array_equal(out[keep], holed[keep].astype(np.float32))  # only the missing slices change
    assert holed[[40, 41, 42]].max() == 0 and out[[40, 41, 42]].max() > 0


@pytest.mark.parametrize("value, msg", [("sometimes", "slice_fill must be one of validated, head")])
def test_bad_slice_fill_is_refused_at_load(sh_model, tmp_path, value, msg):
    path = _with_slice_fill(sh_model, tmp_path, value)
    with pytest.raises(ModelError, match=msg):
        load_model(path, device="cpu")


def test_slice_fill_head_needs_a_slice_head():
    from napari_medvae.engine.model.checkpoint import ModelConfig

    cfg = ModelConfig(architecture={}).to_dict()
    cfg["slice_fill"] = "head"
    with pytest.raises(ModelError, match="needs architecture.slice_head"):
        ModelConfig.from_dict(cfg, "test")


@pytest.fixture(scope="module")
def single_model(tmp_path_factory, head_data, sh_model):
    files = sorted(str(p) for p in head_data.iterdir())
    out = tmp_path_factory.mktemp("single") / "s"
    tc = SliceHeadTrainConfig(train=files[:1], val=files[1:], out=str(out), model=str(sh_model), steps=2, batch_size=1,
                              patch=(16, 16, 16), channels=(4, 8), strides=(2,), num_res_units=1, device="cpu",
                              runs=(1,), single=True)
    return train_slice_head(tc)


def test_single_slice_head_starts_from_the_general_head_and_keeps_it(single_model, sh_model):
    m, base = load_model(single_model, device="cpu"), load_model(sh_model, device="cpu")
    assert m.net.slice_head_single is not None
    assert m.config.architecture["slice_head_single"] == m.config.architecture["slice_head"]
    rec = m.config.training["slice_head_single"]
    assert rec["initialised_from"] == "slice_head" and rec["runs"] == [1] and rec["single"] is True
    assert "val_psnr_run1_head" in rec["history"][-1] and "val_psnr_run3_head" in rec["history"][-1]
    assert m.config.training["slice_head"] == base.config.training["slice_head"]
    before = base.net.state_dict()
    for k, v in m.net.state_dict().items():
        if not k.startswith("slice_head_single."):
            assert torch.equal(v, before[k]), k  # everything else, the general head included, is frozen
    # it started from the general head's weights: a few steps at a small learning rate keep it close to them
    diffs = [float((v - before["slice_head." + k[len("slice_head_single."):]]).abs().max())
             for k, v in m.net.state_dict().items() if k.startswith("slice_head_single.")]
    assert max(diffs) < 0.05
    from napari_medvae.engine.model.card import _head_rows

    rows = dict(_head_rows(m.config.architecture, m.config.training, "head"))
    assert "single-slice head" in rows and "started from the missing-slice head" in rows["single-slice head"]
    assert "single-slice head" in rows["missing slices are filled by"]


def test_single_slices_go_to_the_single_head_and_runs_to_the_general_one(single_model, sh_model, monkeypatch):
    calls = []
    real = inp._run_slice_head
    monkeypatch.setattr(inp, "_run_slice_head", lambda m, key, i, k, rows, o: calls.append((key, list(rows)))
                        or real(m, key, i, k, rows, o))
    rng = np.random.default_rng(0)
    vol = rng.random((40, 24, 24)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[[5, 12, 13, 14, 30]] = True
    init = first_guess(vol, mask)
    out = slice_head_fill(load_model(single_model, device="cpu"), init, mask)
    assert calls == [("slice_head_single", [5, 30]), ("slice_head", [12, 13, 14])]
    np.testing.assert_array_equal(out[~mask], init[~mask])
    assert np.isfinite(out).all()
    calls.clear()
    slice_head_fill(load_model(sh_model, device="cpu"), init, mask)  # no single-slice head: the general one does all
    assert calls == [("slice_head", [5, 12, 13, 14, 30])]
    calls.clear()
    gap = np.zeros(vol.shape, bool)
    gap[[12, 13]] = True
    slice_head_fill(load_model(single_model, device="cpu"), first_guess(vol, gap), gap)
    assert calls == [("slice_head", [12, 13])]  # no single slice: the single-slice head does not run


def test_cli_trains_the_single_slice_head(tmp_path, head_data, sh_model, capsys):
    opts = ["--data", str(head_data), "--steps", "1", "--batch-size", "1", "--patch", "16", "16", "16", "--channels",
            "4", "8", "--res-units", "1", "--single"]
    assert main(["train-slice-head", str(sh_model), "-o", str(tmp_path / "s"), *opts]) == 0
    assert load_model(tmp_path / "s.safetensors", device="cpu").net.slice_head_single is not None
    assert main(["train-slice-head", str(sh_model), "-o", str(tmp_path / "t"), *opts, "--runs", "1", "3"]) != 0
    assert "single missing slices only" in capsys.readouterr().err
    assert not (tmp_path / "t.safetensors").exists()


def test_a_head_of_another_kind_is_not_a_starting_point(sh_model):
    """Weights are copied only from a head with the same inputs: the healing head (1 input) cannot seed a slice head."""
    from napari_medvae.engine.model.networks import SingleSliceHeadConfig
    from napari_medvae.engine.training.heads import head_start

    m = load_model(sh_model, device="cpu")
    heal = m.config.architecture["heal_head"]
    wanted = SingleSliceHeadConfig.from_dict({k: v for k, v in heal.items() if k != "inputs"}).to_dict()
    assert head_start(m, "slice_head_single", wanted, SingleSliceHeadConfig, init_from="heal_head") is None
    own = SingleSliceHeadConfig.from_dict(m.config.architecture["slice_head"]).to_dict()
    assert head_start(m, "slice_head_single", own, SingleSliceHeadConfig, init_from="slice_head") == "slice_head"
