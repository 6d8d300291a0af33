"""Finding volumes: the one walk over folders that ``medvae batch``, the training commands and the Model widget share.

A volume is a supported file (``io.SUPPORTED_EXTENSIONS``) or a folder of DICOM files without volume files.
Hidden files and folders (names starting with '.') are ignored. Only the standard library and ``io``'s extension
list are used (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

DICOM_OUTPUT_EXT = ".nii.gz"  # a DICOM series folder's output file gets this extension


@dataclass(frozen=True)
class Item:
    """One volume of a folder: its path, and its relative input/output paths (POSIX strings)."""

    path: Path
    rel: str
    out_rel: str


def split_ext(name: str) -> tuple[str, str] | None:
    """``a.nii.gz`` -> (``a``, ``.nii.gz``) for a supported volume extension (longest match), else None."""
    from ..io import SUPPORTED_EXTENSIONS

    lower = name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return None


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_volumes(input_dir: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None) -> list[Item]:
    """Sorted volumes under ``input_dir`` (recursively): supported files, plus folders of DICOM files (one volume each).

    Hidden files/folders (names starting with '.') and the ``exclude`` folder are ignored.
    """
    root = Path(input_dir).resolve()
    skip = Path(exclude).resolve() if exclude is not None else None
    items: list[Item] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (skip is None or here / d != skip))
        files = [f for f in sorted(filenames) if not f.startswith(".")]
        volumes = [f for f in files if split_ext(f) is not None]
        for f in volumes:
            rel = (here / f).relative_to(root).as_posix()
            items.append(Item(here / f, rel, rel))
        if not volumes and here != root and files and any(_looks_like_dicom(here / f) for f in files[:5]):
            rel = here.relative_to(root).as_posix()
            items.append(Item(here, rel, rel + DICOM_OUTPUT_EXT))
            dirnames[:] = []  # the series folder is one volume
    return sorted(items, key=lambda it: it.rel)


def volume_paths(items: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Files and folders named by a user -> volume paths: a folder gives every volume under it (:func:`find_volumes`).

    Raises InputError for a folder without volumes, or a path that is neither a volume file nor a folder.
    """
    from ..io import SUPPORTED_EXTENSIONS, is_supported_path

    files: list[str] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = [str(p / v.rel) for v in find_volumes(p)]  # the folder as the user named it
            if not found:
                raise InputError(f"{p}: no volumes ({', '.join(SUPPORTED_EXTENSIONS)}) in this folder")
            files.extend(found)
        elif p.is_file() and is_supported_path(p):
            files.append(str(p))
        else:
            raise InputError(f"{p}: not a supported volume file or folder")
    return files


__all__ = ["DICOM_OUTPUT_EXT", "Item", "find_volumes", "split_ext", "volume_paths"]
