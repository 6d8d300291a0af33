"""npe2 writers: image and labels layers to NIfTI / NRRD / MHA / FreeSurfer MGZ-MGH, restoring the layer's
geometry, and, for results of the plugin's widgets, the source volume's dtype (as the CLI writes them)."""

from __future__ import annotations

from typing import Any


def _write(path: str, data: Any, meta: dict, like: Any = None) -> list[str]:
    """Write through ``service.save`` (cast to ``like`` first, when given), the one writer of result files."""
    import numpy as np

    from .io import Geometry
    from .service import save

    geo = Geometry.from_layer_kwargs(meta.get("scale"), meta.get("translate"), meta.get("affine"), meta.get("metadata"))
    # a layer read from a NIfTI file (or made from one by a widget) keeps that file's header where the grid is the
    # same (io.write_volume checks shape, voxel sizes and placement)
    source = (meta.get("metadata") or {}).get("source_path")
    return [str(save(path, np.asarray(data), geo, like=like, header_from=source if isinstance(source, str) else None))]


def _source_dtype(path: str, meta: dict):
    """The dtype recorded in the layer's metadata by the widget that made it (None: keep the data's)."""
    import numpy as np

    from .errors import VolumeWriteError
    from .output_dtype import SOURCE_DTYPE_KEY

    value = (meta.get("metadata") or {}).get(SOURCE_DTYPE_KEY)
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "uif":
        raise VolumeWriteError(
            f"cannot write {path!r}: the layer's metadata {SOURCE_DTYPE_KEY!r} is {value!r}; an integer or float "
            "numpy dtype name (e.g. 'uint8', 'int16', 'float32') is expected -- fix or delete that metadata entry"
        )
    return dtype


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer (3D) atomically with its spacing, origin and direction.

    A result layer of the Reconstruct & Denoise or Inpaint widget is written in its source's dtype
    (integers rounded and clipped), exactly as ``medvae reconstruct/denoise/inpaint`` write theirs.
    """
    return _write(path, data, meta, like=_source_dtype(path, meta))


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer (3D integer labels) atomically with its geometry."""
    return _write(path, data, meta)
