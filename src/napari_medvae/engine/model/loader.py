"""A loaded model: validated config + network on a device, ready for inference."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from ...errors import InputError, ModelError
from .checkpoint import ModelConfig, load_checkpoint
from .networks import SliceVAE, build_network

DEVICES = ("auto", "cpu", "cuda", "mps")


# The models shipped inside the package, by name: real_t1 (trained on 50 real T1 scans by recipes/default.json; the
# default) and synthetic_mni (the first model: 2 mm, trained on deformed MNI152 templates, T1 and T2-like).
PACKAGED_MODELS = ("real_t1", "synthetic_mni")
DEFAULT_MODEL = "real_t1"
MODEL_ENV = "MEDVAE_MODEL"  # names the model used when none is given (a packaged name or a .safetensors path)


def packaged_model_path(name: str) -> Path:
    """The weights file of a model shipped inside the package."""
    return Path(str(files("napari_medvae") / "models" / f"{name}.safetensors"))


def default_model_path() -> Path:
    """The model used when none is named: ``$MEDVAE_MODEL`` when set, else the shipped default (real_t1)."""
    env = os.environ.get(MODEL_ENV, "").strip()
    if not env:
        return packaged_model_path(DEFAULT_MODEL)
    p = packaged_model_path(env) if env in PACKAGED_MODELS else Path(env).expanduser()
    if not p.exists():
        raise ModelError(f"{MODEL_ENV}={env!r} names no model: expected a packaged model's name "
                         f"({', '.join(PACKAGED_MODELS)}) or an existing .safetensors file")
    return p


def model_path(path: str | os.PathLike | None) -> Path:
    """The weights file for ``path``: None is the default model (``default_model_path``), a packaged model's name
    (``real_t1``, ``synthetic_mni``) its file inside the package, anything else a path."""
    if path is None:
        return default_model_path()
    if isinstance(path, str) and path in PACKAGED_MODELS:
        return packaged_model_path(path)
    return Path(path).expanduser()


def resolve_device(device: str = "auto") -> torch.device:
    """Map 'auto|cpu|cuda|mps' (or 'cuda:N') to a torch device; auto = cuda > mps > cpu."""
    name = str(device).lower()
    base = name.split(":")[0]
    if base not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), not {device!r}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device auto or cpu")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' was requested but Apple MPS is not available; use --device auto or cpu")
    return torch.device(name)


@dataclass
class Model:
    """Config + network on a device. ``path`` is the weights file it came from (None if in memory)."""

    config: ModelConfig
    net: SliceVAE
    device: torch.device
    path: Path | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype on GPU (bf16 where supported, else fp16); None on CPU."""
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None

    def to(self, device: str | torch.device) -> Model:
        """Move to another device in place (used by the out-of-memory fallback)."""
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.net.to(self.device)
        if self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        return self

    def card(self) -> str:
        """The model card (engine.model.card: radiologist's summary, then technical details) and where it runs."""
        from .card import model_card

        return (model_card(self.config, self.path)
                + f"\nLoaded from {self.path if self.path else '(in memory)'} on device {self.device}.\n")


def from_config(cfg: ModelConfig, state: dict | None = None, device: str = "auto", path: Path | None = None) -> Model:
    """Build a Model from a config (+ weights); random init when ``state`` is None (training)."""
    net = build_network(cfg.architecture)
    if state is not None:
        net.load_state_dict(state)
    net.eval()
    return Model(cfg, net, torch.device("cpu"), path).to(resolve_device(device))


def load_model(path: str | os.PathLike | None = None, device: str = "auto") -> Model:
    """Load ``<name>.safetensors`` + ``<name>.json`` onto ``device``; ``path`` as in ``model_path`` (None: the
    default, ``real_t1``, trained on real T1 scans; ``"synthetic_mni"``: the 2 mm model trained on MNI152 templates)."""
    p = model_path(path)
    if (path is None or (isinstance(path, str) and path in PACKAGED_MODELS)) and not p.exists():
        raise ModelError(f"the shipped model is missing from the installation ({p}); reinstall napari-medvae")
    cfg, state = load_checkpoint(p)
    model = from_config(cfg, state, device=device, path=p.with_suffix(".safetensors"))
    if model.device.type == "cpu" and device not in ("cpu",):
        if device.startswith(("cuda", "mps")):
            warnings.warn(f"requested {device} is not available; running on CPU", stacklevel=2)
    return model
