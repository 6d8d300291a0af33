"""scripts/train_recipe.py: the shipped recipe is well-formed; side-branch stages (``base``) and the graft stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from napari_medvae.engine.model.checkpoint import load_checkpoint, save_checkpoint
from napari_medvae.engine.model.loader import default_model_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_recipe  # noqa: E402


def test_the_shipped_recipe_is_well_formed():
    recipe = train_recipe.load_recipe(ROOT / "recipes" / "default.json")
    outs = [st["out"] for st in recipe["stages"]]
    assert len(set(outs)) == len(outs)
    for i, st in enumerate(recipe["stages"]):
        if str(st.get("base", "")).startswith("@"):
            assert st["base"][1:] in outs[:i]  # an earlier stage's output
        elif "base" in st:
            assert Path(train_recipe.stage_base(st, None)).exists()  # a packaged model: no download
        if st["stage"] == "graft":
            assert st["from"] in outs[:i] and st["head"] in train_recipe.GRAFT_HEADS


def test_a_stage_with_its_own_base_starts_from_it():
    assert train_recipe.stage_base({"stage": "heal_head", "out": "x"}, "prev.safetensors") == "prev.safetensors"
    assert train_recipe.stage_base({"stage": "heal_head", "out": "x", "base": "synthetic_mni"}, "prev") \
        .endswith("synthetic_mni.safetensors")
    with pytest.raises(SystemExit, match="does not exist"):
        train_recipe.stage_base({"stage": "heal_head", "out": "x", "base": "/nowhere/m.safetensors"}, None)


def test_a_base_can_be_an_earlier_stages_output(tmp_path):
    _model(tmp_path, "first", 1.0)
    st = {"stage": "heal_head", "out": "second", "base": "@first"}
    assert train_recipe.stage_base(st, "prev", tmp_path) == str(tmp_path / "first.safetensors")
    with pytest.raises(SystemExit, match="does not exist"):
        train_recipe.stage_base({**st, "base": "@later"}, "prev", tmp_path)


def _model(tmp_path: Path, name: str, scale: float) -> str:
    cfg, state = load_checkpoint(default_model_path())
    state = {k: v * scale for k, v in state.items()}
    return str(save_checkpoint(tmp_path / name, cfg, state))


def test_graft_takes_the_head_from_the_donor_and_the_rest_from_the_chain(tmp_path):
    prev = _model(tmp_path, "prev", 1.0)
    _model(tmp_path, "donor", 2.0)
    out = tmp_path / "grafted"
    train_recipe.graft(prev, str(tmp_path / "donor"), str(out), {"from": "donor", "head": "heal_head", "grid_mm": 4.0})
    cfg, state = load_checkpoint(str(out) + ".safetensors")
    _, p = load_checkpoint(prev)
    heads = [k for k in state if k.startswith("heal_head.")]
    assert heads and all(torch.equal(state[k], 2 * p[k]) for k in heads)
    assert all(torch.equal(state[k], p[k]) for k in state if not k.startswith("heal_head."))
    assert cfg.anomaly.grid_mm == 4.0
    assert json.loads(out.with_suffix(".json").read_text())["anomaly"]["grid_mm"] == 4.0


@pytest.mark.parametrize("opts, msg", [
    ({"from": "donor", "head": "vae", "grid_mm": 2.0}, "graft stage takes"),
    ({"head": "heal_head", "grid_mm": 2.0}, "graft stage takes"),
    ({"from": "donor", "head": "heal_head", "grid_mm": 2.0, "lr": 1}, "graft stage takes"),
    ({"from": "missing", "head": "heal_head", "grid_mm": 2.0}, "does not exist"),
])
def test_bad_graft_stages_are_refused(tmp_path, opts, msg):
    prev = _model(tmp_path, "prev", 1.0)
    _model(tmp_path, "donor", 1.0)
    with pytest.raises(SystemExit, match=msg):
        train_recipe.graft(prev, str(tmp_path / opts.get("from", "")), str(tmp_path / "out"), opts)
