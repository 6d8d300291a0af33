"""Model files: ``<name>.safetensors`` (weights) + ``<name>.json`` (config) + ``<name>.provenance.json`` (how it
was trained). Never pickle.

The JSON config is validated once, on load, into typed objects (:class:`ModelConfig`, :class:`AnomalySettings`) and
must match the weights tensor by tensor; anything else is refused with a message that says what is wrong. The
training history lives in the provenance file, which only the model card reads; configs that still hold it
(``training``) load as before, and saving one moves it out. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...errors import ModelError

FORMAT_VERSION = 1
PROVENANCE_SUFFIX = ".provenance.json"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol 2+, zip (torch.save since 1.6)


ANOMALY_SCORES = ("residual", "combined", "healed", "heal")  # the anomaly scores a model can be calibrated with (engine.anomaly)
HEAL_SCORES = ("healed", "heal")  # those that use the healing head


@dataclass
class AnomalySettings:
    """A model's anomaly calibration (the ``anomaly`` object of its JSON), validated once by :meth:`from_dict`.

    threshold: the score that maps to heatmap value 1.0 (None: not calibrated); quantile: the healthy quantile it is;
    median_size: voxels of the residual's median filter; score: "residual", "combined", "healed" or "heal"
    (engine.ops.anomaly). skip_scale / latent_scale: the two VAE residuals' healthy 99th percentiles ("combined",
    "healed"); heal_scale: the healing head's residual's ("healed", "heal"). healthy_peaks: each healthy calibration
    volume's highest candidate peak; healthy_peak: their robust maximum (engine.training.calibrate.robust_peak);
    residual_median: their median smoothed reconstruction residual inside the brain (engine.ops.anomaly.smooth_residual).
    heal_flip: the healing head's output averaged over a left-right mirror (engine.ops.anomaly.heal; None: no);
    heal_invert: the weight of the inverted-intensity healing in volumes flagged by the residual ratio
    (engine.ops.anomaly.heal_blended; None: 0); brain_quantiles: the healthy calibration volumes' intensity quantiles
    inside the brain, onto which that inverted healing maps a volume (engine.ops.anomaly.heal_inverted; None: no
    mapping). heal_margin: voxels of background around the brain that the healing head sees (engine.ops.anomaly.heal;
    None: 16, as models calibrated before it was stored); ratio_every: the residual ratio's reconstruction runs on
    every this-many-th slice ("heal" score; None: every slice). Calibration stores both, so that maps are scored as
    the calibration volumes were. grid_mm: the grid (mm in-plane and between slices) on which maps are made and
    calibrated, when it is not the model's own (a healing head trained on a coarser grid: see
    engine.ops.anomaly.anomaly_config; None: the model's grid). Optional values that are None are left out of the
    JSON, as older models have them.
    """

    threshold: float | None = None
    quantile: float = 0.999
    median_size: int = 3
    score: str = "residual"
    skip_scale: float | None = None
    latent_scale: float | None = None
    heal_scale: float | None = None
    healthy_peak: float | None = None
    healthy_peaks: list[float] | None = None
    residual_median: float | None = None
    heal_flip: bool | None = None
    heal_invert: float | None = None
    brain_quantiles: list[float] | None = None
    heal_margin: int | None = None
    ratio_every: int | None = None
    grid_mm: float | None = None

    _ALWAYS = ("threshold", "quantile", "median_size")  # written even when None (the JSON has always had them)

    def to_dict(self) -> dict:
        """The JSON object: the three base values, then every optional value that is set."""
        return {k: v for k, v in asdict(self).items() if k in self._ALWAYS or v is not None}

    @property
    def scales(self) -> tuple[str, ...]:
        """The names of the healthy scales this score divides by."""
        return {"residual": (), "combined": ("skip_scale", "latent_scale"), "heal": ("heal_scale",)}.get(
            self.score, ("skip_scale", "latent_scale", "heal_scale"))

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> AnomalySettings:
        """Validate the ``anomaly`` object of a model's JSON; raise ModelError naming the bad value."""
        if not isinstance(d, dict):
            raise ModelError(f"{source}: anomaly must be a JSON object, not {d!r}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelError(f"{source}: unknown anomaly settings {unknown}")
        a = cls(**d)
        thr = a.threshold
        if thr is not None and not (_number(thr) and thr > 0):
            raise ModelError(f"{source}: anomaly.threshold must be a positive number or null, not {thr!r}")
        if not (_number(a.quantile) and 0 < a.quantile < 1):
            raise ModelError(f"{source}: anomaly.quantile must be a number between 0 and 1, not {a.quantile!r}")
        if not (isinstance(a.median_size, int) and not isinstance(a.median_size, bool) and a.median_size >= 1):
            raise ModelError(f"{source}: anomaly.median_size must be a positive integer, not {a.median_size!r}")
        if a.score not in ANOMALY_SCORES:
            raise ModelError(f"{source}: anomaly.score must be one of {', '.join(ANOMALY_SCORES)}, not {a.score!r}")
        for k in a.scales:
            v = getattr(a, k)
            if not (_number(v) and v > 0):
                raise ModelError(f"{source}: anomaly.{k} must be a positive number for the {a.score} score, not {v!r}")
        for k in ("healthy_peak", "residual_median"):
            v = getattr(a, k)
            if v is not None and not (_number(v) and v > 0):
                raise ModelError(f"{source}: anomaly.{k} must be a positive number or absent, not {v!r}")
        peaks = a.healthy_peaks
        if peaks is not None and not (isinstance(peaks, list) and all(_number(p) and p > 0 for p in peaks)):
            raise ModelError(f"{source}: anomaly.healthy_peaks must be a list of positive numbers or absent, not {peaks!r}")
        heal = a.score in HEAL_SCORES
        if a.heal_flip is not None and (not isinstance(a.heal_flip, bool) or not heal):
            raise ModelError(f"{source}: anomaly.heal_flip must be true or false and only set for the heal and healed "
                             f"scores, not {a.heal_flip!r} with the {a.score} score")
        inv = a.heal_invert
        if inv is not None and (not _number(inv) or not 0 <= inv < 1 or not heal):
            raise ModelError(f"{source}: anomaly.heal_invert must be a number from 0 to below 1 and only set for the "
                             f"heal and healed scores, not {inv!r} with the {a.score} score")
        bq = a.brain_quantiles
        if bq is not None and (not heal or not isinstance(bq, list) or len(bq) < 2
                               or not all(_number(q) and math.isfinite(q) for q in bq)
                               or any(b < c for c, b in zip(bq[:-1], bq[1:], strict=True))):
            raise ModelError(f"{source}: anomaly.brain_quantiles must be a list of at least 2 finite, non-decreasing "
                             f"numbers and only set for the heal and healed scores (score: {a.score})")
        for k in ("heal_margin", "ratio_every"):
            v = getattr(a, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "heal_margin" else 1)
                                  or not heal):
                raise ModelError(f"{source}: anomaly.{k} must be a whole number (heal_margin >= 0, ratio_every >= 1) and "
                                 f"only set for the heal and healed scores, not {v!r} with the {a.score} score")
        g = a.grid_mm
        if g is not None and not (_number(g) and math.isfinite(g) and 0 < g <= 10):
            raise ModelError(f"{source}: anomaly.grid_mm must be a number of millimetres above 0 and at most 10, or "
                             f"absent, not {g!r}")
        return a


def _number(v: Any) -> bool:
    """A JSON number (int or float, not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


SLICE_FILLS = ("validated", "head")


@dataclass
class ModelConfig:
    """Everything needed to use a model besides its weights (saved as JSON next to them).

    spacing_mm: in-plane pixel size (mm) the network was trained at; volumes more than 20 % finer or coarser
    in-plane are resampled to it (engine.preprocess.NATIVE_TOLERANCE), others run on their own grid.
    slice_spacing_mm: distance (mm) between the neighbouring slices the network expects as context.
    normalization: {"method": "percentile", "percentile": p}: intensities divided by the p-th
    percentile of the volume (zero stays zero), outputs multiplied back.
    anomaly: the calibration of the anomaly heatmap (:class:`AnomalySettings`).
    intensity_profile: normalised histogram of healthy held-out volumes for the out-of-distribution check.
    slice_fill: how missing slices are filled when the model has a missing-slice head: "validated" (the VAE's and
    the head's corrections of cubic interpolation, blended with weights fitted on known slices of the same volume)
    or "head" (the head's fill as is; chosen where it beat "validated" on the validation volumes).
    float16_heads: 3D heads whose weights the ``.safetensors`` file stores as float16 (half the bytes; read back as
    float32, so the network computes as before, with weights rounded to float16): keeps the shipped model small.
    training: the training history (runs, steps, losses, calibration files): saved in ``<name>.provenance.json``,
    not in the model's JSON; read by the model card only.
    """

    architecture: dict
    name: str = "medvae"
    format_version: int = FORMAT_VERSION
    spacing_mm: float = 2.0
    slice_spacing_mm: float = 2.0
    normalization: dict = field(default_factory=lambda: {"method": "percentile", "percentile": 99.5})
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    sample_shape: list[int] = field(default_factory=lambda: [94, 116, 98])
    intensity_profile: dict = field(default_factory=dict)
    slice_fill: str = "validated"
    float16_heads: list[str] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    modality: str = "MRI T1 (brain, skull-stripped)"
    package_version: str = ""

    def to_dict(self, training: bool = True) -> dict:
        """The config as JSON data; ``training=False``: what the model's JSON file holds (no training history)."""
        return {f.name: (v.to_dict() if isinstance(v := getattr(self, f.name), AnomalySettings) else copy.deepcopy(v))
                for f in fields(self) if training or f.name != "training"}

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
        cfg = cls(**{**d, "anomaly": AnomalySettings.from_dict(d.get("anomaly", {}), source)})
        for name in ("spacing_mm", "slice_spacing_mm"):
            v = getattr(cfg, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ModelError(f"{source}: '{name}' must be a positive number of millimetres, not {v!r}")
        if cfg.slice_fill not in SLICE_FILLS:
            raise ModelError(f"{source}: slice_fill must be one of {', '.join(SLICE_FILLS)}, not {cfg.slice_fill!r}")
        if cfg.slice_fill == "head" and not cfg.architecture.get("slice_head"):
            raise ModelError(f"{source}: slice_fill 'head' needs architecture.slice_head (a missing-slice head)")
        heads = cfg.float16_heads
        if not isinstance(heads, list) or any(h not in FLOAT16_HEADS or not cfg.architecture.get(h) for h in heads):
            raise ModelError(f"{source}: float16_heads must list 3D heads the architecture has (of "
                             f"{', '.join(FLOAT16_HEADS)}), not {heads!r}")
        norm = cfg.normalization
        if norm.get("method") != "percentile" or not 50 < float(norm.get("percentile", 0)) <= 100:
            raise ModelError(f"{source}: normalization must be {{'method': 'percentile', 'percentile': 50..100}}, not {norm}")
        score = cfg.anomaly.score
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None


def provenance_path(config: str | os.PathLike) -> Path:
    """``<name>.provenance.json`` beside a model's ``<name>.json`` (or its weights, or its stem)."""
    return model_paths(config)[1].with_suffix(PROVENANCE_SUFFIX)


def read_config(config: str | os.PathLike) -> ModelConfig:
    """A model's validated config from its ``.json`` file, with the training history from ``<name>.provenance.json``
    beside it (or, for older models, from the JSON's own ``training``)."""
    config = Path(config)
    cfg = ModelConfig.from_dict(_read_json(config), source=str(config))
    prov = provenance_path(config)
    if prov.is_file():
        data = _read_json(prov)
        if not isinstance(data, dict) or not isinstance(data.get("training", {}), dict):
            raise ModelError(f"{prov}: expected a JSON object with a 'training' object")
        cfg.training = {**cfg.training, **data.get("training", {})}
    return cfg


FLOAT16_HEADS = ("denoiser", "slice_head", "slice_head_single", "heal_head")  # heads that may be stored as float16


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """Read and validate a model; returns (config, state_dict of float32 CPU tensors)."""
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
    cfg = read_config(config)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    check_state(cfg, state, str(weights))
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


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
    """Write <stem>.safetensors + <stem>.json (+ <stem>.provenance.json with the training history) atomically;
    returns the weights path. The tensors of ``cfg.float16_heads`` are stored as float16."""
    from safetensors.torch import save

    weights, config = model_paths(Path(path).with_suffix("") if Path(path).suffix else path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    half = tuple(f"{h}." for h in cfg.float16_heads)
    tensors = {k: (v.detach().cpu().half() if k.startswith(half) and v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state.items()}
    _atomic_write_bytes(weights, save(tensors, metadata={"format": "pt", "napari_medvae": str(cfg.format_version)}))
    _atomic_write_bytes(config, (json.dumps(cfg.to_dict(training=False), indent=2) + "\n").encode())
    prov = config.with_suffix(PROVENANCE_SUFFIX)
    if cfg.training:
        record = {"format_version": cfg.format_version, "model": config.name, "training": cfg.training}
        _atomic_write_bytes(prov, (json.dumps(record, indent=2) + "\n").encode())
    else:
        prov.unlink(missing_ok=True)  # no history: none left from an earlier model of that name
    return weights
