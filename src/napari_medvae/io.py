"""Read and write 3D medical volumes with their geometry (NIfTI, NRRD, MHA/MHD, FreeSurfer MGH/MGZ,
DICOM series).

Conventions (the public API's contract, with the docstrings below):

* Arrays are in (z, y, x) order, the order of ``SimpleITK.GetArrayFromImage`` and of napari.
* :class:`Geometry` keeps ``spacing`` in array order (z, y, x) in millimetres, but ``origin`` and
  ``direction`` in SimpleITK's physical (LPS, x, y, z) order, so they can be handed to SimpleITK
  unchanged.  :meth:`Geometry.napari_kwargs` converts to napari's (z, y, x) world order.

This module imports no Qt, napari or torch: the CLI, the widgets and the tests all use it.
Errors are :class:`~napari_medvae.errors.VolumeReadError` / ``VolumeWriteError`` (invalid
geometry values: :class:`~napari_medvae.errors.InputError`); their messages name the file, say
what was wrong and what is expected, and never carry a raw ITK traceback.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import secrets
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from napari_medvae.errors import InputError, VolumeReadError, VolumeWriteError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "MAX_VOXELS",
    "Geometry",
    "read_volume",
    "write_volume",
    "check_output_path",
    "is_supported_path",
    "read_on_grid",
    "list_dicom_series",
]

#: File extensions that :func:`read_volume` and :func:`write_volume` accept (DICOM: a directory).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".mgz", ".mgh")

#: Largest volume (voxels) that :func:`read_volume` accepts; larger headers are refused unread.
MAX_VOXELS: int = 2**31

# Tolerance for "orthonormal" direction matrices: file formats store them in float32 (NIfTI).
_ORTHO_TOL = 1e-4

_IDENTITY9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# SimpleITK scalar pixel types -> numpy dtype (used to size a volume before reading it).
_SCALAR_DTYPES: dict[int, np.dtype] = {
    sitk.sitkUInt8: np.dtype(np.uint8),
    sitk.sitkInt8: np.dtype(np.int8),
    sitk.sitkUInt16: np.dtype(np.uint16),
    sitk.sitkInt16: np.dtype(np.int16),
    sitk.sitkUInt32: np.dtype(np.uint32),
    sitk.sitkInt32: np.dtype(np.int32),
    sitk.sitkUInt64: np.dtype(np.uint64),
    sitk.sitkInt64: np.dtype(np.int64),
    sitk.sitkFloat32: np.dtype(np.float32),
    sitk.sitkFloat64: np.dtype(np.float64),
}
_COMPLEX_IDS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}

_IO_BY_EXT = {
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
}
_COMPRESS_BY_EXT = {".nii": False, ".nii.gz": True, ".nrrd": True, ".mha": True, ".mhd": False}
# FreeSurfer volumes, read and written with nibabel (.mgz is gzip-compressed .mgh)
_MGH_EXTS = (".mgz", ".mgh")
_NIFTI_EXTS = (".nii", ".nii.gz")


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _floats(name: str, values: Any, n: int) -> tuple[float, ...]:
    """Coerce ``values`` to a tuple of ``n`` finite floats or raise InputError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise InputError(f"geometry {name} must be {n} numbers; got {values!r}") from exc
    if arr.size != n:
        raise InputError(f"geometry {name} must have {n} values; got {arr.size} ({values!r})")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"geometry {name} must be finite numbers; got {arr.tolist()}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel array sits in physical space.

    * ``spacing``: voxel size in mm, array order (z, y, x).
    * ``origin``: physical position (mm) of voxel (0, 0, 0), SimpleITK/LPS order (x, y, z).
    * ``direction``: 3x3 direction cosines, row-major, SimpleITK order (column j is the physical
      direction of the file's j-th voxel axis, i.e. array axis ``2 - j``).

    Physical point of array index (z, y, x):
    ``origin + D @ (spacing_xyz * (x, y, z))`` -- exactly SimpleITK's
    ``TransformContinuousIndexToPhysicalPoint``.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY9

    def __post_init__(self) -> None:
        spacing = _floats("spacing", self.spacing, 3)
        if any(s <= 0 for s in spacing):
            raise InputError(f"geometry spacing must be positive (mm, z, y, x); got {list(spacing)}")
        origin = _floats("origin", self.origin, 3)
        direction = _floats("direction", self.direction, 9)
        d = np.asarray(direction).reshape(3, 3)
        err = float(np.abs(d.T @ d - np.eye(3)).max())
        if err > _ORTHO_TOL:
            raise InputError(
                "geometry direction must be an orthonormal 3x3 matrix (9 values, row-major); "
                f"got {[round(v, 6) for v in direction]} (deviation from orthonormal {err:.2g})"
            )
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # -- construction / serialisation ---------------------------------------------------------

    @classmethod
    def identity(cls, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Geometry:
        """Geometry with origin 0 and identity direction; ``spacing`` in mm, (z, y, x)."""
        return cls(spacing=tuple(spacing), origin=(0.0, 0.0, 0.0), direction=_IDENTITY9)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-friendly dict: ``{"spacing": [z,y,x], "origin": [x,y,z], "direction": [9]}``."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`; raises InputError on missing or invalid values."""
        if isinstance(d, Geometry):
            return d
        if not isinstance(d, Mapping):
            raise InputError(
                f"geometry must be a mapping with spacing/origin/direction; got {type(d).__name__}"
            )
        missing = [k for k in ("spacing", "origin", "direction") if k not in d]
        if missing:
            raise InputError(
                f"geometry is missing {', '.join(missing)}; expected keys spacing (z,y,x mm), "
                "origin (x,y,z mm) and direction (9 values)"
            )
        return cls(spacing=d["spacing"], origin=d["origin"], direction=d["direction"])

    # -- conversions --------------------------------------------------------------------------

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction as a 3x3 array (SimpleITK order)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction is exactly the identity."""
        return tuple(self.direction) == _IDENTITY9

    def index_to_world(self, zyx: Sequence[float]) -> tuple[float, float, float]:
        """Physical (x, y, z) mm of continuous array index (z, y, x), as SimpleITK computes it."""
        idx = np.asarray(zyx, dtype=np.float64).reshape(3)[::-1]
        p = np.asarray(self.origin) + self.direction_matrix @ (np.asarray(self.spacing[::-1]) * idx)
        return (float(p[0]), float(p[1]), float(p[2]))

    def world_to_index(self, xyz: Sequence[float]) -> tuple[float, float, float]:
        """Continuous array index (z, y, x) of physical point (x, y, z) mm (inverse of above)."""
        p = np.asarray(xyz, dtype=np.float64).reshape(3) - np.asarray(self.origin)
        idx = np.linalg.solve(self.direction_matrix, p) / np.asarray(self.spacing[::-1])
        return (float(idx[2]), float(idx[1]), float(idx[0]))

    def napari_kwargs(self) -> dict[str, Any]:
        """Layer keyword arguments placing the array in napari's world (z, y, x order, mm).

        napari maps a data index to ``affine @ (index * scale + translate)``.  ``translate`` is
        the origin reversed to (z, y, x); when the direction is not the identity, ``affine`` is
        a 4x4 matrix whose linear part is the direction in (z, y, x) order and whose translation
        column keeps the origin fixed, so world = R @ (index * scale) + origin_zyx -- the
        SimpleITK physical point with its coordinates reversed.
        """
        translate = list(self.origin[::-1])
        kwargs: dict[str, Any] = {
            "scale": list(self.spacing),
            "translate": translate,
            "metadata": {"medvae_geometry": self.to_dict()},
        }
        if not self.is_axis_aligned:
            rot = self.direction_matrix[::-1, ::-1]
            t = np.asarray(translate)
            affine = np.eye(4)
            affine[:3, :3] = rot
            affine[:3, 3] = t - rot @ t
            kwargs["affine"] = affine
        return kwargs

    @classmethod
    def from_layer_kwargs(
        cls,
        scale: Sequence[float] | None,
        translate: Sequence[float] | None,
        affine: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Geometry:
        """Geometry of a napari layer (3D, (z, y, x) order).

        ``metadata["medvae_geometry"]`` (written by :meth:`napari_kwargs`) is used as-is for an
        exact round trip, unless the layer's scale/translate/affine no longer match it (the
        user changed them), in which case the geometry is rebuilt from those.  ``affine`` may be
        a 3x3 / 4x4 array or a napari ``Affine`` (anything with ``affine_matrix``).
        """
        meta_geom = None
        if metadata is not None and metadata.get("medvae_geometry") is not None:
            meta_geom = cls.from_dict(metadata["medvae_geometry"])
        if scale is None and translate is None and affine is None:
            return meta_geom if meta_geom is not None else cls.identity()
        built = cls._from_napari(scale, translate, affine)
        if meta_geom is not None and _geometries_close(meta_geom, built):
            return meta_geom
        return built

    @classmethod
    def _from_napari(cls, scale: Any, translate: Any, affine: Any) -> Geometry:
        s = np.ones(3) if scale is None else np.asarray(scale, dtype=np.float64).ravel()
        t = np.zeros(3) if translate is None else np.asarray(translate, dtype=np.float64).ravel()
        if s.size != 3 or t.size != 3:
            raise InputError(
                f"a 3D layer is expected (scale and translate with 3 values); got scale {s.tolist()}, "
                f"translate {t.tolist()}"
            )
        lin = np.eye(3)
        shift = np.zeros(3)
        if affine is not None:
            a = np.asarray(getattr(affine, "affine_matrix", affine), dtype=np.float64)
            if a.shape == (4, 4):
                lin, shift = a[:3, :3], a[:3, 3]
            elif a.shape == (3, 3):
                lin = a
            else:
                raise InputError(f"layer affine must be 3x3 or 4x4 for a 3D layer; got shape {a.shape}")
        m = lin @ np.diag(s)  # world = m @ index + origin
        origin_zyx = lin @ t + shift
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
            raise InputError(f"layer scale/affine give a degenerate voxel size {spacing.tolist()}")
        rot = m / spacing
        if np.abs(rot.T @ rot - np.eye(3)).max() > _ORTHO_TOL:
            raise InputError(
                "layer affine has shear or is not a rotation; a volume with orthogonal voxel axes "
                "is expected (remove the shear or resample the layer)"
            )
        direction = rot[::-1, ::-1]
        return cls(spacing=tuple(spacing), origin=tuple(origin_zyx[::-1]), direction=tuple(direction.ravel()))


def _geometries_close(a: Geometry, b: Geometry) -> bool:
    return (
        np.allclose(a.spacing, b.spacing, rtol=1e-6, atol=1e-9)
        and np.allclose(a.origin, b.origin, rtol=1e-6, atol=1e-6)
        and np.allclose(a.direction, b.direction, rtol=0, atol=1e-6)
    )


def _geometry_from_image(image: sitk.Image) -> Geometry:
    return Geometry(
        spacing=tuple(image.GetSpacing())[::-1],
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
    )


def _apply_geometry(image: sitk.Image, geometry: Geometry) -> None:
    image.SetSpacing(tuple(geometry.spacing[::-1]))
    image.SetOrigin(tuple(geometry.origin))
    image.SetDirection(tuple(geometry.direction))


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _split_ext(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(stem, supported extension in lower case) of a file name, or None if unsupported."""
    name = Path(path).name
    lower = name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def _supported_text() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS)


def is_supported_path(path: str | os.PathLike[str]) -> bool:
    """True for an existing directory (a possible DICOM series) or a file name with a supported
    extension (the file need not exist)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return True
    return _split_ext(p) is not None


def check_output_path(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Validate an output file path before any work is done; return it resolved.

    Refuses (VolumeWriteError) an unsupported extension, a missing or read-only parent
    directory, an existing directory at the path, and a path that is the same file as one of
    ``inputs`` (the result must never overwrite its source).
    """
    p = Path(path).expanduser()
    if _split_ext(p) is None:
        raise VolumeWriteError(
            f"cannot write {str(p)!r}: unsupported extension; use one of {_supported_text()}"
        )
    parent = p.parent.resolve()
    if not parent.exists():
        raise VolumeWriteError(
            f"cannot write {str(p)!r}: directory {str(parent)!r} does not exist; create it first"
        )
    if not parent.is_dir():
        raise VolumeWriteError(f"cannot write {str(p)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VolumeWriteError(
            f"cannot write {str(p)!r}: directory {str(parent)!r} is not writable; choose another output directory"
        )
    resolved = parent / p.name
    if resolved.is_dir():
        raise VolumeWriteError(f"cannot write {str(p)!r}: it is an existing directory; give a file name")
    for inp in inputs:
        if inp is None:
            continue
        q = Path(inp).expanduser()
        same = False
        try:
            same = resolved.exists() and q.exists() and os.path.samefile(resolved, q)
        except OSError:
            same = False
        if same or resolved.resolve() == q.resolve():
            raise VolumeWriteError(
                f"output {str(p)!r} would overwrite the input {str(q)!r}; choose another output path"
            )
    return resolved


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _itk_reason(exc: BaseException) -> str:
    """One-line reason from a SimpleITK/ITK exception message (no file/line noise)."""
    text = str(exc)
    nrrd = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("[nrrd]")]
    if nrrd:
        return re.sub(r"^\[nrrd\]\s*\w+:\s*", "", nrrd[-1])
    for marker in ("ITK ERROR:", "sitk::ERROR:"):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    text = re.sub(r"\s*Reason:\s*No such file or directory\s*$", "", text.strip())
    text = " ".join(text.split())
    return text[:300] or exc.__class__.__name__


def _available_memory() -> int | None:
    """Bytes of RAM available now (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def _check_pixels(where: str, pixel_id: int, components: int) -> np.dtype:
    """The numpy dtype of a scalar pixel type; refuse complex and multi-component pixels."""
    if pixel_id in _COMPLEX_IDS:
        raise VolumeReadError(
            f"{where} has complex-valued voxels; a real-valued (magnitude) volume is expected"
        )
    if components > 1:
        raise VolumeReadError(
            f"{where} has {components} values per voxel (RGB/vector image); a scalar (grey-level) "
            "3D volume is expected"
        )
    dtype = _SCALAR_DTYPES.get(pixel_id)
    if dtype is None:
        # e.g. a one-component vector type: size it as its component type
        name = sitk.GetPixelIDValueAsString(pixel_id)
        for pid, dt in _SCALAR_DTYPES.items():
            if sitk.GetPixelIDValueAsString(pid) in name:
                return dt
        raise VolumeReadError(f"{where} has an unsupported pixel type ({name}); a scalar volume is expected")
    return dtype


def _check_size(
    where: str, shape_zyx: Sequence[int], dtype: np.dtype, total_bytes: int | None = None
) -> None:
    """Refuse, before allocating, a volume larger than MAX_VOXELS or than the available RAM."""
    nvox = math.prod(int(s) for s in shape_zyx)
    nbytes = nvox * dtype.itemsize
    shape_txt = " x ".join(str(int(s)) for s in shape_zyx)
    if nvox > MAX_VOXELS:
        raise VolumeReadError(
            f"{where}: header claims a {shape_txt} (z x y x x) volume ({nvox:.3g} voxels, "
            f"{_fmt_bytes(nbytes)}); at most {MAX_VOXELS:.3g} voxels are accepted -- the file is corrupt "
            "or too large to load"
        )
    avail = _available_memory()
    need = max(nbytes, total_bytes or 0)
    if avail is not None and need > avail:
        raise VolumeReadError(
            f"{where}: header claims a {shape_txt} (z x y x x) volume needing {_fmt_bytes(need)}, more "
            f"than the {_fmt_bytes(avail)} of memory available; free memory or crop the volume first"
        )


def _nifti_chunks(path: Path, size: int):
    """The (decompressed) bytes of a NIfTI file, ``size`` at a time; a damaged .gz raises VolumeReadError."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(size):
                yield chunk
    except (EOFError, OSError, zlib.error) as exc:
        raise VolumeReadError(
            f"cannot read {str(path)!r}: the compressed file is truncated or corrupt ({exc}); "
            "re-export or re-download it"
        ) from None


def _nifti_head(path: Path) -> bytes:
    """The first 544 bytes (room for a NIfTI-2 header) of a NIfTI file, decompressed."""
    chunks = _nifti_chunks(path, 544)
    try:
        return next(chunks, b"")
    finally:
        chunks.close()


def _nifti_header(head: bytes, check: bool = True):
    import nibabel as nib

    with warnings.catch_warnings():  # nibabel's remarks on odd headers: ITK or our checks give the verdict
        warnings.simplefilter("ignore")
        try:
            return nib.Nifti1Header.from_fileobj(io.BytesIO(head), check=check)
        except Exception:
            return nib.Nifti2Header.from_fileobj(io.BytesIO(head), check=check)


def _scan_nifti(path: Path) -> int:
    """Verify a NIfTI file holds all its voxels and count its NaN/Inf voxels.

    ITK silently zero-fills truncated data and reads NaN/Inf voxels as 0: the first is refused here,
    the second is counted so the reader can say so. Returns the number of non-finite voxels.
    """
    gz = path.name.lower().endswith(".gz")
    head = _nifti_head(path)
    try:
        hdr = _nifti_header(head)
        offset = int(hdr.get_data_offset())
        dtype = hdr.get_data_dtype()
        expected = offset + math.prod(int(s) for s in hdr.get_data_shape()) * dtype.itemsize
    except Exception:  # nibabel could not parse the header: leave the verdict to ITK
        return 0
    floating = dtype.kind == "f"
    got, bad, rest = 0, 0, b""
    if gz or floating:
        for chunk in _nifti_chunks(path, 1 << 22):
            if floating:  # voxel bytes of this chunk (from the data offset on), whole voxels only
                lo = max(0, offset - got)
                if lo < len(chunk):
                    buf = rest + chunk[lo:]
                    cut = len(buf) - len(buf) % dtype.itemsize
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:cut], dtype=dtype))))
                    rest = buf[cut:]
            got += len(chunk)
    else:
        got = path.stat().st_size
    if got < expected:
        raise VolumeReadError(
            f"cannot read {str(path)!r}: the file is truncated ({got} of {expected} bytes of header + "
            "voxel data); re-export or re-download it"
        )
    return bad


def _check_nifti_spacing(path: Path) -> None:
    """Refuse zero, negative or non-finite voxel sizes (pixdim) in a NIfTI header.

    ITK silently replaces them (zero -> 1 mm, negative -> its absolute value with the axes
    reordered), which would put the result on another grid than the one the file describes.
    """
    try:
        hdr = _nifti_header(_nifti_head(path), check=False)
        ndim = int(hdr["dim"][0])
        pixdim = [float(v) for v in hdr["pixdim"][1 : 1 + min(3, max(ndim, 0))]]
    except Exception:  # unreadable header: ITK's reader gives the verdict
        return
    if any(not math.isfinite(v) or v <= 0 for v in pixdim):
        raise VolumeReadError(
            f"{str(path)!r}: the header gives voxel sizes (pixdim) {pixdim} mm; positive sizes are expected "
            "-- fix the header (e.g. with nibabel or fslhd/fsledithd)"
        )


def list_dicom_series(directory: str | os.PathLike[str]) -> dict[str, int]:
    """DICOM series in ``directory`` (not recursive): ``{series_instance_uid: number_of_files}``.

    ITK's own warning for a folder without any ("No Series were found") is not printed: the callers say it in
    their own words."""
    d = str(Path(directory).expanduser())
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(d) or ()
        return {uid: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, uid)) for uid in uids}
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot scan {d!r} for DICOM files: {_itk_reason(exc)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_dicom_dir(path: Path, series_uid: str | None) -> sitk.Image:
    series = list_dicom_series(path)
    if not series:
        raise VolumeReadError(
            f"no DICOM series found in directory {str(path)!r}; expected a directory of DICOM slices "
            f"or a volume file ({_supported_text()})"
        )
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid} ({n} files)" for uid, n in series.items())
            raise VolumeReadError(
                f"directory {str(path)!r} holds {len(series)} DICOM series: {listing}. "
                "Choose one with series_uid (CLI: --series-uid) or put each series in its own directory"
            )
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise VolumeReadError(
            f"DICOM series {series_uid!r} is not in {str(path)!r}; it holds: {', '.join(series)}"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_uid)
    where = f"DICOM series {series_uid} in {str(path)!r}"
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    try:
        info.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot read {where}: {_itk_reason(exc)}") from None
    dtype = _check_pixels(where, info.GetPixelID(), info.GetNumberOfComponents())
    size = list(info.GetSize()) + [1] * (3 - info.GetDimension())
    _check_size(where, (size[2] * len(files), size[1], size[0]), dtype)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot read {where}: {_itk_reason(exc)}") from None


def _dims(size: Sequence[int]) -> str:
    """A file's voxel counts in the file's own axis order (i x j x k), as other tools print them."""
    return " x ".join(str(int(n)) for n in size)


def _read_file(path: Path, ext: str, volume_index: int | None) -> sitk.Image:
    where = repr(str(path))
    if ext in (".nii", ".nii.gz"):
        _check_nifti_spacing(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeReadError(
            f"cannot read {where}: {_itk_reason(exc)} (not a valid {ext} file, or corrupt)"
        ) from None
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    shape = size[::-1]
    spacing = [float(v) for v in reader.GetSpacing()]
    if any(not math.isfinite(v) or v == 0 for v in spacing[:3]):
        raise VolumeReadError(
            f"{where}: the header gives voxel spacing {spacing[:3]} mm (i, j, k); non-zero finite spacing "
            "is expected -- fix the header"
        )
    dtype = _check_pixels(where, reader.GetPixelID(), reader.GetNumberOfComponents())
    if dim < 3 or (dim == 3 and 0 in size):
        raise VolumeReadError(f"{where} is {dim}D ({_dims(size)} voxels); a 3D volume is expected")
    if dim > 4:
        raise VolumeReadError(
            f"{where} is {dim}D ({_dims(size)} voxels); a 3D volume (or a 4D series of them) is expected"
        )
    if dim == 4:
        nvol = size[3]
        if volume_index is None and nvol != 1:
            raise VolumeReadError(
                f"{where} is 4D: it holds {nvol} volumes of {_dims(size[:3])} voxels; pass volume_index "
                f"(0..{nvol - 1}; CLI: --volume-index) to choose one"
            )
        vi = 0 if volume_index is None else int(volume_index)
        if not 0 <= vi < nvol:
            raise VolumeReadError(
                f"volume_index {vi} is out of range: {where} holds {nvol} volumes (0..{nvol - 1})"
            )
        _check_size(where, shape[1:], dtype, total_bytes=math.prod(size) * dtype.itemsize)
        reader.SetExtractIndex([0, 0, 0, vi])
        reader.SetExtractSize([size[0], size[1], size[2], 0])
    else:
        if volume_index is not None and int(volume_index) != 0:
            raise VolumeReadError(
                f"volume_index {volume_index} is out of range: {where} is a single 3D volume (use 0 or none)"
            )
        _check_size(where, shape, dtype)
    nonfinite = _scan_nifti(path) if ext in (".nii", ".nii.gz") else 0
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(
            f"cannot read the voxel data of {where} (truncated or corrupt file?): {_itk_reason(exc)}"
        ) from None
    if nonfinite:
        warnings.warn(f"{where} has {nonfinite} NaN/Inf voxels; they are read as 0", stacklevel=3)
    return image


# --------------------------------------------------------------------------------------------
# FreeSurfer MGH / MGZ (nibabel parses the header; the voxels are read here, one frame only)
# --------------------------------------------------------------------------------------------

# FreeSurfer (and nibabel) give positions in RAS; SimpleITK and Geometry in LPS: flip x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

# MGH voxel types (header "type" codes) that can be read
_MGH_TYPES = {0: "uchar (uint8)", 1: "int (int32)", 3: "float (float32)", 4: "short (int16)", 10: "ushort (uint16)"}


def _mgh_open(path: Path, ext: str):
    """The file's (decompressed, for .mgz) byte stream."""
    return gzip.open(path, "rb") if ext == ".mgz" else open(path, "rb")


def _mgh_damaged(path: Path, ext: str, exc: BaseException) -> VolumeReadError:
    reason = " ".join(str(exc).split())[:300] or exc.__class__.__name__
    return VolumeReadError(
        f"cannot read {str(path)!r}: not a valid {ext} file, or truncated or corrupt ({reason}); "
        "re-export or re-download it"
    )


def _mgh_geometry(hdr: Any) -> Geometry:
    """Geometry of an MGH header: FreeSurfer's centre-based RAS geometry turned into LPS origin/direction.

    FreeSurfer places the volume's centre voxel, ``dims / 2`` (i, j, k), at ``Pxyz_c`` (RAS mm);
    ``Mdc`` holds the RAS direction of each voxel axis (one per row) and ``delta`` the voxel sizes.
    Computed in float64 from the header's float32 fields.
    """
    delta = np.asarray(hdr["delta"], dtype=np.float64)
    mdc = np.asarray(hdr["Mdc"], dtype=np.float64).T  # column j: RAS direction of voxel axis j
    dims = np.asarray(hdr["dims"][:3], dtype=np.float64)
    origin_ras = np.asarray(hdr["Pxyz_c"], dtype=np.float64) - mdc @ (delta * dims / 2.0)
    return Geometry(
        spacing=tuple(delta[::-1]),
        origin=tuple(_RAS_TO_LPS @ origin_ras),
        direction=tuple((_RAS_TO_LPS @ mdc).ravel()),
    )


def _read_mgh(path: Path, ext: str, volume_index: int | None) -> tuple[np.ndarray, Geometry]:
    """Read one 3D frame of a FreeSurfer .mgh/.mgz file: (z, y, x) array in native byte order, Geometry.

    The header is checked (version, dimensions, voxel type, size against memory) before any voxel
    is read; a file shorter than its header says is refused, NaN/Inf voxels are read as 0 (with a
    warning), as for NIfTI.
    """
    from nibabel.freesurfer.mghformat import DATA_OFFSET, MGHHeader

    where = repr(str(path))
    try:
        with _mgh_open(path, ext) as fh:
            head = fh.read(DATA_OFFSET)
            if len(head) < DATA_OFFSET:
                raise VolumeReadError(
                    f"cannot read {where}: the file ends inside its {DATA_OFFSET}-byte MGH header "
                    f"({len(head)} bytes); not a valid {ext} file, or truncated"
                )
            with warnings.catch_warnings():  # nibabel's remarks on odd headers: the checks below decide
                warnings.simplefilter("ignore")
                hdr = MGHHeader(head, check=False)
            version = int(hdr["version"])
            if version != 1:
                raise VolumeReadError(
                    f"cannot read {where}: not a FreeSurfer MGH header (version field {version}, expected 1); "
                    "the file is corrupt or not an MGH volume"
                )
            nx, ny, nz, nframes = (int(v) for v in hdr["dims"])
            if min(nx, ny, nz, nframes) < 1:
                raise VolumeReadError(
                    f"cannot read {where}: the header gives dimensions {[nx, ny, nz, nframes]} (i, j, k, frames); "
                    "positive sizes are expected -- the file is corrupt"
                )
            code = int(hdr["type"])
            if code not in _MGH_TYPES:
                raise VolumeReadError(
                    f"{where} has MGH voxel type code {code}; one of {', '.join(_MGH_TYPES.values())} is expected"
                )
            file_dtype = hdr.get_data_dtype()  # big-endian
            if nframes > 1 and volume_index is None:
                raise VolumeReadError(
                    f"{where} is 4D: it holds {nframes} volumes of shape {(nz, ny, nx)}; pass volume_index "
                    f"(0..{nframes - 1}; CLI: --volume-index) to choose one"
                )
            vi = 0 if volume_index is None else int(volume_index)
            if nframes == 1 and vi != 0:
                raise VolumeReadError(
                    f"volume_index {volume_index} is out of range: {where} is a single 3D volume (use 0 or none)"
                )
            if not 0 <= vi < nframes:
                raise VolumeReadError(
                    f"volume_index {vi} is out of range: {where} holds {nframes} volumes (0..{nframes - 1})"
                )
            _check_size(where, (nz, ny, nx), file_dtype.newbyteorder("="))
            try:
                geometry = _mgh_geometry(hdr)
            except InputError as exc:
                raise VolumeReadError(f"{where} has invalid geometry: {exc}") from None
            # MGH stores i fastest (Fortran order of (i, j, k, frame)), i.e. C order of (frame, k, j, i)
            array = np.empty((nz, ny, nx), dtype=file_dtype)
            if vi:
                fh.seek(DATA_OFFSET + vi * array.nbytes)
            buf = memoryview(array.reshape(-1).view(np.uint8))
            got = 0  # in 16 MiB pieces: gzip's readinto would otherwise hold a second copy of the voxels
            while got < array.nbytes and (n := fh.readinto(buf[got : got + (1 << 24)])):
                got += n
    except VolumeReadError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, KeyError) as exc:
        raise _mgh_damaged(path, ext, exc) from None
    if got < array.nbytes:
        raise VolumeReadError(
            f"cannot read {where}: the file is truncated ({got} of {array.nbytes} bytes of voxel data"
            f"{f' for volume {vi}' if nframes > 1 else ''}); re-export or re-download it"
        )
    if not array.dtype.isnative:
        array = array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))
    if array.dtype.kind == "f":
        nonfinite = 0
        for plane in array:  # one slice at a time: no volume-sized mask
            bad = ~np.isfinite(plane)
            if bad.any():
                nonfinite += int(np.count_nonzero(bad))
                plane[bad] = 0
        if nonfinite:
            warnings.warn(f"{where} has {nonfinite} NaN/Inf voxels; they are read as 0", stacklevel=3)
    return array, geometry


def read_volume(
    path: str | os.PathLike[str], *, volume_index: int | None = None, series_uid: str | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read a 3D volume file (.nii, .nii.gz, .nrrd, .mha, .mhd, .mgz, .mgh) or a DICOM series directory.

    Returns the voxel array in (z, y, x) order with the file's dtype, and its :class:`Geometry`.
    The header is checked before any voxel is read: 2D, RGB/vector, complex and oversized images
    are refused.  For a 4D file pass ``volume_index`` to pick one 3D volume; for a directory
    with several DICOM series pass ``series_uid``.  Raises VolumeReadError.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise VolumeReadError(f"cannot read {str(p)!r}: no such file or directory")
    if volume_index is not None:
        if isinstance(volume_index, bool) or not isinstance(volume_index, (int, np.integer)):
            raise VolumeReadError(f"volume_index must be a whole number; got {volume_index!r}")
        if volume_index < 0:
            raise VolumeReadError(f"volume_index must be 0 or more; got {volume_index}")
    if p.is_dir():
        if volume_index not in (None, 0):
            raise VolumeReadError(
                f"volume_index {volume_index} is out of range: a DICOM series is a single 3D volume"
            )
        image = _read_dicom_dir(p, series_uid)
    else:
        if series_uid is not None:
            raise VolumeReadError(f"series_uid applies to a DICOM directory, but {str(p)!r} is a file")
        split = _split_ext(p)
        if split is None:
            hint = ""
            if p.suffix.lower() in (".dcm", ".ima", "") or p.name.lower().endswith(".dicom"):
                hint = " (for DICOM, pass the directory that holds the series)"
            raise VolumeReadError(
                f"cannot read {str(p)!r}: unsupported file type; expected one of {_supported_text()} "
                f"or a DICOM directory{hint}"
            )
        if split[1] in _MGH_EXTS:
            return _read_mgh(p, split[1], volume_index)
        image = _read_file(p, split[1], volume_index)

    if image.GetDimension() != 3:
        raise VolumeReadError(
            f"{str(p)!r} is {image.GetDimension()}D ({_dims(image.GetSize())} voxels); a 3D volume is expected"
        )
    _check_pixels(repr(str(p)), image.GetPixelID(), image.GetNumberOfComponentsPerPixel())
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    try:
        geometry = _geometry_from_image(image)
    except InputError as exc:
        raise VolumeReadError(f"{str(p)!r} has invalid geometry: {exc}") from None
    return array, geometry


def read_on_grid(
    path: str | os.PathLike[str], shape: Sequence[int], geometry: Geometry, what: str = "mask"
) -> np.ndarray:
    """Read a companion volume (a mask) that must lie on an image's grid.

    Raises InputError unless its shape, spacing, origin and direction match ``shape`` / ``geometry``.
    """
    arr, geo = read_volume(path)
    if arr.shape != tuple(shape):
        raise InputError(
            f"{what} {str(path)!r} has shape {arr.shape[::-1]} (i,j,k) but the image has {tuple(shape)[::-1]}; "
            "they must share a grid"
        )
    for name, a, b, rtol, atol in (
        ("spacing", geo.spacing, geometry.spacing, 1e-4, 0.0),
        ("origin", geo.origin, geometry.origin, 0.0, 1e-3),
        ("direction", geo.direction, geometry.direction, 0.0, 1e-4),
    ):
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            raise InputError(
                f"{what} {str(path)!r} is on another grid than the image ({name} {[round(v, 4) for v in a]} vs "
                f"{[round(v, 4) for v in b]}); resample it onto the image first"
            )
    return arr


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _prepare_array(array: Any) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 3:
        raise VolumeWriteError(f"cannot write an array of shape {a.shape}: a 3D (z, y, x) volume is expected")
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if a.dtype in (np.float64, np.float16):
        return a.astype(np.float32)
    if a.dtype.kind not in "uif":
        raise VolumeWriteError(
            f"cannot write voxels of dtype {a.dtype}: integer, float or bool values are expected"
        )
    return np.ascontiguousarray(a)


def _temp_name(parent: Path, stem: str, ext: str) -> Path:
    while True:
        cand = parent / f".{stem}.tmp-{secrets.token_hex(4)}{ext}"
        if not cand.exists():
            return cand


def write_volume(
    path: str | os.PathLike[str],
    array: np.ndarray,
    geometry: Geometry | Mapping[str, Any],
    *,
    header_from: str | os.PathLike[str] | None = None,
    descrip: str | None = None,
) -> Path:
    """Write a (z, y, x) array with its geometry; return the final path.

    ``header_from``: the NIfTI file the array was computed from, on its grid. A NIfTI output then keeps
    that file's header (qform/sform and their codes, units, description, a 4D file's single-volume
    shape and its TR) instead of one rebuilt from ``geometry``; scaling (scl_slope), intent and display
    range are reset, and ``descrip`` (if given) replaces the description. Other pairs of formats, or a
    file on another grid than ``geometry`` says, are written from ``geometry`` alone.

    The file appears atomically: it is written under a temporary name in the same directory and
    moved into place with ``os.replace``, so a failed write leaves neither a partial output nor
    a changed existing file (for .mhd, the .raw data file is moved first, then the header).
    bool is written as uint8, float64/float16 as float32, other dtypes as-is -- except in MGH
    (.mgz/.mgh), which stores only uint8, int16, int32 and float32: int8 is written as int16, other
    integers as int32 when their values fit (else refused).  .nii.gz, .nrrd, .mha and .mgz are
    compressed.  Raises VolumeWriteError.
    """
    p = Path(path).expanduser()
    split = _split_ext(p)
    if split is None:
        raise VolumeWriteError(
            f"cannot write {str(p)!r}: unsupported extension; use one of {_supported_text()}"
        )
    stem, ext = split
    parent = p.parent
    if not parent.is_dir():
        raise VolumeWriteError(
            f"cannot write {str(p)!r}: directory {str(parent)!r} does not exist; create it first"
        )
    if p.is_dir():
        raise VolumeWriteError(f"cannot write {str(p)!r}: it is an existing directory; give a file name")
    try:
        geom = geometry if isinstance(geometry, Geometry) else Geometry.from_dict(geometry)
    except InputError as exc:
        raise VolumeWriteError(f"cannot write {str(p)!r}: {exc}") from None
    data = _prepare_array(array)
    if ext in _MGH_EXTS:
        data = _mgh_array(data, p)
        # nibabel picks gzip (.mgz) or not (.mgh) from the temporary file's name, which keeps the extension
        return _write_via_temp(p, _temp_name(parent, stem, ext), lambda tmp: _mgh_write(data, geom, tmp, p))
    if header_from is not None and ext in _NIFTI_EXTS:
        like = _nifti_like(Path(header_from), data, geom, descrip)
        if like is not None:
            return _write_via_temp(p, _temp_name(parent, stem, ext), lambda tmp: _nib_write(like, tmp, p))
    image = sitk.GetImageFromArray(data, isVector=False)
    _apply_geometry(image, geom)
    compress = _COMPRESS_BY_EXT[ext]

    if ext == ".mhd":
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=parent))
        try:
            header = tmpdir / f"{stem}.mhd"
            _sitk_write(image, header, ext, compress, p)
            data_files = [f for f in tmpdir.iterdir() if f.name != header.name]
            for f in data_files:  # data first, so the final header never points at missing data
                os.replace(f, parent / f.name)
            os.replace(header, p)
        except VolumeWriteError:
            raise
        except OSError as exc:
            raise VolumeWriteError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return p.resolve()

    return _write_via_temp(p, _temp_name(parent, stem, ext), lambda tmp: _sitk_write(image, tmp, ext, compress, p))


def _nifti_like(source: Path, data: np.ndarray, geom: Geometry, descrip: str | None) -> Any:
    """A nibabel image of ``data`` with the header of the NIfTI file ``source``, or None when ``source`` is no
    readable NIfTI file on the same grid as ``data`` (shape, voxel sizes, and the header's affine = ``geom``)."""
    import nibabel as nib

    split = _split_ext(source)
    if split is None or split[1] not in _NIFTI_EXTS or not source.is_file():
        return None
    try:
        src = nib.load(str(source))
    except Exception:  # noqa: BLE001 - unreadable here: fall back to the geometry alone
        return None
    if not isinstance(src, nib.Nifti1Image):  # Nifti2Image is a subclass
        return None
    shape = tuple(int(n) for n in src.header.get_data_shape())
    zooms = [float(z) for z in src.header.get_zooms()[:3]]
    if shape[:3] != data.shape[::-1] or len(shape) > 4:
        return None
    if not np.allclose(zooms, geom.spacing[::-1], rtol=1e-4, atol=1e-6):
        return None
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(src.affine, dtype=np.float64)[:3]  # the header's voxel -> LPS mm
    mine = geom.direction_matrix * np.asarray(geom.spacing[::-1])[None, :]
    if not (np.allclose(lps[:, :3], mine, atol=1e-4) and np.allclose(lps[:, 3], geom.origin, atol=1e-3)):
        return None  # the array was placed elsewhere (or ITK read the other of qform/sform): the geometry decides
    hdr = src.header.copy()
    vox = np.transpose(data, (2, 1, 0))
    if len(shape) == 4 and shape[3] == 1:
        vox = vox[..., None]  # a single-volume 4D file stays 4D, with its TR
    hdr.set_data_shape(vox.shape)
    hdr.set_data_dtype(vox.dtype)
    hdr.set_slope_inter(np.nan, np.nan)  # the values are written as they are
    hdr["intent_code"] = 0
    hdr["cal_min"] = hdr["cal_max"] = 0.0
    if descrip is not None:
        hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    return type(src)(vox, None, header=hdr)


def _nib_write(image: Any, target: Path, final: Path) -> None:
    try:
        image.to_filename(str(target))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types; one message for all
        raise VolumeWriteError(f"cannot write {str(final)!r}: {exc}") from None


def _write_via_temp(p: Path, tmp: Path, write: Callable[[Path], None]) -> Path:
    """Atomic write: ``write(tmp)`` then rename over ``p``; the temporary file never outlives a failure."""
    try:
        write(tmp)
        os.replace(tmp, p)
    except VolumeWriteError:
        raise
    except OSError as exc:
        raise VolumeWriteError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return p.resolve()


def _sitk_write(image: sitk.Image, target: Path, ext: str, compress: bool, final: Path) -> None:
    try:
        sitk.WriteImage(image, str(target), compress, imageIO=_IO_BY_EXT[ext])
    except RuntimeError as exc:
        raise VolumeWriteError(f"cannot write {str(final)!r}: {_itk_reason(exc)}") from None


_MGH_DTYPES = (np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.float32))


def _mgh_array(data: np.ndarray, final: Path) -> np.ndarray:
    """``data`` in a voxel type that every FreeSurfer version reads (uint8, int16, int32, float32), losslessly."""
    if data.dtype in _MGH_DTYPES:
        return data
    if data.dtype == np.int8:
        return data.astype(np.int16)
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    info = np.iinfo(np.int32)
    if info.min <= lo and hi <= info.max:
        return data.astype(np.int32)
    raise VolumeWriteError(
        f"cannot write {str(final)!r}: its {data.dtype} values ({lo}..{hi}) do not fit the 32-bit integers "
        "an MGH file stores; write .nii.gz or .nrrd instead, or rescale the volume"
    )


def _mgh_write(data: np.ndarray, geometry: Geometry, target: Path, final: Path) -> None:
    """Write ``data`` (z, y, x) to ``target`` as FreeSurfer MGH (.mgz: gzip) with nibabel, geometry in RAS."""
    from nibabel.freesurfer.mghformat import MGHImage

    affine = np.eye(4)  # voxel (i, j, k) -> RAS mm
    affine[:3, :3] = _RAS_TO_LPS @ geometry.direction_matrix @ np.diag(geometry.spacing[::-1])
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(geometry.origin)
    try:
        MGHImage(data.transpose(2, 1, 0), affine).to_filename(str(target))
    except OSError:
        raise
    except Exception as exc:  # nibabel's header errors: no raw traceback for the user
        reason = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise VolumeWriteError(f"cannot write {str(final)!r}: {reason}") from None
