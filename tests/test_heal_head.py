"""The healing head: training adds it without touching the VAE and calibrates the "healed" anomaly score;
anomaly maps use it; bad options and configs are refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_medvae.cli import main
from napari_medvae.engine import anomaly, load_model
from napari_medvae.engine.model.checkpoint import AnomalySettings, load_checkpoint
from napari_medvae.engine.model.loader import from_config
from napari_medvae.engine.model.networks import HealHeadConfig, SliceVAEConfig
from napari_medvae.engine.ops import anomaly as anom
from napari_medvae.engine.ops.anomaly import final_score, heal, healed_score
from napari_medvae.engine.training import heal_head as thh
from napari_medvae.engine.training.calibrate import calibrate
from napari_medvae.engine.training.heal_head import (
    HealHeadTrainConfig,
    blob_weights,
    corrupt,
    mimic_factor,
    random_contrast,
    train_heal_head,
    white_matter_centres,
)
from napari_medvae.errors import Cancelled, InputError, ModelError


def _opts(head_data, out, **kw) -> dict:
    files = sorted(str(p) for p in head_data.iterdir())
    opts = {"train": files[:1], "val": files[1:], "out": str(out), "steps": 3, "batch_size": 2, "patch": (16, 16, 16),
            "channels": (4, 8), "strides": (2,), "num_res_units": 1, "device": "cpu"}
    opts.update(kw)
    return opts


@pytest.fixture(scope="module")
def hh_model(tmp_path_factory, head_data):
    return train_heal_head(HealHeadTrainConfig(**_opts(head_data, tmp_path_factory.mktemp("hhmodel") / "m")))


def test_training_adds_a_heal_head_calibrates_and_keeps_the_rest(hh_model, model):
    m = load_model(hh_model, device="cpu")
    assert m.net.heal_head is not None
    assert m.config.architecture["heal_head"] == {"channels": [4, 8], "strides": [2], "num_res_units": 1, "inputs": 1}
    rec = m.config.training["heal_head"]
    assert rec["steps"] == 3 and rec["history"] and "val_psnr_head" in rec["history"][-1]
    a = m.config.anomaly
    assert a.score == "heal" and a.heal_scale > 0 and a.threshold > 0
    base = model.net.state_dict()
    for k, v in m.net.state_dict().items():
        if not k.startswith("heal_head."):
            assert torch.equal(v, base[k]), k  # the VAE and the other heads are frozen


def test_fine_tuning_keeps_the_first_record(hh_model, tmp_path, head_data):
    out = train_heal_head(HealHeadTrainConfig(**_opts(head_data, tmp_path / "ft", model=str(hh_model), steps=2,
                                                      seed=5, contrast_prob=0.0)))
    rec = load_model(out, device="cpu").config.training["heal_head"]
    assert rec["steps"] == 3 and rec["fine_tuned"] is False and rec["contrast_prob"] == 0.5  # the default
    assert [(e["steps"], e["fine_tuned"]) for e in rec["continued"]] == [(2, True)]
    entry = rec["continued"][0]
    assert entry["seed"] == 5 and entry["contrast_prob"] == 0.0  # options that differ from the first run are kept
    assert "patch" not in entry and "channels" not in entry  # the same as the first run's


def test_heal_keeps_the_shape_and_needs_a_head(hh_model):
    m = load_model(hh_model, device="cpu")
    x = np.random.default_rng(0).random((20, 30, 26)).astype(np.float32)
    out = heal(m, x)
    assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()
    cfg = m.config
    cfg.architecture = {k: v for k, v in cfg.architecture.items() if k != "heal_head"}
    cfg.anomaly = dataclasses.replace(cfg.anomaly, score="combined")
    plain = from_config(cfg, {k: v for k, v in m.net.state_dict().items() if not k.startswith("heal_head.")}, device="cpu")
    with pytest.raises(InputError, match="no healing head"):
        heal(plain, x)
    with pytest.raises(InputError, match="healing head"):
        calibrate(plain, [(x, 1)], 0.999, score="healed")
    with pytest.raises(InputError, match="healing head"):
        calibrate(plain, [(x, 1)], 0.999, score="heal")


def test_anomaly_uses_the_heal_head(hh_model, read, monkeypatch):
    m = load_model(hh_model, device="cpu")
    vol, geom = read("mni_t1_lesion.nii.gz")
    calls = []
    real = anom.heal
    monkeypatch.setattr(anom, "heal", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = anomaly(m, vol, geom.spacing)
    assert calls == [1]
    assert res.heatmap.shape == vol.shape and np.isfinite(res.heatmap).all() and (res.heatmap >= 0).all()


def test_healed_score_needs_either_residual_and_reduces_to_the_vae_score():
    settings = AnomalySettings(score="healed", skip_scale=2.0, latent_scale=4.0, heal_scale=0.5)
    skip = np.array([0.0, 2.0, 2.0, 4.0], np.float32)
    latent = np.array([0.0, 4.0, 4.0, 8.0], np.float32)
    vae = final_score(skip, latent, None, settings)
    np.testing.assert_allclose(vae, [0, 1, 1, 2])
    h = np.array([0.0, 0.0, 1.0, 0.5], np.float32)
    both = final_score(skip, latent, h, settings)
    np.testing.assert_allclose(both, healed_score(vae, h, settings))
    assert both[0] == 0.0
    assert both[2] > both[1]  # the healing residual raises the score where the VAE's is the same
    assert both[3] >= both[1]
    np.testing.assert_array_equal(final_score(skip, None, None, settings), skip)  # "residual" score


def test_small_blobs_weigh_more_in_the_loss():
    blobs = np.zeros((24, 24, 24), bool)
    blobs[2:4, 2:4, 2:4] = True  # 8 voxels: the most weight (capped at 3x)
    blobs[8:20, 8:20, 8:20] = True  # 1728 voxels, larger than the reference: the base weight 4
    blobs[2:7, 12:17, 2:7] = True  # 125 voxels: (500 / 125)^(1/3) = 1.59x
    w = blob_weights(blobs)
    assert w[0, 0, 0] == 1.0 and w[3, 3, 3] == 12.0 and w[10, 10, 10] == 4.0
    np.testing.assert_allclose(w[4, 14, 4], 4.0 * 4.0 ** (1 / 3), rtol=1e-6)
    np.testing.assert_array_equal(blob_weights(np.zeros((4, 4, 4), bool)), np.ones((4, 4, 4), np.float32))


def test_corrupt_changes_only_signal_and_is_seeded():
    rng = np.random.default_rng(3)
    clean = np.zeros((24, 32, 32), np.float32)
    clean[4:20, 6:26, 6:26] = rng.uniform(0.3, 1.0, (16, 20, 20))
    x1, b1 = corrupt(clean, np.random.default_rng(7), blob_prob=1.0)
    x2, b2 = corrupt(clean, np.random.default_rng(7), blob_prob=1.0)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(b1, b2)
    assert b1.any() and not (x1 == clean).all()
    np.testing.assert_array_equal(x1[clean <= thh.SIGNAL], clean[clean <= thh.SIGNAL])  # background untouched
    x0, b0 = corrupt(clean, rng, blob_prob=0.0, coarse_prob=0.0)
    np.testing.assert_array_equal(x0, clean)
    assert not b0.any()


def test_random_contrast_keeps_background_and_can_swap_tissues():
    x = np.array([0.0, 0.3, 0.6, 0.9, 1.1, 1.5], np.float32)  # background, "fluid", "grey", "white", bright
    outs = [random_contrast(x, np.random.default_rng(s)) for s in range(200)]
    for y in outs:
        assert y.dtype == np.float32 and y[0] == 0.0
        assert np.isclose(y[1:].max(), 1.0) and (y[1:] >= 0.05 - 1e-6).all()  # tissue stays signal, brightest at 1
        assert y[5] == y[4]  # above the last knot: its level
    # the order of fluid, grey and white matter changes, T2-like (fluid brightest, white darkest) among them
    orders = {tuple(np.argsort(y[1:4])) for y in outs}
    assert len(orders) == 6 and (2, 1, 0) in orders
    np.testing.assert_array_equal(random_contrast(x, np.random.default_rng(5)), random_contrast(x, np.random.default_rng(5)))


def test_contrast_augmentation_trains(tmp_path, head_data):
    out = train_heal_head(HealHeadTrainConfig(**_opts(head_data, tmp_path / "ca", steps=2, contrast_prob=1.0)))
    assert load_model(out, device="cpu").config.training["heal_head"]["contrast_prob"] == 1.0


def test_mimic_factor_brings_a_blob_to_another_tissue_level():
    clean = np.zeros((4, 4, 4), np.float32)
    clean[0] = 0.4  # "white matter"
    clean[1] = 0.7  # "grey matter"
    clean[2] = 0.45  # nearly the same as white matter: no blob
    tissue = np.argwhere(clean > 0.2)
    factors = {}
    for s in range(60):
        t = tissue[np.random.default_rng(s).integers(len(tissue))]
        factors[int(t[0])] = mimic_factor(clean, np.array([0, 0, 0]), tissue, np.random.default_rng(s))
    assert factors[1] == pytest.approx(0.7 / 0.4) and factors[0] is None and factors[2] is None


def test_mimic_blobs_reach_other_tissue_levels():
    clean = np.full((24, 24, 24), 0.4, np.float32)
    clean[:, :, 12:] = 0.8

    def at_bright_level(mimic_prob: float) -> int:
        n = 0
        for s in range(40):
            x, blobs = corrupt(clean, np.random.default_rng(s), blob_prob=1.0, coarse_prob=0.0, mimic_prob=mimic_prob)
            core = ndi.binary_erosion(blobs, iterations=2) & (clean == 0.4)
            n += bool(core.any()) and abs(float(np.median(x[core])) - 0.8) < 0.01
        return n

    # blobs in the darker tissue took the brighter one's intensity; random factors (1.2-2.0x) rarely land there
    assert at_bright_level(1.0) >= 4 > at_bright_level(0.0)


def test_white_matter_centres_are_deep_in_the_brightest_tissue():
    clean = np.full((20, 20, 20), 0.6, np.float32)  # "grey matter"
    clean[4:16, 4:16, 4:16] = 0.85  # a "white matter" cube
    c = white_matter_centres(clean)
    assert len(c) == 8**3 and c.min() == 6 and c.max() == 13  # 2 voxels in from its faces
    assert len(white_matter_centres(np.full((8, 8, 8), 0.6, np.float32))) == 0


def test_wm_prob_centres_blobs_in_white_matter():
    clean = np.full((24, 24, 24), 0.6, np.float32)
    clean[:, :, 16:] = 0.85
    wm = white_matter_centres(clean)

    def share_centred_in_wm(wm_prob: float) -> float:
        inside = total = 0
        for s in range(30):
            _, blobs = corrupt(clean, np.random.default_rng(s), blob_prob=1.0, coarse_prob=0.0, wm=wm, wm_prob=wm_prob)
            lab, n = ndi.label(blobs)
            for c in ndi.center_of_mass(blobs, lab, range(1, n + 1)):
                inside += c[2] >= 15.5
                total += 1
        return inside / total

    # a third of the patch is white matter; with wm_prob 1 every blob is centred there
    assert share_centred_in_wm(1.0) > 0.9 and share_centred_in_wm(0.0) < 0.6
    # no white matter in the patch: blobs fall back to any tissue
    _, blobs = corrupt(clean, np.random.default_rng(0), blob_prob=1.0, coarse_prob=0.0, wm=wm[:0], wm_prob=1.0)
    assert blobs.any()


def test_small_prob_makes_blobs_small():
    clean = np.full((32, 32, 32), 0.8, np.float32)

    def mean_blob_voxels(small_prob: float) -> float:
        sizes = []
        for s in range(20):
            _, blobs = corrupt(clean, np.random.default_rng(s), blob_prob=1.0, coarse_prob=0.0, small_prob=small_prob)
            lab, n = ndi.label(blobs)
            sizes += list(np.bincount(lab.ravel())[1:])
        return float(np.mean(sizes))

    small, usual = mean_blob_voxels(1.0), mean_blob_voxels(0.0)
    # radius 1.5-3 (soft edges included) against 1.5-8: several times fewer voxels per blob
    assert small < 150 and usual > 3 * small


def test_mimic_augmentation_trains_and_is_recorded(tmp_path, head_data):
    out = train_heal_head(HealHeadTrainConfig(**_opts(head_data, tmp_path / "mi", steps=2, mimic_prob=1.0)))
    assert load_model(out, device="cpu").config.training["heal_head"]["mimic_prob"] == 1.0


@pytest.mark.parametrize("kw,msg", [
    ({"mimic_prob": 1.5}, "mimic probability"),
    ({"mimic_prob": -0.5}, "mimic probability"),
    ({"wm_prob": 1.5}, "white-matter probability"),
    ({"wm_prob": -0.1}, "white-matter probability"),
    ({"small_prob": 1.5}, "small-blob probability"),
    ({"small_prob": -0.1}, "small-blob probability"),
    ({"contrast_prob": 1.5}, "contrast probability"),
    ({"contrast_prob": -0.1}, "contrast probability"),
    ({"patch": (17, 16, 16)}, "patch"),
    ({"patch": (8, 16, 16)}, "patch"),
    ({"steps": 0}, "steps"),
    ({"val": []}, "--val"),
    ({"calibration_quantile": 1.5}, "quantile"),
    ({"train": []}, "no training volumes"),
])
def test_bad_heal_head_options_are_refused(tmp_path, head_data, kw, msg):
    with pytest.raises(InputError, match=msg):
        train_heal_head(HealHeadTrainConfig(**_opts(head_data, tmp_path / "x", **kw)))
    assert not (tmp_path / "x.safetensors").exists()


def test_cancelled_heal_head_training_writes_nothing(tmp_path, head_data):
    n = []
    with pytest.raises(Cancelled):
        train_heal_head(HealHeadTrainConfig(**_opts(head_data, tmp_path / "c", steps=50)), callback=n.append,
                        cancel=lambda: len(n) >= 2)
    assert not (tmp_path / "c.safetensors").exists()


def test_cli_train_heal_head_writes_a_model_and_refuses_to_overwrite(tmp_path, head_data, hh_model, capsys):
    files = sorted(str(p) for p in head_data.iterdir())
    rc = main(["train-heal-head", "--data", files[0], "--val", files[1], "-o", str(tmp_path / "new"), "--steps", "2",
               "--batch-size", "1", "--patch", "16", "16", "16", "--channels", "4", "8", "--res-units", "1",
               "--contrast-prob", "0", "--mimic-prob", "0.25", "--wm-prob", "0.5", "--small-prob", "0.3"])
    assert rc == 0
    new = load_model(tmp_path / "new.safetensors", device="cpu").config
    assert new.anomaly.score == "heal" and new.training["heal_head"]["contrast_prob"] == 0.0
    assert new.training["heal_head"]["mimic_prob"] == 0.25 and new.training["heal_head"]["wm_prob"] == 0.5
    assert new.training["heal_head"]["small_prob"] == 0.3
    rc = main(["train-heal-head", str(hh_model), "--data", files[0], "--val", files[1], "-o", str(hh_model.with_suffix(""))])
    assert rc != 0
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c["architecture"].__setitem__("heal_head", {"channels": [4, 8], "strides": [2], "inputs": 2}), "heal_head"),
    (lambda c: c["architecture"].__setitem__("heal_head", "unet"), "heal_head"),
    (lambda c: c["anomaly"].pop("heal_scale"), "heal_scale"),
    (lambda c: c["architecture"].pop("heal_head"), "heal_head"),
    (lambda c: c["anomaly"].__setitem__("heal_invert", 1.0), "heal_invert"),
    (lambda c: c["anomaly"].__setitem__("heal_invert", -0.1), "heal_invert"),
    (lambda c: c["anomaly"].__setitem__("heal_invert", "0.2"), "heal_invert"),
    (lambda c: c["anomaly"].__setitem__("heal_invert", True), "heal_invert"),
    (lambda c: c["anomaly"].__setitem__("brain_quantiles", [0.1, 0.5, 0.3]), "brain_quantiles"),
    (lambda c: c["anomaly"].__setitem__("brain_quantiles", [0.1]), "brain_quantiles"),
    (lambda c: c["anomaly"].__setitem__("brain_quantiles", "0.1 0.5"), "brain_quantiles"),
    (lambda c: c["anomaly"].__setitem__("brain_quantiles", [0.1, float("nan")]), "brain_quantiles"),
    (lambda c: c["anomaly"].__setitem__("brain_quantiles", [0.1, True]), "brain_quantiles"),
])
def test_bad_heal_head_config_is_refused(tmp_path, hh_model, edit, msg):
    cfg = json.loads(hh_model.with_suffix(".json").read_text())
    edit(cfg)
    stem = tmp_path / "bad"
    stem.with_suffix(".json").write_text(json.dumps(cfg))
    stem.with_suffix(".safetensors").write_bytes(hh_model.read_bytes())
    with pytest.raises(ModelError, match=msg):
        load_checkpoint(stem)


def test_heal_head_config_round_trips():
    d = HealHeadConfig((8, 16, 32), (1, 2), 1).to_dict()
    assert d["inputs"] == 1
    assert HealHeadConfig.from_dict(d).to_dict() == d
    assert "heal_head" not in SliceVAEConfig().to_dict()


def test_heal_flip_averages_the_head_over_a_mirror(hh_model):
    m = load_model(hh_model, device="cpu")
    x = np.random.default_rng(1).random((16, 24, 20)).astype(np.float32)
    plain, flipped = heal(m, x, flip=False), heal(m, x, flip=True)
    mirror = heal(m, np.ascontiguousarray(x[..., ::-1]), flip=False)[..., ::-1]
    np.testing.assert_allclose(flipped, (plain + mirror) / 2, atol=1e-6)
    assert not np.allclose(plain, flipped)
    for setting, expected in ((False, plain), (True, flipped)):  # the model's setting is the default
        m.config.anomaly.heal_flip = setting
        np.testing.assert_array_equal(heal(m, x), expected)


def test_calibrating_with_heal_flip_keeps_the_setting(hh_model):
    m = load_model(hh_model, device="cpu")
    x = np.random.default_rng(2).random((16, 24, 20)).astype(np.float32)
    calibrate(m, [(x, 1)], 0.999, score="heal", heal_flip=False)
    assert m.config.anomaly.heal_flip is False
    off = m.config.anomaly.heal_scale
    calibrate(m, [(x, 1)], 0.999, score="heal", heal_flip=True)
    assert m.config.anomaly.heal_flip is True and m.config.anomaly.heal_scale != off
    calibrate(m, [(x, 1)], 0.999, score="heal")  # None keeps it
    assert m.config.anomaly.heal_flip is True
    with pytest.raises(InputError, match="heal_flip applies"):
        calibrate(m, [(x, 1)], 0.999, score="combined", heal_flip=True)
    calibrate(m, [(x, 1)], 0.999, score="combined")  # a score without the head drops it
    assert m.config.anomaly.heal_flip is None


@pytest.mark.parametrize("edit", [
    lambda a: a.__setitem__("heal_flip", "yes"),
    lambda a: a.__setitem__("heal_flip", 1),
    lambda a: a.update({"heal_flip": True, "score": "combined", "skip_scale": 1.0, "latent_scale": 1.0}),
])
def test_bad_heal_flip_setting_is_refused(tmp_path, hh_model, edit):
    cfg = json.loads(hh_model.with_suffix(".json").read_text())
    edit(cfg["anomaly"])
    stem = tmp_path / "bad"
    stem.with_suffix(".json").write_text(json.dumps(cfg))
    stem.with_suffix(".safetensors").write_bytes(hh_model.read_bytes())
    with pytest.raises(ModelError, match="heal_flip"):
        load_checkpoint(stem)


def test_heal_blended_mixes_in_the_inverted_healing(hh_model):
    m = load_model(hh_model, device="cpu")
    rng = np.random.default_rng(3)
    x = rng.random((16, 24, 20)).astype(np.float32)
    brain = np.zeros(x.shape, bool)
    brain[2:14, 4:20, 3:17] = True
    plain = heal(m, x)
    np.testing.assert_array_equal(anom.heal_blended(m, x, brain, 0.0), plain)
    m.config.anomaly.brain_quantiles = None  # older models: the inverted intensities as they are
    back = np.where(brain, 1 - heal(m, np.where(brain, 1 - x, 0).astype(np.float32)), 0)
    np.testing.assert_allclose(anom.heal_inverted(m, x, brain), back, atol=1e-6)
    np.testing.assert_allclose(anom.heal_blended(m, x, brain, 0.25), 0.75 * plain + 0.25 * back, atol=1e-6)


def test_inverted_healing_maps_the_intensities_onto_the_calibration_quantiles(hh_model, monkeypatch):
    m = load_model(hh_model, device="cpu")
    x = np.random.default_rng(6).random((16, 24, 20)).astype(np.float32)
    brain = np.zeros(x.shape, bool)
    brain[2:14, 4:20, 3:17] = True
    ref = np.linspace(0.2, 1.1, 201) ** 2  # another distribution than 1 - x's (uniform on 0..1)
    m.config.anomaly.brain_quantiles = [round(float(q), 5) for q in ref]
    seen = []

    def identity(model, data, flip=None):
        seen.append(data)
        return data

    monkeypatch.setattr(anom, "heal", identity)
    out = anom.heal_inverted(m, x, brain)
    mapped = seen[0]
    # the head saw the brain's inverted intensities with the calibration volumes' distribution, in the same order
    np.testing.assert_allclose(np.quantile(mapped[brain], [0.1, 0.5, 0.9]), np.quantile(ref, [0.1, 0.5, 0.9]), atol=0.01)
    assert np.corrcoef(np.argsort(np.argsort(mapped[brain])), np.argsort(np.argsort(-x[brain])))[0, 1] > 0.999
    assert not mapped[~brain].any()
    # a head that changes nothing gives the volume back: the mapping is undone exactly
    np.testing.assert_allclose(out[brain], x[brain], atol=1e-4)
    assert not out[~brain].any()
    # quantiles equal to the volume's own inverted ones: the same as healing the inverted intensities directly,
    # wherever the head's output stays within their range (outside it, the mapping back clamps to the range)
    own = anom.brain_quantiles(1 - x[brain])
    m.config.anomaly.brain_quantiles = own.tolist()
    monkeypatch.undo()
    healed = heal(m, np.where(brain, 1 - x, 0).astype(np.float32))
    within = brain & (healed >= own[0]) & (healed <= own[-1])
    assert within.sum() > 0.8 * brain.sum()
    np.testing.assert_allclose(anom.heal_inverted(m, x, brain)[within], 1 - healed[within], atol=1e-3)


def test_inverted_healing_only_for_volumes_flagged_by_the_residual_ratio(hh_model):
    m = load_model(hh_model, device="cpu")
    x = np.random.default_rng(4).random((16, 24, 20)).astype(np.float32)
    brain = np.ones(x.shape, bool)
    smooth = np.full(100, 0.5, np.float32)
    a = m.config.anomaly
    a.residual_median = 0.5 / (anom.RESIDUAL_RATIO_LIMIT * 2)  # this volume: ratio 2 x the limit
    a.heal_invert = None
    np.testing.assert_array_equal(anom._heal_for(m, x, brain, smooth), heal(m, x))  # no weight: as before
    a.heal_invert = 0.2
    np.testing.assert_array_equal(anom._heal_for(m, x, brain, smooth), anom.heal_blended(m, x, brain, 0.2))
    a.residual_median = 0.5  # ratio 1: within the limit, healed as before
    np.testing.assert_array_equal(anom._heal_for(m, x, brain, smooth), heal(m, x))


def test_calibrating_with_heal_invert_sets_and_checks_the_weight(hh_model):
    m = load_model(hh_model, device="cpu")
    x = np.random.default_rng(5).random((16, 24, 20)).astype(np.float32)
    calibrate(m, [(x, 1)], 0.999, score="heal", heal_invert=0.2)
    assert m.config.anomaly.heal_invert == 0.2
    bq = m.config.anomaly.brain_quantiles  # the calibration volume's intensities inside its brain
    inside = x[anom.auto_brain_mask(x)]
    assert len(bq) == anom.QUANTILE_LEVELS and bq == sorted(bq)
    assert bq[0] == pytest.approx(inside.min(), abs=1e-5) and bq[100] == pytest.approx(np.median(inside), abs=1e-5)
    calibrate(m, [(x, 1)], 0.999, score="heal")  # None keeps it
    assert m.config.anomaly.heal_invert == 0.2
    calibrate(m, [(x, 1)], 0.999, score="heal", heal_invert=0.0)  # 0 turns it off
    assert m.config.anomaly.heal_invert is None
    for bad in (1.0, -0.5, float("nan")):
        with pytest.raises(InputError, match="at least 0 and below 1"):
            calibrate(m, [(x, 1)], 0.999, score="heal", heal_invert=bad)
    with pytest.raises(InputError, match="healing head's scores"):
        calibrate(m, [(x, 1)], 0.999, score="combined", heal_invert=0.2)
    calibrate(m, [(x, 1)], 0.999, score="combined")  # a score without the head drops the quantiles
    assert m.config.anomaly.brain_quantiles is None
