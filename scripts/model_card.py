"""Write docs/model_card.md: the card of a model (default: the shipped default, real_t1) from its JSON config.

The other shipped model: ``python scripts/model_card.py src/napari_medvae/models/synthetic_mni.json -o
docs/model_card_synthetic_mni.md``.

The card is rendered by ``napari_medvae.engine.model.card.model_card`` (the same text ``medvae info`` prints and
the Model widget summarises); tests/test_checkpoint.py checks that docs/model_card.md equals it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from napari_medvae.engine.model.card import model_card
from napari_medvae.engine.model.checkpoint import read_config
from napari_medvae.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "napari_medvae" / "models" / "real_t1.json"  # the default model


def render(config: Path) -> str:
    """The card of the model whose JSON config is ``config`` (its weights and provenance files beside it)."""
    if config.suffix != ".json" or not config.is_file():
        raise ModelError(f"{config}: expected a model's .json config file (e.g. {SHIPPED.relative_to(ROOT)})")
    return model_card(read_config(config), config.with_suffix(".safetensors"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, nargs="?", default=SHIPPED, help="the model's .json config")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "model_card.md",
                    help="where to write the card ('-' prints it)")
    a = ap.parse_args(argv)
    try:
        text = render(a.config)
    except ModelError as e:
        print(f"model_card: error: {e}", file=sys.stderr)
        return 2
    if str(a.out) == "-":
        sys.stdout.write(text)
        return 0
    fd, tmp = tempfile.mkstemp(dir=a.out.parent, prefix=f".{a.out.name}.", suffix=".tmp")  # atomic write
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
