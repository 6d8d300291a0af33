"""Model files: ``<name>.safetensors`` (weights) + ``<name>.json`` (config). Never pickle.

The JSON config is validated on load and must match the weights tensor by tensor; anything else is
refused with a message that says what is wrong. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ModelError

FORMAT_VERSION = 1
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol 2+, zip (torch.save since 1.6)


ANOMALY_SCORES = ("residual", "combined", "healed", "heal")  # the anomaly scores a model can be calibrated with (engine.anomaly)
HEAL_SCORES = ("healed", "heal")  # those that use the healing head


@dataclass
class ModelConfig:
    """Everything needed to use a model besides its weights (saved as JSON next to them).

    spacing_mm: in-plane pixel size (mm) the network was trained at; volumes more than 20 % finer or coarser
    in-plane are resampled to it (engine.preprocess.NATIVE_TOLERANCE), others run on their own grid.
    slice_spacing_mm: distance (mm) between the neighbouring slices the network expects as context.
    normalization: {"method": "percentile", "percentile": p}: intensities divided by the p-th
    percentile of the volume (zero stays zero), outputs multiplied back.
    anomaly: {"threshold": score that maps to 1.0, "quantile": healthy quantile used,
    "median_size": voxels of the median filter, "score": "residual", "combined", "healed" or "heal" (engine.anomaly),
    and for "combined" and "healed" "skip_scale" / "latent_scale": the two VAE residuals' healthy 99th percentiles,
    for "healed" and "heal" "heal_scale": the healing head's residual's; optional "healthy_peaks": each healthy calibration
    volume's highest candidate peak, "healthy_peak": their robust maximum (engine.training.calibrate.robust_peak), and "residual_median": the healthy median of the smoothed reconstruction
    residual inside the brain (engine.training.calibrate.calibrate, engine.ops.anomaly.smooth_residual), "heal_flip": whether
    the healing head's output is averaged over a left-right mirror (engine.ops.anomaly.heal; absent: no),
    "heal_invert": the weight of the inverted-intensity healing in volumes flagged by the residual ratio
    (engine.ops.anomaly.heal_blended; absent: 0), "brain_quantiles": the healthy calibration volumes' intensity
    quantiles inside the brain, onto which that inverted healing maps a volume (engine.ops.anomaly.heal_inverted;
    absent: no mapping)}.
    intensity_profile: normalised histogram of healthy held-out volumes for the out-of-distribution check.
    """

    architecture: dict
    name: str = "medvae"
    format_version: int = FORMAT_VERSION
    spacing_mm: float = 2.0
    slice_spacing_mm: float = 2.0
    normalization: dict = field(default_factory=lambda: {"method": "percentile", "percentile": 99.5})
    anomaly: dict = field(default_factory=lambda: {"threshold": None, "quantile": 0.999, "median_size": 3})
    sample_shape: list[int] = field(default_factory=lambda: [94, 116, 98])
    intensity_profile: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    modality: str = "MRI T1 (brain, skull-stripped)"
    package_version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> ModelConfig:
        """Validate a parsed JSON config; raise ModelError naming the bad field."""
        if not isinstance(d, dict):
            raise ModelError(f"{source}: expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise ModelError(f"{source}: missing integer 'format_version' (this is not a napari-medvae model config)")
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{source}: model format version {version} is newer than this napari-medvae understands "
                f"({FORMAT_VERSION}); upgrade napari-medvae to use it"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"{source}: unknown config fields {unknown}")
        if "architecture" not in d or not isinstance(d["architecture"], dict):
            raise ModelError(f"{source}: missing 'architecture' object")
        cfg = cls(**d)
        for name in ("spacing_mm", "slice_spacing_mm"):
            v = getattr(cfg, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ModelError(f"{source}: '{name}' must be a positive number of millimetres, not {v!r}")
        norm = cfg.normalization
        if norm.get("method") != "percentile" or not 50 < float(norm.get("percentile", 0)) <= 100:
            raise ModelError(f"{source}: normalization must be {{'method': 'percentile', 'percentile': 50..100}}, not {norm}")
        thr = cfg.anomaly.get("threshold")
        if thr is not None and not (isinstance(thr, (int, float)) and thr > 0):
            raise ModelError(f"{source}: anomaly.threshold must be a positive number or null, not {thr!r}")
        score = cfg.anomaly.get("score", "residual")
        if score not in ANOMALY_SCORES:
            raise ModelError(f"{source}: anomaly.score must be one of {', '.join(ANOMALY_SCORES)}, not {score!r}")
        scales = {"residual": (), "combined": ("skip_scale", "latent_scale"), "heal": ("heal_scale",)}.get(
            score, ("skip_scale", "latent_scale", "heal_scale"))
        for k in scales:
            v = cfg.anomaly.get(k)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ModelError(f"{source}: anomaly.{k} must be a positive number for the {score} score, not {v!r}")
        for k in ("healthy_peak", "residual_median"):
            v = cfg.anomaly.get(k)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise ModelError(f"{source}: anomaly.{k} must be a positive number or absent, not {v!r}")
        peaks = cfg.anomaly.get("healthy_peaks")
        if peaks is not None and not (isinstance(peaks, list) and all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0 for p in peaks)):
            raise ModelError(f"{source}: anomaly.healthy_peaks must be a list of positive numbers or absent, not {peaks!r}")
        flip = cfg.anomaly.get("heal_flip")
        if flip is not None and (not isinstance(flip, bool) or score not in HEAL_SCORES):
            raise ModelError(f"{source}: anomaly.heal_flip must be true or false and only set for the heal and healed "
                             f"scores, not {flip!r} with the {score} score")
        inv = cfg.anomaly.get("heal_invert")
        if inv is not None and (isinstance(inv, bool) or not isinstance(inv, (int, float)) or not 0 <= inv < 1
                                or score not in HEAL_SCORES):
            raise ModelError(f"{source}: anomaly.heal_invert must be a number from 0 to below 1 and only set for the "
                             f"heal and healed scores, not {inv!r} with the {score} score")
        bq = cfg.anomaly.get("brain_quantiles")
        if bq is not None and (score not in HEAL_SCORES or not isinstance(bq, list) or len(bq) < 2
                               or not all(isinstance(q, (int, float)) and not isinstance(q, bool) and math.isfinite(q)
                                          for q in bq)
                               or any(b < a for a, b in zip(bq[:-1], bq[1:], strict=True))):
            raise ModelError(f"{source}: anomaly.brain_quantiles must be a list of at least 2 finite, non-decreasing "
                             f"numbers and only set for the heal and healed scores (score: {score})")
        if score in HEAL_SCORES and not cfg.architecture.get("heal_head"):
            raise ModelError(f"{source}: anomaly.score '{score}' needs architecture.heal_head (a healing head)")
        try:
            from .networks import SliceVAEConfig

            SliceVAEConfig.from_dict(cfg.architecture)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: bad architecture: {exc}") from None
        return cfg


def model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return (weights, config) paths for a model given as stem, .safetensors or .json path."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors"))
        if len(found) != 1:
            raise ModelError(f"{p}: expected exactly one .safetensors model in the folder, found {len(found)}")
        p = found[0]
    if p.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"):
        raise ModelError(
            f"{p}: '{p.suffix}' files are PyTorch/pickle checkpoints, which can run arbitrary code when "
            "loaded; napari-medvae only loads <name>.safetensors + <name>.json"
        )
    if p.suffix in (".safetensors", ".json"):
        stem = p.with_suffix("")
    elif p.suffix == "":
        stem = p
    else:
        raise ModelError(f"{p}: not a model file; expected <name>.safetensors with <name>.json beside it")
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """Read and validate a model; returns (config, state_dict of CPU tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config = model_paths(path)
    if not weights.exists():
        raise ModelError(f"{weights}: model weights not found")
    with open(weights, "rb") as fh:
        head = fh.read(9)
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    looks_safetensors = head[8:9] == b"{" and 0 < header_len < weights.stat().st_size
    if not looks_safetensors and head.startswith(_PICKLE_MAGIC):
        raise ModelError(
            f"{weights}: this is a pickle/torch.save file renamed to .safetensors; refusing to load it "
            "(pickle can run arbitrary code). Convert it to safetensors with a trusted tool first."
        )
    if not config.exists():
        raise ModelError(f"{weights}: its config {config.name} is missing; a model is <name>.safetensors + <name>.json")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config}: not valid JSON ({exc})") from None
    cfg = ModelConfig.from_dict(raw, source=str(config))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    check_state(cfg, state, str(weights))
    return cfg, state


def check_state(cfg: ModelConfig, state: dict, source: str) -> None:
    """Raise ModelError unless ``state`` has exactly the tensors (names, shapes) the config's network has."""
    from .networks import build_network

    expected = {k: tuple(v.shape) for k, v in build_network(cfg.architecture).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ModelError(
            f"{source}: weights do not match the architecture in the config "
            f"({len(missing)} tensors missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})"
        )
    wrong = [(k, got[k], expected[k]) for k in expected if got[k] != expected[k]]
    if wrong:
        k, g, e = wrong[0]
        raise ModelError(f"{source}: tensor '{k}' has shape {g}, the config's architecture needs {e} ({len(wrong)} differ)")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path`` (never a partial file).

    The temporary file is created with mode 0666 so that the kernel applies the umask, as for any new file (mkstemp's
    private 0600 kept models written on a shared cluster from the group); the umask is never changed, which would
    race with other threads creating files."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, cfg: ModelConfig, state: dict) -> Path:
    """Write <stem>.safetensors + <stem>.json atomically; returns the weights path."""
    from safetensors.torch import save

    weights, config = model_paths(Path(path).with_suffix("") if Path(path).suffix else path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _atomic_write_bytes(weights, save(tensors, metadata={"format": "pt", "napari_medvae": str(cfg.format_version)}))
    _atomic_write_bytes(config, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    return weights
