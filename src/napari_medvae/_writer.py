"""npe2 writers: image and labels layers to NIfTI / NRRD / MHA, restoring the layer's geometry."""

from __future__ import annotations

from typing import Any


def _write(path: str, data: Any, meta: dict) -> list[str]:
    import numpy as np

    from .io import Geometry, write_volume

    geo = Geometry.from_layer_kwargs(meta.get("scale"), meta.get("translate"), meta.get("affine"), meta.get("metadata"))
    return [str(write_volume(path, np.asarray(data), geo))]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer (3D) atomically with its spacing, origin and direction."""
    return _write(path, data, meta)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer (3D integer labels) atomically with its geometry."""
    return _write(path, data, meta)
