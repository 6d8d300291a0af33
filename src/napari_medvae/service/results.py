"""What each operation gives back: typed results, and how an anomaly result leaves the program.

One form of each thing everywhere: the candidate label volume's integer type (:func:`label_volume`), the JSON row
of a candidate (:func:`candidate_row`, for ``medvae anomaly --report`` and the demo), the batch manifest's fields
(:meth:`AnomalyResult.manifest_fields`), the CLI's summary line and the widget's table row (:func:`table_row`).
Imports numpy only (no torch, Qt or napari).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPORT_UNITS = "heatmap value 1.0 = the model's calibrated healthy threshold"


def label_volume(labels: np.ndarray) -> np.ndarray:
    """Candidate labels in the smallest signed integer type every format writes (int16, else int32)."""
    return labels.astype(np.int16 if labels.size == 0 or labels.max() < 32767 else np.int32)


def candidate_row(candidate: Mapping) -> dict:
    """One anomaly candidate for JSON: the engine's fields, with the centroid in the file's voxel order.

    The engine gives ``centroid_voxel_zyx`` (array order); files and their viewers count voxels
    (i, j, k), the reverse, so the row carries ``centroid_voxel_ijk`` instead.
    """
    row = dict(candidate)
    zyx = row.pop("centroid_voxel_zyx", None)
    if zyx is not None:
        row["centroid_voxel_ijk"] = [float(v) for v in reversed(list(zyx))]
    return row


def candidate_rows(candidates: Iterable[Mapping]) -> list[dict]:
    """:func:`candidate_row` of each candidate (the ``candidates`` list of the CLI report and the demo)."""
    return [candidate_row(c) for c in candidates]


def table_row(candidate: Mapping) -> tuple:
    """A candidate as the napari widget's table shows it: label, mm³ (rounded), peak, voxels, above healthy.

    The last cell is ``"yes"``/``"no"`` (peak above the model's healthy maximum, a fixed number of the model), or
    ``"n/a"`` for a model without one.
    """
    above = candidate.get("above_healthy")
    seen = "n/a" if above is None else ("yes" if above else "no")
    return (candidate["label"], round(candidate["volume_mm3"]), candidate["peak"], candidate["voxels"], seen)


@dataclass(frozen=True)
class VolumeResult:
    """A result on the input's grid: reconstruct, denoise, inpaint or uncertainty.

    ``volume``: float32 from ``run``; from ``run_file``, what was written (the input's dtype for images on its
    intensity scale). ``brain_mask``: the brain the model saw (None: the whole volume). ``extracted``: that mask was
    made by skull stripping (not given by the user). ``seconds``: time in the engine. ``outputs``: files written.
    """

    volume: np.ndarray
    brain_mask: np.ndarray | None = None
    extracted: bool = False
    seconds: float = 0.0
    outputs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class InpaintResult(VolumeResult):
    """An inpainted volume; ``slices`` and ``axis``: the missing slices filled (None for a painted mask).

    ``nothing_to_fill``: ``"auto"`` found no blank slice; ``volume`` is then the input itself, and ``where`` names the
    axis that was searched (e.g. ``axial (file axis 2)``).
    """

    slices: tuple[int, ...] | None = None
    axis: int | None = None
    nothing_to_fill: bool = False
    where: str = ""


@dataclass(frozen=True)
class SampleResult:
    """Volumes (n, z, y, x) from the prior, on the model's grid of ``spacing`` mm (z, y, x)."""

    volumes: np.ndarray
    spacing: tuple[float, float, float]
    seconds: float = 0.0
    outputs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class AnomalyResult:
    """The anomaly heatmap, its candidates and how to read them; renders itself for every caller.

    ``heatmap`` float32 (1.0 = the model's calibrated healthy limit); ``labels`` int32 (candidate k = label k, by
    peak); ``candidates``: the engine's rows (``centroid_voxel_zyx`` in array order); ``healthy_peak``: the highest
    candidate peak in the model's healthy calibration brains (None: not calibrated); ``residual_ratio``: the
    volume's median residual over the calibration's; ``warnings``: why the heatmap's scale may not hold for this
    volume. ``uncertainty``: the optional uncertainty map (0 outside an extracted brain).
    """

    heatmap: np.ndarray
    labels: np.ndarray
    candidates: list[dict] = field(default_factory=list)
    threshold: float = 1.0
    healthy_peak: float | None = None
    residual_ratio: float | None = None
    warnings: list[str] = field(default_factory=list)
    brain_mask: np.ndarray | None = None
    extracted: bool = False
    uncertainty: np.ndarray | None = None
    seconds: float = 0.0
    outputs: tuple[Path, ...] = ()

    @classmethod
    def from_engine(cls, res: Any, **extra: Any) -> AnomalyResult:
        """Wrap the engine's ``AnomalyResult`` (same fields) with the service's extras."""
        return cls(heatmap=res.heatmap, labels=res.labels, candidates=list(res.candidates), threshold=res.threshold,
                   healthy_peak=res.healthy_peak, residual_ratio=res.residual_ratio, warnings=list(res.warnings),
                   **extra)

    @property
    def n_above_healthy(self) -> int | None:
        """How many candidates peak above the model's healthy maximum (None: the model has none)."""
        if self.healthy_peak is None:
            return None
        return sum(bool(c["above_healthy"]) for c in self.candidates)

    @property
    def max_score(self) -> float:
        return float(self.heatmap.max())

    def rows(self) -> list[dict]:
        """The candidates for JSON (:func:`candidate_row`: centroid in the file's voxel order)."""
        return candidate_rows(self.candidates)

    def table(self) -> list[tuple]:
        """The candidates as the widget's table rows (:func:`table_row`)."""
        return [table_row(c) for c in self.candidates]

    def labels_out(self) -> np.ndarray:
        """The candidate labels as written to a file (:func:`label_volume`)."""
        return label_volume(self.labels)

    def to_json(self, *, input: str | None = None, model: str | None = None) -> dict:  # noqa: A002 - the key's name
        """The ``medvae anomaly --report`` document."""
        return {
            "input": input,
            "model": model,
            "threshold": self.threshold,
            "units": REPORT_UNITS,
            "healthy_peak": self.healthy_peak,
            "residual_ratio": self.residual_ratio,
            "warnings": self.warnings,
            "max_score": self.max_score,
            "n_candidates": len(self.candidates),
            "n_above_healthy": self.n_above_healthy,
            "candidates": self.rows(),
        }

    def manifest_fields(self) -> dict:
        """The fields of a ``medvae batch anomaly`` manifest line (calibration fields only where the model has them)."""
        sizes = [float(c["volume_mm3"]) for c in self.candidates]
        out: dict = {"max_score": round(self.max_score, 4), "n_candidates": len(self.candidates),
                     "largest_candidate_mm3": max(sizes) if sizes else 0.0}
        if self.n_above_healthy is not None:
            out["n_above_healthy"] = self.n_above_healthy
        if self.residual_ratio is not None:
            out["residual_ratio"] = self.residual_ratio
        if self.warnings:
            out["warnings"] = self.warnings
        return out

    def summary(self) -> str:
        """One line: ``N candidate(s) (K peaking above P, the highest in healthy brains), max score S``."""
        n = self.n_above_healthy
        above = "" if n is None else f" ({n} peaking above {self.healthy_peak:.2f}, the highest in healthy brains)"
        return f"{len(self.candidates)} candidate(s){above}, max score {self.max_score:.2f}"


__all__ = ["AnomalyResult", "InpaintResult", "SampleResult", "VolumeResult", "candidate_row", "candidate_rows",
           "label_volume", "table_row"]
