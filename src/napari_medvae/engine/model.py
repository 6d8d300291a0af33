"""A loaded model: validated config + network on a device, ready for inference."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from ..errors import InputError, ModelError
from .checkpoint import ModelConfig, load_checkpoint
from .networks import SliceVAE, build_network

DEVICES = ("auto", "cpu", "cuda", "mps")


def default_model_path() -> Path:
    """The model shipped inside the package (trained by ``medvae train`` on synthetic MNI152 subjects)."""
    return Path(str(files("napari_medvae") / "models" / "default.safetensors"))


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
        """A short human-readable summary for the Model widget and ``medvae info``."""
        c = self.config
        t = c.training or {}
        lines = [
            f"name: {c.name}",
            f"file: {self.path if self.path else '(in memory)'}",
            f"modality: {c.modality}",
            f"architecture: {c.architecture.get('type')} channels={c.architecture.get('channels')} "
            f"latent={c.architecture.get('latent_channels')} context=±{c.architecture.get('context')} slices",
            f"denoising head: {'3D UNet, channels ' + str(c.architecture['denoiser']['channels']) if c.architecture.get('denoiser') else 'none (Wiener and block-matching stages only)'}",
            f"missing-slice head: {'3D UNet, channels ' + str(c.architecture['slice_head']['channels']) if c.architecture.get('slice_head') else 'none'}",
            f"healing head (anomaly): {'3D UNet, channels ' + str(c.architecture['heal_head']['channels']) if c.architecture.get('heal_head') else 'none'}",
            f"region prior (painted regions): {'balls ' + str(c.architecture['region_prior']['patch']) + ' voxels across, intensities to the power ' + str(c.architecture['region_prior'].get('power', 1.0)) if c.architecture.get('region_prior') else 'none (biharmonic fill)'}",
            f"anomaly score: {c.anomaly.get('score', 'residual')}",
            f"trained at: {c.spacing_mm} mm in-plane, {c.slice_spacing_mm} mm between slices",
            f"anomaly threshold (score 1.0): {c.anomaly.get('threshold')} "
            f"(quantile {c.anomaly.get('quantile')} of healthy held-out voxels)",
        ]
        if t:
            lines.append(
                f"training: {t.get('steps', '?')} steps, {t.get('n_train', '?')} volumes, "
                f"{t.get('seconds', 0) / 60:.1f} min on {t.get('device', '?')}; final val loss {t.get('val_loss', '?')}"
            )
            if t.get("data"):
                lines.append(f"data: {t['data']}")
        lines.append(f"device: {self.device}")
        return "\n".join(lines)


def from_config(cfg: ModelConfig, state: dict | None = None, device: str = "auto", path: Path | None = None) -> Model:
    """Build a Model from a config (+ weights); random init when ``state`` is None (training)."""
    net = build_network(cfg.architecture)
    if state is not None:
        net.load_state_dict(state)
    net.eval()
    return Model(cfg, net, torch.device("cpu"), path).to(resolve_device(device))


def load_model(path: str | os.PathLike | None = None, device: str = "auto") -> Model:
    """Load ``<name>.safetensors`` + ``<name>.json`` (default: the shipped model) onto ``device``."""
    p = default_model_path() if path is None else Path(path)
    if path is None and not p.exists():
        raise ModelError(f"the shipped default model is missing from the installation ({p}); reinstall napari-medvae")
    cfg, state = load_checkpoint(p)
    model = from_config(cfg, state, device=device, path=p.with_suffix(".safetensors"))
    if model.device.type == "cpu" and device not in ("cpu",):
        if device.startswith(("cuda", "mps")):
            warnings.warn(f"requested {device} is not available; running on CPU", stacklevel=2)
    return model
