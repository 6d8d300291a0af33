"""npe2 reader: NIfTI, NRRD, MHA/MHD files and DICOM series folders, geometry kept (scale/translate/affine)."""

from __future__ import annotations

import os
from pathlib import Path


def _layer_name(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def get_reader(path: str | list[str]):
    """Return a reader for supported paths (napari calls this for every opened path), else None."""
    from .io import is_supported_path

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_supported_path(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """Read each path as an image layer: data (z, y, x) + the geometry of the file."""
    from .io import read_volume

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        arr, geo = read_volume(p)
        kwargs = geo.napari_kwargs()
        kwargs["name"] = _layer_name(Path(p))
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "source_path": str(p)}
        layers.append((arr, kwargs, "image"))
    return layers
