"""What each operation is asked to do: one frozen, typed request per operation, checked once when it is made.

A request holds the options only (no arrays, no paths): the CLI, ``medvae batch``, the demo and the widgets build
the same request from their flags or controls, and :func:`napari_medvae.service.run` /
:func:`napari_medvae.service.run_file` carry it out. Bad values raise :class:`~napari_medvae.errors.InputError`
when the request is made, before any file is read or model loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from ..errors import InputError

SKULL_MODES = ("auto", "always", "never")  # engine.prep.skullstrip's modes (that module imports torch)
UNCERTAINTY_SAMPLES = (2, 64)  # posterior samples an uncertainty map may take (the engine's limits)
SAMPLE_VOLUMES = (1, 64)  # volumes one ``sample`` request may draw (the engine's limits)


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not lo <= int(value) <= hi:
        raise InputError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class VolumeRequest:
    """Options every volume operation shares.

    ``axis``: the napari array axis slices are taken along (0-2), None for automatic (the largest spacing), or the
    user's text (``'axial'``, a file axis ``'0'``-``'2'``), resolved for each file's orientation by ``run_file``.
    ``force``: run on volumes unlike the training data. ``skull_strip``: auto / always / never (heads with skull:
    the model sees the extracted brain only, the rest of the head keeps its voxels).
    """

    axis: int | str | None = None
    force: bool = False
    skull_strip: str = "auto"

    def __post_init__(self) -> None:
        if self.skull_strip not in SKULL_MODES:
            raise InputError(f"skull stripping must be one of {', '.join(SKULL_MODES)}, not {self.skull_strip!r}")
        if isinstance(self.axis, Integral) and not isinstance(self.axis, bool) and not 0 <= int(self.axis) <= 2:
            raise InputError(f"the slice axis must be 0, 1 or 2 (napari array axis), not {self.axis!r}")


@dataclass(frozen=True)
class ReconstructRequest(VolumeRequest):
    """The model's healthy-looking version of a volume, on the input's grid and intensity scale."""

    operation = "reconstruct"


@dataclass(frozen=True)
class DenoiseRequest(VolumeRequest):
    """Noise removed, structure (lesions) kept, on the input's grid and intensity scale."""

    operation = "denoise"


@dataclass(frozen=True)
class InpaintRequest(VolumeRequest):
    """Fill a painted mask (given to ``run``/``run_file``) or missing slices.

    ``missing_slices``: slice numbers along ``axis``, ``"auto"`` (the blank slices), or None when a mask is given.
    ``symmetry``: painted regions also follow the other hemisphere's mirror image. ``only_filled``: the result is 0
    outside the filled voxels. ``if_none_blank``: with ``"auto"`` and no blank slice, ``"copy"`` writes the input
    unchanged (``medvae inpaint``), ``"skip"`` writes nothing (``medvae batch``).
    """

    operation = "inpaint"
    missing_slices: tuple[int, ...] | str | None = None
    symmetry: bool = True
    only_filled: bool = False
    if_none_blank: str = "copy"

    def __post_init__(self) -> None:
        super().__post_init__()
        ms = self.missing_slices
        if isinstance(ms, str) and ms != "auto":
            raise InputError(f"missing slices must be slice numbers or 'auto', not {ms!r}")
        if ms is not None and not isinstance(ms, str):
            object.__setattr__(self, "missing_slices", tuple(int(i) for i in ms))
        if ms is not None and not self.symmetry:
            raise InputError("--no-symmetry applies to painted masks only, not to missing slices")
        if self.if_none_blank not in ("copy", "skip"):
            raise InputError(f"if_none_blank must be 'copy' or 'skip', not {self.if_none_blank!r}")


@dataclass(frozen=True)
class AnomalyRequest(VolumeRequest):
    """Anomaly heatmap (1.0 = the model's calibrated healthy limit) and the candidates above ``threshold``.

    ``uncertainty_samples``: also an uncertainty map from that many posterior samples (None: none).
    """

    operation = "anomaly"
    threshold: float = 1.0
    uncertainty_samples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, Real) or not self.threshold > 0:
            raise InputError(f"threshold must be a positive number, not {self.threshold}")
        if self.uncertainty_samples is not None:
            _integer("samples", self.uncertainty_samples, *UNCERTAINTY_SAMPLES)


@dataclass(frozen=True)
class UncertaintyRequest(VolumeRequest):
    """Per-voxel standard deviation over ``samples`` posterior samples drawn with ``seed``."""

    operation = "uncertainty"
    samples: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _integer("samples", self.samples, *UNCERTAINTY_SAMPLES)


@dataclass(frozen=True)
class SampleRequest:
    """``n`` new volumes decoded from the model's prior, drawn with ``seed``, on the model's own grid."""

    operation = "sample"
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _integer("number of samples", self.n, *SAMPLE_VOLUMES)


Request = ReconstructRequest | DenoiseRequest | InpaintRequest | AnomalyRequest | UncertaintyRequest | SampleRequest

__all__ = ["SKULL_MODES", "AnomalyRequest", "DenoiseRequest", "InpaintRequest", "ReconstructRequest", "Request",
           "SampleRequest", "UncertaintyRequest", "VolumeRequest"]
