"""Train a model from a recipe file, every stage in order, with one command:

    python scripts/train_recipe.py recipes/default.json          # the shipped default model
    python scripts/train_recipe.py recipes/default.json --install # ... and copy it into the package

A recipe (JSON) names the training and validation folders, an output folder and its stages: ``vae`` (the
2.5D slice VAE, ``medvae train``), ``region_prior``, ``slice_head``, ``denoiser``, ``heal_head`` (the heads,
each added to the previous stage's model with everything before it frozen) and ``calibrate`` (anomaly
threshold and out-of-distribution profile on the validation volumes); ``settings`` sets model settings chosen on
the validation volumes (``slice_fill``) or how heads are stored (``float16_heads``) without training. A stage with ``"base": MODEL`` (a packaged model's name
or a path; ``@OUT``: an earlier stage's output) starts from that model instead of the previous stage's, and the
stages after it go on from the model before it; ``graft`` copies a head (``"head": "heal_head"``) from such a stage's output (``"from": OUT``) into the
model, with ``"grid_mm"``: the grid that head was trained on (the healing head: anomaly.grid_mm). Each stage writes
``<out_dir>/<out>.safetensors`` + ``.json``; a stage whose output exists is skipped, so an interrupted run
continues where it stopped. Seconds per stage are printed and written to ``<out_dir>/recipe_log.json``.

To extend a trained recipe by a stage without re-running the stages before it, start at that stage from a model
that holds them (its provenance gives the earlier stages' seconds):

    python scripts/train_recipe.py recipes/default.json --start-at healhead2 --base real_t1 --install
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("vae", "region_prior", "slice_head", "denoiser", "heal_head", "graft", "calibrate", "settings")
GRAFT_HEADS = ("heal_head",)  # heads a graft stage may take from another stage's model
SETTINGS = ("slice_fill", "float16_heads")  # model settings a "settings" stage may set (no training; see ModelConfig)


def _files(folder: Path) -> list[str]:
    files = sorted(str(p) for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha", ".mgz")))
    if not files:
        raise SystemExit(f"error: no volumes in {folder}; run scripts/fetch_real_data.py first")
    return files


def load_recipe(path: Path) -> dict:
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read recipe {path}: {exc}") from None
    for key in ("name", "train", "val", "out_dir", "stages"):
        if key not in recipe:
            raise SystemExit(f"error: recipe {path} lacks '{key}'")
    for st in recipe["stages"]:
        if st.get("stage") not in STAGES or "out" not in st:
            raise SystemExit(f"error: each stage needs 'stage' (one of {', '.join(STAGES)}) and 'out'; got {st}")
    return recipe


def stage_base(st: dict, prev: str | None, out_dir: Path | None = None) -> str | None:
    """The model a stage starts from: its own ``base`` (a packaged model's name, a path, or ``@OUT``: an earlier
    stage's output in ``out_dir``), else ``prev``."""
    if "base" not in st:
        return prev
    from napari_medvae.engine.model.loader import model_path

    base = str(st["base"])
    path = (Path(out_dir or ".") / f"{base[1:]}.safetensors") if base.startswith("@") else model_path(base)
    if not Path(path).exists():
        raise SystemExit(f"error: stage {st['out']}: base model {st['base']} ({path}) does not exist")
    return str(path)


def run_stage(st: dict, prev: str | None, train: list[str], val: list[str], out: str, recipe: dict) -> None:
    """Run one stage; ``prev`` is the previous stage's weights (None before the VAE)."""
    opts = {k: v for k, v in st.items() if k not in ("stage", "out", "base")}
    seed = int(opts.pop("seed", recipe.get("seed", 0)))
    kind = st["stage"]
    if kind == "vae":
        from napari_medvae.engine.training.vae import TrainConfig
        from napari_medvae.engine.training.vae import train as train_vae

        train_vae(TrainConfig(train=train, val=val, out=out, seed=seed, name=recipe["name"],
                              data_description=recipe.get("description", ""), device="cpu", **opts))
    elif kind == "region_prior":
        from napari_medvae.engine.training.region_prior import fit_region_prior

        fit_region_prior(train, out, prev, seed=seed, **opts)
    elif kind == "settings":
        from napari_medvae.engine.model.checkpoint import ModelConfig, load_checkpoint, save_checkpoint

        bad = sorted(set(opts) - set(SETTINGS))
        if bad:
            raise SystemExit(f"error: a settings stage sets only {', '.join(SETTINGS)}, not {', '.join(bad)}")
        cfg, state = load_checkpoint(prev)
        for k, v in opts.items():
            setattr(cfg, k, v)
        ModelConfig.from_dict(cfg.to_dict(), "settings stage")  # the same checks as loading it
        save_checkpoint(out, cfg, state)
    elif kind == "graft":
        graft(prev, str(Path(out).parent / str(opts.get("from", ""))), out, opts,
              {"runs": len(branch_of(recipe["stages"], str(opts.get("from", "")))), "n_train": len(train), "n_val": len(val)})
    elif kind == "calibrate":
        from napari_medvae.engine.training.calibrate import recalibrate

        recalibrate(prev, val, out, opts.get("quantile", 0.999), opts.get("score"), opts.get("heal_flip"),
                    opts.get("heal_invert"))
    else:
        module, fn, cfg = {
            "slice_head": ("slice_head", "train_slice_head", "SliceHeadTrainConfig"),
            "denoiser": ("denoiser", "train_denoiser", "DenoiserTrainConfig"),
            "heal_head": ("heal_head", "train_heal_head", "HealHeadTrainConfig"),
        }[kind]
        import importlib

        mod = importlib.import_module(f"napari_medvae.engine.training.{module}")
        for k in ("patch", "noise_range", "runs"):
            if k in opts:
                opts[k] = tuple(opts[k])
        getattr(mod, fn)(getattr(mod, cfg)(train=train, val=val, out=out, model=prev, seed=seed, device="cpu", **opts))


def branch_of(stages: list[dict], out: str) -> list[str]:
    """The side-branch stages that made ``out``: it and the stages its ``@`` bases lead back to (first one first)."""
    by_out = {st["out"]: st for st in stages}
    chain = []
    while out in by_out and out not in chain:
        chain.append(out)
        base = str(by_out[out].get("base", ""))
        out = base[1:] if base.startswith("@") else ""
    return chain[::-1]


def graft(prev: str, donor: str, out: str, opts: dict, here: dict | None = None) -> None:
    """``prev`` with head ``opts["head"]`` (architecture and weights) from the model ``donor`` (a stage's output stem),
    the head's grid set to ``opts["grid_mm"]``; the donor's other weights are not used. ``here``: what this recipe
    added to the head (``runs``: its last runs, made by the recipe's stages, on ``n_train`` / ``n_val`` volumes)."""
    from napari_medvae.engine.model.checkpoint import ModelConfig, load_checkpoint, save_checkpoint

    bad = sorted(set(opts) - {"from", "head", "grid_mm"})
    head = opts.get("head")
    if bad or head not in GRAFT_HEADS or not opts.get("from"):
        raise SystemExit(f"error: a graft stage takes 'from' (an earlier stage's out), 'head' (one of "
                         f"{', '.join(GRAFT_HEADS)}) and 'grid_mm'; got {opts}")
    if not Path(donor + ".safetensors").exists():
        raise SystemExit(f"error: graft: {donor}.safetensors does not exist (the 'from' stage must come first)")
    cfg, state = load_checkpoint(prev)
    dcfg, dstate = load_checkpoint(donor + ".safetensors")
    if dcfg.architecture.get(head) is None:
        raise SystemExit(f"error: graft: {donor} has no {head}")
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    state.update({k: v for k, v in dstate.items() if k.startswith(f"{head}.")})
    cfg.architecture = {**cfg.architecture, head: dcfg.architecture[head]}
    cfg.anomaly.grid_mm = float(opts["grid_mm"]) if opts.get("grid_mm") is not None else None
    # the head's own training record replaces the chain's (the card describes the head the model holds)
    record = (dcfg.training or {}).get(head)
    cfg.training = {**(cfg.training or {}), head: record,
                    f"{head}_graft": {"from_stage": str(opts["from"]), "donor_name": dcfg.name,
                                      "grid_mm": cfg.anomaly.grid_mm, **(here or {})}}
    if record is None:
        cfg.training.pop(head)
    ModelConfig.from_dict(cfg.to_dict(), "graft stage")  # the same checks as loading it
    save_checkpoint(out, cfg, state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--install", action="store_true", help="save the final model into the package as "
                    "src/napari_medvae/models/<install_as>.* (the recipe's install_as; default: default)")
    ap.add_argument("--start-at", metavar="OUT", help="skip the stages before the stage whose 'out' is OUT, "
                    "starting from --base")
    ap.add_argument("--base", help="with --start-at: the model holding every stage before it (a .safetensors path "
                    "or a packaged model's name)")
    a = ap.parse_args(argv)
    recipe = load_recipe(a.recipe)
    outs = [st["out"] for st in recipe["stages"]]
    if (a.start_at is None) != (a.base is None):
        raise SystemExit("error: --start-at and --base go together")
    if a.start_at is not None and a.start_at not in outs:
        raise SystemExit(f"error: --start-at {a.start_at!r} is not a stage of {a.recipe} (stages: {', '.join(outs)})")
    train, val = _files(ROOT / recipe["train"]), _files(ROOT / recipe["val"])
    out_dir = ROOT / recipe["out_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "recipe_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    prev: str | None = None
    start = outs.index(a.start_at) if a.start_at else 0
    if a.start_at:
        from napari_medvae.engine.model.checkpoint import read_config
        from napari_medvae.engine.model.loader import model_path

        prev = str(model_path(a.base))
        if not Path(prev).exists():
            raise SystemExit(f"error: --base model {prev} does not exist")
        done = ((read_config(Path(prev).with_suffix(".json")).training or {}).get("recipe") or {})
        for k, v in (done.get("seconds_per_stage") or {}).items():
            if k in outs[:start]:
                log.setdefault(k, {**v, "from": a.base})
        missing = [k for k in outs[:start] if k not in log]
        if missing:
            raise SystemExit(f"error: --base {a.base} does not record the stages {', '.join(missing)} of this recipe")
    for st in recipe["stages"][start:]:
        out = str(out_dir / st["out"])
        if Path(out + ".safetensors").exists():
            print(f"[{st['stage']}] {out}.safetensors exists, skipped", flush=True)
        else:
            print(f"[{st['stage']}] -> {out}", flush=True)
            t = time.perf_counter()
            run_stage(st, stage_base(st, prev, out_dir), train, val, out, recipe)
            log[st["out"]] = {"stage": st["stage"], "seconds": round(time.perf_counter() - t, 1)}
            log_path.write_text(json.dumps(log, indent=1))
            print(f"[{st['stage']}] done in {log[st['out']]['seconds']:.0f} s", flush=True)
        if "base" not in st:  # a stage from another base is a side branch: the chain goes on from prev
            prev = out + ".safetensors"
    total = sum(v["seconds"] for k, v in log.items() if k in outs)
    print(f"model: {prev} (training time, all stages: {total / 60:.1f} min)")
    if a.install:  # re-saved, not copied: the training history (and this recipe's log) go to the provenance file
        from napari_medvae.engine.model.checkpoint import load_checkpoint, save_checkpoint

        cfg, state = load_checkpoint(prev)
        cfg.training = {**(cfg.training or {}), "recipe": {"file": str(a.recipe), "stages": recipe["stages"],
                                                           "seconds_per_stage": log}}
        dest = ROOT / "src" / "napari_medvae" / "models" / recipe.get("install_as", "default")
        save_checkpoint(dest, cfg, state)
        print(f"installed as {dest}.safetensors/.json/.provenance.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
