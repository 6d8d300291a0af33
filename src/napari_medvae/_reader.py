"""npe2 reader: NIfTI, NRRD, MHA/MHD, FreeSurfer MGZ/MGH files and DICOM series folders, geometry kept
(scale/translate/affine)."""

from __future__ import annotations

import os
from pathlib import Path


def _layer_name(path: Path) -> str:
    """The file name without its (possibly double) extension: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``."""
    from .io import SUPPORTED_EXTENSIONS

    name = path.name
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):  # .nii.gz before .nii
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _paths(path: str | os.PathLike | list) -> list[str]:
    return [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]


def get_reader(path: str | list[str]):
    """``read_layers`` for volume files and folders holding a DICOM series, else None.

    napari asks every reader about every opened path: folders without DICOM files are left to other
    readers (e.g. zarr), so this returns None for them.
    """
    from .io import is_supported_path, list_dicom_series

    paths = _paths(path)
    if not paths:
        return None
    for p in paths:
        if not is_supported_path(p):
            return None
        if Path(p).is_dir() and (p.rstrip("/\\").endswith(".zarr") or not list_dicom_series(p)):
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """Each path as an image layer (z, y, x) with the file's geometry; one layer per DICOM series."""
    from .io import list_dicom_series, read_volume

    layers = []
    for p in _paths(path):
        pp = Path(p)
        if pp.is_dir():
            series = sorted(list_dicom_series(pp))
            items = [(uid, f"{pp.name} series {i + 1}" if len(series) > 1 else pp.name) for i, uid in enumerate(series)]
        else:
            items = [(None, _layer_name(pp))]
        for uid, name in items:
            arr, geo = read_volume(pp, series_uid=uid) if uid else read_volume(pp)
            kwargs = geo.napari_kwargs()
            kwargs["name"] = name
            kwargs["metadata"] = {**kwargs.get("metadata", {}), "source_path": str(pp)}
            if uid:
                kwargs["metadata"]["dicom_series_uid"] = uid
            layers.append((arr, kwargs, "image"))
    return layers
