"""How anomaly results leave the program, shared by ``medvae`` (cli), ``medvae batch`` and ``medvae demo``:
the integer type of written candidate labels and the JSON form of candidates (the dtype of other
results: ``output_dtype``).

Imports numpy only (no torch, Qt or napari), so that cli and batch can both use it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


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


__all__ = ["candidate_row", "candidate_rows", "label_volume"]
