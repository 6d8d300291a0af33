"""Model files: safetensors + JSON only; everything else is refused with a clear message."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat

import pytest

from napari_medvae.engine import ModelError, default_model_path, load_model
from napari_medvae.engine.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture()
def model_copy(tmp_path):
    src = default_model_path()
    shutil.copy(src, tmp_path / "m.safetensors")
    shutil.copy(src.with_suffix(".json"), tmp_path / "m.json")
    return tmp_path / "m.safetensors"


def test_default_model_loads_and_has_calibration():
    m = load_model(None, device="cpu")
    assert m.config.anomaly.threshold > 0
    assert "training" in m.card()


def test_save_load_round_trip(tmp_path, model_copy):
    cfg, state = load_checkpoint(model_copy)
    out = save_checkpoint(tmp_path / "copy", cfg, state)
    cfg2, state2 = load_checkpoint(out)
    assert cfg2 == cfg and all((state[k] == state2[k]).all() for k in state)


def test_float16_heads_are_stored_as_float16_and_read_back_as_float32(tmp_path, model_copy):
    import torch
    from safetensors import safe_open

    cfg, state = load_checkpoint(model_copy)
    heads = [h for h in ("slice_head", "heal_head") if cfg.architecture.get(h)]
    assert heads
    cfg.float16_heads = heads
    out = save_checkpoint(tmp_path / "half", cfg, state)
    with safe_open(str(out), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert all(dtypes[k] == torch.float16 for k in dtypes if k.startswith(tuple(f"{h}." for h in heads)))
    assert all(dtypes[k] == torch.float32 for k in dtypes if not k.startswith(tuple(f"{h}." for h in heads)))
    cfg2, state2 = load_checkpoint(out)
    assert cfg2.float16_heads == heads and all(v.dtype == torch.float32 for v in state2.values())
    for k, v in state.items():
        if k.startswith(tuple(f"{h}." for h in heads)):
            torch.testing.assert_close(state2[k], v, rtol=1e-3, atol=1e-4)  # rounded to float16
        else:
            assert torch.equal(state2[k], v)
    assert out.stat().st_size < model_copy.stat().st_size


def test_real_t1_stores_its_slice_heads_as_float16_and_stays_under_20_mib():
    from napari_medvae.engine.model.loader import packaged_model_path

    path = packaged_model_path("real_t1")
    cfg, _ = load_checkpoint(path)
    assert cfg.float16_heads == ["slice_head", "slice_head_single"]
    assert path.stat().st_size < 20 * 2**20


@pytest.mark.parametrize("bad", [["region_prior"], ["nonsense"], "slice_head", ["slice_head_single"]])
def test_bad_float16_heads_are_refused(tmp_path, model_copy, bad):
    cfg = json.loads(model_copy.with_suffix(".json").read_text())
    cfg["float16_heads"] = bad  # the region prior, unknown keys, not a list, a head the model lacks
    model_copy.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="float16_heads must list 3D heads"):
        load_model(model_copy, device="cpu")


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_saved_model_files_get_the_umask_permissions_not_private_ones(tmp_path, model_copy):
    """Atomic writes go through mkstemp (mode 0600); the final files must be readable like any new file."""
    cfg, state = load_checkpoint(model_copy)
    old = os.umask(0o022)
    try:
        out = save_checkpoint(tmp_path / "shared", cfg, state)
    finally:
        os.umask(old)
    for f in (out, out.with_suffix(".json")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, oct(f.stat().st_mode)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_refuses_pickle_files(tmp_path):
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelError, match="pickle"):
        load_model(p)


def test_refuses_pickle_renamed_to_safetensors(tmp_path, model_copy):
    model_copy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelError, match="pickle"):
        load_model(model_copy)


def test_refuses_missing_config(model_copy):
    model_copy.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="config"):
        load_model(model_copy)


def test_refuses_config_of_other_architecture(model_copy):
    j = model_copy.with_suffix(".json")
    cfg = json.loads(j.read_text())
    cfg["architecture"]["channels"] = [32, 64, 128]
    j.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="shape|match"):
        load_model(model_copy)


def test_refuses_newer_format(model_copy):
    j = model_copy.with_suffix(".json")
    cfg = json.loads(j.read_text())
    cfg["format_version"] = 99
    j.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="newer"):
        load_model(model_copy)


@pytest.mark.parametrize("text, msg", [("{not json", "JSON"), ("[1, 2]", "object"), ('{"format_version": 1}', "architecture")])
def test_refuses_bad_json(model_copy, text, msg):
    model_copy.with_suffix(".json").write_text(text)
    with pytest.raises(ModelError, match=msg):
        load_model(model_copy)


def test_refuses_truncated_weights(model_copy):
    data = model_copy.read_bytes()
    model_copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="safetensors"):
        load_model(model_copy)


def test_refuses_wrong_tensor_shapes(tmp_path, model_copy):
    cfg, state = load_checkpoint(model_copy)
    k = next(iter(state))
    state[k] = state[k][:1].clone()
    out = save_checkpoint(tmp_path / "bad", cfg, state)
    with pytest.raises(ModelError, match="shape"):
        load_model(out)


def test_shipped_anomaly_settings_round_trip_to_the_same_json():
    """The typed settings write back exactly the keys and values the model's JSON has (older models stay readable)."""
    from napari_medvae.engine.model.checkpoint import AnomalySettings

    raw = json.loads(default_model_path().with_suffix(".json").read_text())["anomaly"]
    assert AnomalySettings.from_dict(raw).to_dict() == raw
    peaks = {**raw, "healthy_peaks": [1.2, 3.1, 9.2]}  # what newer calibrations add
    assert AnomalySettings.from_dict(peaks).healthy_peaks == [1.2, 3.1, 9.2]


@pytest.mark.parametrize(("change", "msg"), [
    ({"healthy_peaks": [1.0, "x"]}, "healthy_peaks"),
    ({"median_size": 0}, "median_size"),
    ({"quantile": 1.5}, "quantile"),
    ({"threshold": -1}, "threshold"),
    ({"colour": "red"}, "unknown anomaly settings"),
])
def test_bad_anomaly_settings_are_refused_at_load(model_copy, change, msg):
    j = model_copy.with_suffix(".json")
    cfg = json.loads(j.read_text())
    cfg["anomaly"] = {**cfg["anomaly"], **change}
    j.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=msg):
        load_checkpoint(model_copy)


def test_saving_moves_the_training_history_into_the_provenance_file(tmp_path, model_copy):
    from napari_medvae.engine.model.checkpoint import provenance_path, read_config

    j = model_copy.with_suffix(".json")
    legacy = json.loads(j.read_text())
    legacy["training"] = {"steps": 7, "data": "two volumes"}  # older models keep their history in the JSON
    j.write_text(json.dumps(legacy))
    cfg, state = load_checkpoint(model_copy)
    assert cfg.training == legacy["training"]
    out = save_checkpoint(tmp_path / "new", cfg, state)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert "training" not in saved and saved["anomaly"] == legacy["anomaly"]
    prov = json.loads(provenance_path(out).read_text())
    assert prov["training"] == legacy["training"] and provenance_path(out).name == "new.provenance.json"
    again = read_config(out.with_suffix(".json"))
    assert again.training == legacy["training"] and again.to_dict() == cfg.to_dict()
    cfg.training = {}
    save_checkpoint(tmp_path / "new", cfg, state)
    assert not provenance_path(out).exists()  # no stale history beside a model that has none


def test_refuses_other_extensions(tmp_path):
    with pytest.raises(ModelError, match="not a model file"):
        load_model(tmp_path / "model.onnx")


# ---------------------------------------------------------------- the model card (engine.model.card)

_JARGON = ("SliceVAE", "latent", "quantile", "0.999", "UNet", "KL", "skip", "percentile", "residual")


def _shipped_config() -> dict:
    """The shipped model's config as JSON data, its training history (provenance) included."""
    from napari_medvae.engine.model.checkpoint import read_config

    return read_config(default_model_path().with_suffix(".json")).to_dict()


def test_docs_model_card_equals_the_generator_for_the_shipped_default(default_model):
    """docs/model_card.md is generated (python scripts/model_card.py); it must not drift from the model's JSON."""
    from pathlib import Path

    from napari_medvae.engine.model.card import model_card

    assert default_model_path().name == "real_t1.safetensors"
    docs = Path(__file__).resolve().parents[1] / "docs" / "model_card.md"
    expected = model_card(_shipped_config(), default_model_path())
    assert docs.read_text(encoding="utf-8") == expected, "re-run: python scripts/model_card.py"


def test_card_summary_is_plain_language_and_the_technical_part_follows():
    from napari_medvae.engine.model.card import SUMMARY_TITLE, TECHNICAL_TITLE, card_summary, model_card

    cfg = _shipped_config()
    summary = card_summary(cfg)
    for word in _JARGON:
        assert word not in summary, word
    assert "1.0 is the anomaly threshold, the calibrated healthy limit" in summary
    assert cfg["modality"] in summary and cfg["training"]["data"] in summary
    assert "refused" in summary and "CT" in summary and "Known limitations" in summary
    assert f"{cfg['anomaly']['healthy_peak']:.2f}" in summary
    card = model_card(cfg)
    assert card.index(SUMMARY_TITLE) < card.index(TECHNICAL_TITLE)
    assert "SliceVAE" in card.split(TECHNICAL_TITLE)[1]  # the technical section keeps the details
    assert f"{cfg['anomaly']['threshold']:.4f}" in card


def test_card_says_where_a_grafted_healing_head_came_from_and_its_grid(default_model):
    from napari_medvae.engine.model.card import TECHNICAL_TITLE, card_summary, model_card

    cfg = _shipped_config()
    graft = cfg["training"]["heal_head_graft"]  # real_t1's healing head: synthetic_mni's, fine-tuned at 2 mm
    assert cfg["anomaly"]["grid_mm"] == 2.0 and graft["runs"] == 2 and graft["n_train"] == 50
    assert f"'{graft['donor_name']}' model" in card_summary(cfg) and "2 mm grid" in card_summary(cfg)
    tech = model_card(cfg).split(TECHNICAL_TITLE)[1]
    assert f"grafted from the recipe stage '{graft['from_stage']}'" in tech
    assert "| healing head grid | 2 mm" in tech and "mean over 8 held-out volumes" in tech
    del cfg["training"]["heal_head_graft"], cfg["anomaly"]["grid_mm"]
    assert "grafted" not in model_card(cfg) and "healing head grid" not in model_card(cfg)


def test_card_of_an_uncalibrated_model_says_its_heatmap_has_no_limit():
    from napari_medvae.engine.model.card import card_summary

    cfg = _shipped_config()
    cfg["anomaly"] = {"threshold": None, "quantile": 0.999, "median_size": 3}
    cfg["training"] = {}
    summary = card_summary(cfg)
    assert "not calibrated" in summary and "healthy limit" in summary and "1.0 is the anomaly threshold" not in summary


@pytest.mark.parametrize(("config", "msg"), [
    ({"architecture": {}}, "format_version"),
    ({"format_version": 1}, "architecture"),
    (42, "ModelConfig or its JSON dict, not int"),
])
def test_card_refuses_what_is_not_a_model_config(config, msg):
    from napari_medvae.engine.model.card import model_card

    with pytest.raises(ModelError, match=msg):
        model_card(config)


def test_medvae_info_prints_the_card(capsys):
    from napari_medvae.cli import main
    from napari_medvae.engine.model.card import card_summary

    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert card_summary(_shipped_config()) in out and "Technical details" in out and "on device cpu" in out


def test_the_default_is_real_t1_and_synthetic_mni_loads_by_name_with_its_generated_card(default_model):
    """Without MEDVAE_MODEL the default is real_t1; the 2 mm synthetic model loads by name and
    docs/model_card_synthetic_mni.md equals its card."""
    from pathlib import Path

    from napari_medvae.engine import load_model
    from napari_medvae.engine.model.card import model_card
    from napari_medvae.engine.model.checkpoint import read_config
    from napari_medvae.engine.model.loader import model_path

    assert default_model == "real_t1" and model_path(None) == model_path("real_t1")
    d = load_model(None, device="cpu")
    assert d.config.name == "medvae-real-t1" and d.config.spacing_mm == 1.0 and d.config.anomaly.threshold
    assert "ds002748" in d.card()
    p = model_path("synthetic_mni")
    m = load_model("synthetic_mni", device="cpu")
    assert m.config.spacing_mm == 2.0 and m.config.anomaly.threshold and "MNI152" in m.card()
    docs = Path(__file__).resolve().parents[1] / "docs" / "model_card_synthetic_mni.md"
    expected = model_card(read_config(p.with_suffix(".json")).to_dict(), p)
    assert docs.read_text(encoding="utf-8") == expected, "re-run: python scripts/model_card.py " \
        "src/napari_medvae/models/synthetic_mni.json -o docs/model_card_synthetic_mni.md"
    assert model_path("no_such_name") == Path("no_such_name")  # anything else is a path


def test_medvae_model_variable_names_the_default_and_a_wrong_one_is_refused(monkeypatch, tmp_path, capsys):
    from napari_medvae.cli import main
    from napari_medvae.engine.model.loader import model_path

    monkeypatch.setenv("MEDVAE_MODEL", "real_t1")
    assert model_path(None) == model_path("real_t1")
    monkeypatch.setenv("MEDVAE_MODEL", str(model_path("synthetic_mni")))
    assert model_path(None) == model_path("synthetic_mni")
    monkeypatch.setenv("MEDVAE_MODEL", str(tmp_path / "gone.safetensors"))
    with pytest.raises(ModelError, match="MEDVAE_MODEL=.*names no model.*real_t1, synthetic_mni"):
        model_path(None)
    assert main(["info", "--device", "cpu"]) == 2
    assert "MEDVAE_MODEL" in capsys.readouterr().err
