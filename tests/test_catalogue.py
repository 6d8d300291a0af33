"""The bad-input catalogue (issue 6): every case of the table in docs/safety.md, with its outcome.

``CASES`` is the machine-readable catalogue: ``scripts/catalogue_table.py`` prints the docs/safety.md table
from it and ``test_safety_page_table_is_current`` checks that docs/safety.md holds exactly that table.

CLI cases run ``medvae`` in-process on files built in ``tmp_path``. A refused case must exit non-zero
with exactly one stderr line ``medvae: error: ...`` naming what was wrong, and leave the output folder
(and the input folder) exactly as they were: no output, no temporary file. A case that must work
exits 0 and writes the output on the input's grid (shape, spacing, origin, direction, read back from
the file). Engine and napari cases are tests of their own, named in ``Case.test``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medvae.cli import main
from napari_medvae.io import Geometry, read_volume, write_volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
UID_A, UID_B = "1.2.826.0.1.3680043.2.1125.7001", "1.2.826.0.1.3680043.2.1125.7002"


@dataclass
class Ctx:
    """What a case builds: its files live in ``inp``; the output goes to ``out`` (in ``outdir``)."""

    tmp: Path
    mp: pytest.MonkeyPatch
    inp: Path
    outdir: Path
    out: Path
    src: Path | None = None  # the input whose grid a working case's output must have
    read_kw: dict = field(default_factory=dict)  # how to read ``src`` (volume_index, series_uid)
    data: dict = field(default_factory=dict)  # anything a case's extra check needs


@dataclass(frozen=True)
class Case:
    """One catalogue entry. ``error``: regex the one-line message must match (None: the case must work)."""

    id: str
    group: str
    description: str
    outcome: str
    where: str = "CLI"  # CLI: a parametrised run below; engine / napari: the test named in ``test``
    make: Callable[[Ctx], list[str]] | None = None
    error: str | None = None
    exit_code: int = 2
    prefix: str = "medvae: error: "
    check: Callable[[Ctx, dict], None] | None = None
    warns: tuple[str, ...] = ()  # a refused case's stderr: exactly these warning lines, then the error line
    test: str = ""  # "module::function" for engine / napari cases


CASES: list[Case] = []


def case(id: str, group: str, description: str, outcome: str, **kw):
    """Register the decorated builder as the ``make`` of a CLI case."""

    def deco(fn):
        CASES.append(Case(id, group, description, outcome, make=fn, **kw))
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# inputs: a small in-distribution crop of the 2 mm sample T1 (12 x 56 x 50 voxels: seconds per run)

_BASE: dict = {}


def base() -> tuple[np.ndarray, Geometry]:
    if not _BASE:
        vol, geo = read_volume(SAMPLE / "mni_t1_healthy.nii.gz")
        _BASE["v"], _BASE["g"] = np.ascontiguousarray(vol[40:52, 30:86, 25:75]), geo
    return _BASE["v"].copy(), _BASE["g"]


def oblique() -> Geometry:
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry(spacing=(2.0, 2.0, 2.0), origin=(-31.5, 12.25, 80.0), direction=tuple((rz @ rx).ravel()))


def put(c: Ctx, name: str, arr: np.ndarray, geo: Geometry | None = None) -> Path:
    return write_volume(c.inp / name, arr, geo or base()[1])


def run_args(c: Ctx, op: str, src: Path, *extra: str, read_kw: dict | None = None) -> list[str]:
    c.src, c.read_kw = src, read_kw or {}
    return [op, str(src), "-o", str(c.out), *extra]


def image(c: Ctx) -> Path:
    return put(c, "t1.nii.gz", base()[0])


def model_copy(c: Ctx) -> Path:
    from napari_medvae.engine import default_model_path

    src = default_model_path()
    shutil.copy(src, c.inp / "m.safetensors")
    shutil.copy(src.with_suffix(".json"), c.inp / "m.json")
    return c.inp / "m.safetensors"


def nifti_with_pixdim(c: Ctx, pixdim_i: float) -> Path:
    p = put(c, "sp.nii", base()[0])
    raw = bytearray(p.read_bytes())
    struct.pack_into("<f", raw, 80, pixdim_i)  # pixdim[1]: the size of voxel axis i
    p.write_bytes(bytes(raw))
    return p


# ---------------------------------------------------------------------------------------------
# the catalogue: volumes


@case("2d-image", "Volume", "2D image (a single slice file)", "refused: a 3D volume is expected", error=r"is 2D.*3D volume")
def _(c):
    p = c.inp / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(base()[0][6]), str(p))
    return run_args(c, "reconstruct", p)


@case("single-slice-3d", "Volume", "3D file holding one slice (1 x H x W)", "refused: every axis needs at least 3 voxels",
      error=r"at least 3 voxels")
def _(c):
    return run_args(c, "reconstruct", put(c, "one.nii.gz", base()[0][6:7]))


def _four_d(c: Ctx) -> Path:
    vol, geo = base()
    img = sitk.JoinSeries([sitk.GetImageFromArray(vol), sitk.GetImageFromArray(vol[::-1].copy())])
    img.SetSpacing((2.0, 2.0, 2.0, 1.0))
    p = c.inp / "series4d.nii.gz"
    sitk.WriteImage(img, str(p))
    return p


@case("4d-no-index", "Volume", "4D file (several volumes), no index given",
      "refused: names the number of volumes and asks for --volume-index", error=r"holds 2 volumes.*--volume-index")
def _(c):
    return run_args(c, "reconstruct", _four_d(c))


@case("4d-volume-index", "Volume", "4D file with --volume-index 1", "works: that volume, on its 3D grid")
def _(c):
    return run_args(c, "reconstruct", _four_d(c), "--volume-index", "1", read_kw={"volume_index": 1})


@case("4d-index-out-of-range", "Volume", "4D file with --volume-index beyond its volumes", "refused: gives the valid range",
      error=r"volume_index 5 is out of range.*0\.\.1")
def _(c):
    return run_args(c, "reconstruct", _four_d(c), "--volume-index", "5")


@case("5d-volume", "Volume", "5D NIfTI", "refused: a 3D volume (or a 4D series) is expected", error=r"is 5D")
def _(c):
    import nibabel as nib

    p = c.inp / "v5.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2, 2), np.float32), np.eye(4)), str(p))
    return run_args(c, "reconstruct", p)


@case("rgb", "Volume", "RGB volume (3 values per voxel)", "refused: a scalar (grey-level) volume is expected",
      error=r"3 values per voxel.*scalar")
def _(c):
    p = c.inp / "rgb.mha"
    vol = base()[0]
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([vol] * 3, -1).astype(np.uint8), isVector=True), str(p))
    return run_args(c, "reconstruct", p)


@case("complex", "Volume", "complex-valued volume", "refused: pass the magnitude image", error=r"complex")
def _(c):
    p = c.inp / "c.mha"
    sitk.WriteImage(sitk.GetImageFromArray(base()[0].astype(np.complex64)), str(p))
    return run_args(c, "reconstruct", p)


@case("boolean", "Volume", "binary volume (only 0 and 1: a mask given as the image)",
      "refused: an intensity volume is expected", error=r"only the values 0 and 1.*intensity volume")
def _(c):
    return run_args(c, "reconstruct", put(c, "mask.nii.gz", (base()[0] > 100).astype(np.uint8)))


def _check_int32(c: Ctx, r: dict) -> None:
    src = read_volume(c.src)[0]
    assert r["out"].dtype == np.int32
    assert r["out"].min() >= 0, "values wrapped around the int32 range"
    assert r["out"].max() > 2**30  # still on the input's scale (no rescaling to a small range)
    assert np.abs(r["out"].astype(np.float64) - src).max() < 2**31 - 1


@case("int32-huge-range", "Volume", "int32 intensities up to 2**31 - 1", "works: output in int32, clipped, no wrap-around",
      check=_check_int32)
def _(c):
    vol = base()[0].astype(np.float64)
    big = np.rint(vol / vol.max() * (2**31 - 1)).astype(np.int32)
    return run_args(c, "reconstruct", put(c, "big.nii.gz", big))


def _nan_inf(c: Ctx, name: str) -> list[str]:
    vol = base()[0].astype(np.float32)
    vol[3, 10, 10], vol[4, 20, 20] = np.nan, np.inf
    return run_args(c, "reconstruct", put(c, name, vol))


@case("nan-inf", "Volume", "NaN and Inf voxels (MHA, NRRD: kept by the reader)", "refused: counts them, asks to replace them",
      error=r"2 NaN/Inf voxels; replace them")
def _(c):
    return _nan_inf(c, "nan.mha")


def _check_nan_warned(c: Ctx, r: dict) -> None:
    assert r["err"] == [f"medvae: warning: {str(c.src)!r} has 2 NaN/Inf voxels; they are read as 0"]
    assert r["out"][3, 10, 10] >= 0 and np.isfinite(r["out"]).all()


@case("nan-inf-nifti", "Volume", "NaN and Inf voxels in NIfTI (ITK reads them as 0)",
      "works, with a warning that counts them", check=_check_nan_warned)
def _(c):
    return _nan_inf(c, "nan.nii.gz")


@case("constant", "Volume", "constant volume", "refused: there is no image to process", error=r"constant")
def _(c):
    return run_args(c, "denoise", put(c, "flat.nii.gz", np.full((12, 56, 50), 7, np.int16)))


def _check_zero_slices(c: Ctx, r: dict) -> None:
    assert not r["out"][[0, 1, 5, 11]].any(), "all-zero slices stay zero"
    assert r["out"][[3, 7]].any()


@case("all-zero-slices", "Volume", "all-zero slices inside and at the ends of a volume",
      "works: those slices stay zero, the others are processed", check=_check_zero_slices)
def _(c):
    vol = base()[0]
    vol[[0, 1, 5, 11]] = 0
    return run_args(c, "reconstruct", put(c, "gaps.nii.gz", vol))


@case("tiny", "Volume", "volume smaller than the network's field of view (8 x 8 x 8)",
      "refused: says the minimum size", error=r"too small.*at least 16 pixels")
def _(c):
    return run_args(c, "reconstruct", put(c, "tiny.nii.gz", base()[0][:8, 20:28, 20:28]))


@case("anisotropic-40x", "Volume", "very anisotropic spacing (40 x 1 x 1 mm)", "works: output on the input's grid")
def _(c):
    vol, geo = base()
    return run_args(c, "reconstruct", put(c, "aniso.nii.gz", vol, Geometry(spacing=(40.0, 1.0, 1.0))))


@case("anisotropic-over-50x", "Volume", "spacing more than 50x anisotropic (60 x 1 x 1 mm)",
      "refused: asks to resample first", error=r"more than 50x anisotropic; resample")
def _(c):
    return run_args(c, "reconstruct", put(c, "aniso.nii.gz", base()[0], Geometry(spacing=(60.0, 1.0, 1.0))))


@case("zero-spacing-nifti", "Volume", "NIfTI header with a zero voxel size (pixdim)",
      "refused: positive sizes are expected (ITK would silently use 1 mm)", error=r"pixdim.*0\.0.*positive")
def _(c):
    return run_args(c, "reconstruct", nifti_with_pixdim(c, 0.0))


@case("negative-spacing-nifti", "Volume", "NIfTI header with a negative voxel size (pixdim)",
      "refused: positive sizes are expected (ITK would silently flip it)", error=r"pixdim.*-2\.0.*positive")
def _(c):
    return run_args(c, "reconstruct", nifti_with_pixdim(c, -2.0))


def _mhd(c: Ctx, spacing: str) -> Path:
    vol = base()[0]
    (c.inp / "v.raw").write_bytes(vol.astype("<i2").tobytes())
    p = c.inp / "v.mhd"
    p.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {vol.shape[2]} {vol.shape[1]} {vol.shape[0]}\n"
                 f"ElementType = MET_SHORT\nElementSpacing = {spacing}\nElementDataFile = v.raw\n")
    return p


@case("zero-spacing-mhd", "Volume", "MetaImage header with a zero spacing", "refused: non-zero spacing is expected",
      error=r"spacing \[0\.0, 2\.0, 2\.0\].*non-zero")
def _(c):
    return run_args(c, "reconstruct", _mhd(c, "0 2 2"))


def _check_flipped(c: Ctx, r: dict) -> None:
    g = read_volume(c.src)[1]
    assert g.spacing == (2.0, 2.0, 2.0) and g.direction[0] == -1.0  # ITK: |spacing| and a flipped axis
    np.testing.assert_allclose(g.index_to_world((0, 0, 3)), (-6.0, 0.0, 0.0))  # same voxel positions


@case("negative-spacing-mhd", "Volume", "MetaImage header with a negative spacing along i",
      "works: read as a flipped axis (same voxel positions); output on that grid", check=_check_flipped)
def _(c):
    return run_args(c, "reconstruct", _mhd(c, "-2 2 2"))


@case("oblique", "Volume", "oblique direction matrix (rotated about two axes)", "works: output keeps the direction")
def _(c):
    return run_args(c, "reconstruct", put(c, "oblique.nrrd", base()[0], oblique()))


def _ct(c: Ctx) -> Path:
    return put(c, "ct.nii.gz", base()[0].astype(np.int16) * 4 - 1000)


@case("ct-like", "Volume", "CT-like volume (Hounsfield units) fed to the T1 brain model",
      "refused: out-of-distribution score 1.00 > 0.50, run anyway with --force", error=r"out-of-distribution score 1\.00.*--force")
def _(c):
    return run_args(c, "reconstruct", _ct(c))


@case("ct-like-forced", "Volume", "the same CT-like volume with --force", "works (the user insisted)")
def _(c):
    return run_args(c, "reconstruct", _ct(c), "--force")


# ---------------------------------------------------------------------------------------------
# masks and slice indices


def _mask_case(c: Ctx, mask: np.ndarray, geo: Geometry | None = None, op: str = "inpaint") -> list[str]:
    src = image(c)
    m = put(c, "mask.nii.gz", mask, geo)
    flag = "--mask" if op == "inpaint" else "--brain-mask"
    return run_args(c, op, src, flag, str(m))


@case("mask-other-shape", "Mask", "mask of a different shape", "refused: shapes given, same grid expected",
      error=r"mask .* has shape \(10, 10, 10\).*share a grid")
def _(c):
    return _mask_case(c, np.ones((10, 10, 10), np.uint8))


@case("mask-other-origin", "Mask", "mask of the same shape on another grid (shifted origin)",
      "refused: resample it onto the image first", error=r"another grid than the image \(origin.*resample")
def _(c):
    g = base()[1]
    return _mask_case(c, np.ones((12, 56, 50), np.uint8),
                      Geometry(spacing=g.spacing, origin=(g.origin[0] + 10, *g.origin[1:]), direction=g.direction))


@case("mask-other-direction", "Mask", "mask of the same shape, spacing and origin but another orientation",
      "refused: resample it onto the image first", error=r"another grid than the image \(direction.*resample")
def _(c):
    g = base()[1]
    return _mask_case(c, np.ones((12, 56, 50), np.uint8), Geometry(spacing=g.spacing, origin=g.origin,
                                                                   direction=oblique().direction))


@case("brain-mask-other-grid", "Mask", "anomaly --brain-mask on another grid (other spacing)",
      "refused: resample it onto the image first", error=r"brain mask .* another grid than the image \(spacing")
def _(c):
    g = base()[1]
    return _mask_case(c, np.ones((12, 56, 50), np.uint8), Geometry(spacing=(3.0, 2.0, 2.0), origin=g.origin,
                                                                   direction=g.direction), op="anomaly")


@case("mask-empty", "Mask", "empty mask", "refused: nothing to fill", error=r"empty")
def _(c):
    return _mask_case(c, np.zeros((12, 56, 50), np.uint8))


@case("mask-everything", "Mask", "mask covering every voxel", "refused: nothing left to fill from", error=r"covers")
def _(c):
    return _mask_case(c, np.ones((12, 56, 50), np.uint8))


@case("slices-out-of-range", "Mask", "missing-slice index out of range", "refused: gives the valid range",
      error=r"out of range")
def _(c):
    return run_args(c, "inpaint", image(c), "--missing-slices", "3,40", "--axis", "2")


def _check_filled(c: Ctx, r: dict) -> None:
    src = read_volume(c.src)[0]
    assert r["out"][5].any() and r["out"][6].any()
    np.testing.assert_array_equal(r["out"][[0, 4, 7, 11]], src[[0, 4, 7, 11]])


@case("slices-duplicate", "Mask", "duplicate missing-slice indices (5,5,6)", "works: each slice filled once",
      check=_check_filled)
def _(c):
    vol = base()[0]
    vol[[5, 6]] = 0
    return run_args(c, "inpaint", put(c, "missing.nii.gz", vol), "--missing-slices", "5,5,6", "--axis", "2")


# ---------------------------------------------------------------------------------------------
# files


def _damaged(c: Ctx, ext: str, keep: float | None) -> list[str]:
    p = put(c, f"full{ext}", base()[0])
    data = p.read_bytes()
    bad = c.inp / f"bad{ext}"
    bad.write_bytes(np.random.default_rng(0).bytes(400) if keep is None else data[: int(len(data) * keep)])
    p.unlink()
    return run_args(c, "reconstruct", bad)


@case("corrupt-nifti", "File", "corrupt NIfTI (random bytes)", "refused: not a valid file", error=r"bad\.nii\.gz")
def _(c):
    return _damaged(c, ".nii.gz", None)


@case("truncated-nifti", "File", "truncated .nii.gz", "refused: truncated or corrupt", error=r"truncated")
def _(c):
    return _damaged(c, ".nii.gz", 0.6)


@case("truncated-nifti-raw", "File", "truncated uncompressed .nii", "refused: says how many bytes are missing",
      error=r"truncated \(\d+ of \d+ bytes")
def _(c):
    return _damaged(c, ".nii", 0.6)


@case("truncated-nrrd", "File", "truncated NRRD", "refused: truncated or corrupt", error=r"bad\.nrrd")
def _(c):
    return _damaged(c, ".nrrd", 0.6)


@case("corrupt-mha", "File", "corrupt MHA (random bytes)", "refused: not a valid file", error=r"bad\.mha.*not a valid")
def _(c):
    return _damaged(c, ".mha", None)


def _check_fast(c: Ctx, r: dict) -> None:
    assert r["seconds"] < 2.0, f"took {r['seconds']:.1f} s"
    assert c.data["executed"] == []  # refused from the header alone: no voxel buffer was allocated


@case("gigantic-header", "File", "NIfTI header claiming 30000 x 30000 x 30000 voxels (a 400-byte file)",
      "refused from the header in milliseconds, nothing allocated", error=r"30000 x 30000 x 30000.*at most",
      check=_check_fast)
def _(c):
    import nibabel as nib

    h = nib.Nifti1Header()
    h.set_data_shape((30000, 30000, 30000))
    h.set_data_dtype(np.int16)
    p = c.inp / "huge.nii"
    p.write_bytes(h.binaryblock + b"\0" * 52)
    c.data["executed"] = []
    c.mp.setattr(sitk.ImageFileReader, "Execute", lambda self: c.data["executed"].append(1))
    return run_args(c, "reconstruct", p)


def _dicom(c: Ctx) -> Path:
    from test_io import write_dicom_series

    vol, _ = base()
    g = Geometry(spacing=(2.0, 2.0, 2.0), origin=(-10.0, 5.5, 30.0))
    write_dicom_series(c.inp / "dicom", vol, g, UID_A)
    write_dicom_series(c.inp / "dicom", vol[:, ::-1].copy(), g, UID_B)
    return c.inp / "dicom"


@case("dicom-mixed-series", "File", "DICOM folder holding two series", "refused: lists both, asks for --series-uid",
      error=rf"2 DICOM series: {UID_A} \(12 files\); {UID_B} \(12 files\).*--series-uid")
def _(c):
    return run_args(c, "reconstruct", _dicom(c))


@case("dicom-series-uid", "File", "the same folder with --series-uid", "works: that series")
def _(c):
    return run_args(c, "reconstruct", _dicom(c), "--series-uid", UID_B, read_kw={"series_uid": UID_B})


@case("unsupported-extension", "File", "input with an unsupported extension (.png)", "refused: lists the supported types",
      error=r"unsupported file type.*\.nii\.gz")
def _(c):
    p = c.inp / "scan.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return run_args(c, "reconstruct", p)


@case("missing-input", "File", "input path that does not exist", "refused: no such file", error=r"no such file")
def _(c):
    return run_args(c, "reconstruct", c.inp / "nope.nii.gz")


# ---------------------------------------------------------------------------------------------
# outputs


@case("output-dir-missing", "Output", "output folder that does not exist", "refused before any work: create it first",
      error=r"does not exist; create it first")
def _(c):
    args = run_args(c, "reconstruct", image(c))
    args[3] = str(c.outdir / "no" / "o.nii.gz")
    return args


@case("output-dir-read-only", "Output", "read-only output folder", "refused before any work: not writable",
      error=r"is not writable")
def _(c):
    os.chmod(c.outdir, 0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the check see the folder as read-only
        import napari_medvae.io as mio

        real = os.access
        target = c.outdir.resolve()
        c.mp.setattr(mio.os, "access", lambda p, mode: False if Path(p) == target else real(p, mode))
    return run_args(c, "reconstruct", image(c))


@case("output-is-input", "Output", "output path equal to the input path", "refused: the input is never overwritten",
      error=r"would overwrite the input")
def _(c):
    src = image(c)
    args = run_args(c, "denoise", src)
    args[3] = str(src)
    return args


@case("output-extension", "Output", "output with an unsupported extension (.png)", "refused: lists the supported types",
      error=r"unsupported extension; use one of")
def _(c):
    args = run_args(c, "reconstruct", image(c))
    args[3] = str(c.outdir / "o.png")
    return args


# ---------------------------------------------------------------------------------------------
# model files


class _Payload:
    """Unpickling this writes a file: proof that a model file was deserialised with pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran"))


def _evil_model(c: Ctx, path: Path) -> list[str]:
    import pickle

    c.data["marker"] = c.tmp / "pickle_ran.txt"
    path.write_bytes(pickle.dumps({"weights": _Payload(c.data["marker"])}))
    return run_args(c, "reconstruct", image(c), "--model", str(path))


def _check_not_unpickled(c: Ctx, r: dict) -> None:
    assert not c.data["marker"].exists(), "the pickle was deserialised"


@case("model-pickle", "Model", "a pickle / torch.save .pt file as --model", "refused before anything is unpickled",
      error=r"pickle", check=_check_not_unpickled)
def _(c):
    return _evil_model(c, c.inp / "evil.pt")


@case("model-pickle-renamed", "Model", "a pickle renamed to .safetensors", "refused before anything is unpickled",
      error=r"pickle.*refusing", check=_check_not_unpickled)
def _(c):
    return _evil_model(c, model_copy(c))


@case("model-no-config", "Model", "safetensors file without its JSON config", "refused: the config is missing",
      error=r"config m\.json is missing")
def _(c):
    m = model_copy(c)
    m.with_suffix(".json").unlink()
    return run_args(c, "reconstruct", image(c), "--model", str(m))


def _edit_config(c: Ctx, edit: Callable[[dict], None]) -> list[str]:
    m = model_copy(c)
    j = m.with_suffix(".json")
    cfg = json.loads(j.read_text())
    edit(cfg)
    j.write_text(json.dumps(cfg))
    return run_args(c, "reconstruct", image(c), "--model", str(m))


@case("model-config-mismatch", "Model", "JSON config of another architecture than the weights",
      "refused: names the first tensor that differs", error=r"tensor '.*' has shape .* needs")
def _(c):
    return _edit_config(c, lambda cfg: cfg["architecture"].update(channels=[32, 64, 128]))


@case("model-newer-version", "Model", "config from a newer format version", "refused: upgrade napari-medvae",
      error=r"newer than this napari-medvae.*upgrade")
def _(c):
    return _edit_config(c, lambda cfg: cfg.update(format_version=99))


@case("model-wrong-shapes", "Model", "weights whose tensors have wrong shapes", "refused: names the tensor and both shapes",
      error=r"tensor '.*' has shape \(1,")
def _(c):
    from napari_medvae.engine.model.checkpoint import load_checkpoint, save_checkpoint

    cfg, state = load_checkpoint(model_copy(c))
    k = next(iter(state))
    state[k] = state[k][:1].clone()
    return run_args(c, "reconstruct", image(c), "--model", str(save_checkpoint(c.inp / "bad", cfg, state)))


# ---------------------------------------------------------------------------------------------
# jobs


@case("interrupt-mid-run", "Job", "Ctrl-C while the network runs", "stops: exit 130, no output file",
      exit_code=130, prefix="medvae: interrupted", error=r"no output was written")
def _(c):
    import napari_medvae.cli as cli

    def interrupt(self, done, total):
        if done > 0:
            raise KeyboardInterrupt

    c.mp.setattr(cli._Bar, "__call__", interrupt)
    return run_args(c, "reconstruct", image(c))


@case("interrupt-while-writing", "Job", "Ctrl-C while the output file is being written",
      "stops: exit 130, the half-written temporary file is removed", exit_code=130, prefix="medvae: interrupted",
      error=r"no output was written")
def _(c):
    import napari_medvae.io as mio

    def half_write(image, target, *rest):
        Path(target).write_bytes(b"\0" * 1000)
        raise KeyboardInterrupt

    args = run_args(c, "reconstruct", image(c))
    c.mp.setattr(mio, "_sitk_write", half_write)  # written from the geometry
    c.mp.setattr(mio, "_nib_write", half_write)  # NIfTI in, NIfTI out: with the input's header
    return args


@case("interrupt-after-labels", "Job", "Ctrl-C while the heatmap is written, after the candidate labels were",
      "stops: exit 130, the labels written before are removed too (no file of the run stays)", exit_code=130,
      prefix="medvae: interrupted", error=r"no output was written")
def _(c):
    import napari_medvae.io as mio

    writers = {name: getattr(mio, name) for name in ("_sitk_write", "_nib_write")}

    def interrupting(name):
        def write(image, target, *rest):
            if Path(rest[-1]).name == c.out.name:  # the final path comes last
                raise KeyboardInterrupt
            writers[name](image, target, *rest)
        return write

    args = run_args(c, "anomaly", image(c), "--labels", str(c.out.with_name("labels.nii.gz")))
    for name in writers:  # from the geometry, or (NIfTI in, NIfTI out) with the input's header
        c.mp.setattr(mio, name, interrupting(name))
    return args


@case("terminate-mid-run", "Job", "SIGTERM (a kill, a scheduler's time limit) while the network runs",
      "stops like Ctrl-C: exit 130, no output file", exit_code=130, prefix="medvae: interrupted",
      error=r"no output was written")
def _(c):
    import signal

    import napari_medvae.cli as cli

    def terminate(self, done, total):
        if done > 0:
            os.kill(os.getpid(), signal.SIGTERM)

    c.mp.setattr(cli._Bar, "__call__", terminate)
    return run_args(c, "reconstruct", image(c))


def _check_oom_warned(c: Ctx, r: dict) -> None:
    assert r["err"] == [f"medvae: warning: out of memory on cpu; retrying with {n} slices per batch" for n in (4, 2)]


@case("out-of-memory-batches", "Job", "out of memory on batches of more than two slices",
      "works: halves the batch (8, 4, 2) and says so on stderr", check=_check_oom_warned)
def _(c):
    _oom_when(c.mp, lambda model, x: x.shape[0] > 2)
    return run_args(c, "reconstruct", image(c))


@case("out-of-memory-always", "Job", "out of memory even on one slice on the CPU",
      "refused after halving the batch down to 1 slice (each step warned): out of memory, crop the volume",
      error=r"out of memory on the CPU even with 1 slice",
      warns=tuple(f"out of memory on cpu; retrying with {n} per batch" for n in ("4 slices", "2 slices", "1 slice")))
def _(c):
    _oom_when(c.mp, lambda model, x: True)
    return run_args(c, "reconstruct", image(c))


def _oom_when(mp: pytest.MonkeyPatch, when: Callable) -> None:
    import torch

    import napari_medvae.engine.ops.runner as runner

    real = runner._forward

    def forward(model, x, *args, **kw):
        if when(model, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, x, *args, **kw)

    mp.setattr(runner, "_forward", forward)


# engine and napari cases: tests of their own (checked to exist below)

CASES += [
    Case("gpu-oom-cpu-fallback", "Job", "GPU out of memory even on one slice", "works: halves the batch, then moves "
         "the model to the CPU and says so", where="engine", test="test_catalogue.py::test_gpu_oom_falls_back_to_cpu"),
    Case("napari-bad-input", "Job", "napari: bad layer (2D) sent to a widget", "refused: a notification, no layer",
         where="napari", test="test_plugin_jobs.py::test_bad_input_gives_a_notification_and_no_layer"),
    Case("napari-cancel", "Job", "napari: Cancel mid-job", "stops within seconds: no layer, a notification",
         where="napari", test="test_plugin_jobs.py::test_cancel_mid_job_leaves_no_layer"),
    Case("napari-second-job", "Job", "napari: second job started while one runs",
         "refused: its buttons are disabled while a job runs; started from code, a notification 'a job is already running'; one result layer",
         where="napari", test="test_plugin_catalogue.py::test_second_job_is_refused_while_one_runs"),
    Case("napari-delete-source", "Job", "napari: source layer deleted while its job runs",
         "stops within a batch of slices: a notification names the removed layer, no orphan result layer", where="napari",
         test="test_plugin_catalogue.py::test_deleting_the_source_layer_cancels_its_job"),
    Case("napari-close-viewer", "Job", "napari: viewer closed while a job runs", "stops within a batch of slices, no error",
         where="napari", test="test_plugin_catalogue.py::test_closing_the_viewer_cancels_the_job"),
    Case("napari-out-of-memory", "Job", "napari: out of memory in a job", "works: smaller batches, one warning notification per step, the result layer",
         where="napari", test="test_plugin_catalogue.py::test_out_of_memory_warns_and_still_adds_the_layer"),
]


# ---------------------------------------------------------------------------------------------
# the runs


def snapshot(*dirs: Path) -> dict[str, str]:
    """Every file under ``dirs`` (hidden temporary files included) with a hash of its content."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def assert_same_grid(out: Path, src: Path, read_kw: dict) -> np.ndarray:
    vin, gin = read_volume(src, **read_kw)
    vout, gout = read_volume(out)
    assert vout.shape == vin.shape
    np.testing.assert_allclose(gout.spacing, gin.spacing, rtol=1e-6)
    np.testing.assert_allclose(gout.origin, gin.origin, atol=1e-4)
    np.testing.assert_allclose(gout.direction, gin.direction, atol=1e-6)
    return vout


CLI_CASES = [c for c in CASES if c.where == "CLI"]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_case(case: Case, tmp_path, monkeypatch, capsys):
    inp, outdir = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    outdir.mkdir()
    c = Ctx(tmp_path, monkeypatch, inp, outdir, outdir / "result.nii.gz")
    argv = case.make(c)
    before = snapshot(inp, outdir)
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    monkeypatch.undo()  # e.g. the read-only folder's access check, before reading results back
    os.chmod(outdir, 0o755)
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    result = {"rc": rc, "err": err, "seconds": seconds}
    if case.error is None:
        assert rc == 0, f"{case.id}: exit {rc}: {cap.err}"
        assert sorted(p.name for p in outdir.iterdir()) == ["result.nii.gz"], "exactly the output, no temporary file"
        result["out"] = assert_same_grid(c.out, c.src, c.read_kw)
    else:
        assert rc == case.exit_code, f"{case.id}: exit {rc}, stderr {cap.err!r}"
        assert err[:-1] == [f"medvae: warning: {w}" for w in case.warns], f"{case.id}: stderr {cap.err!r}"
        assert err and err[-1].startswith(case.prefix), f"{case.id}: stderr {cap.err!r}"
        assert re.search(case.error, err[-1]), f"{case.id}: {err[-1]!r} does not match {case.error!r}"
        assert "Traceback" not in cap.err
        assert snapshot(inp, outdir) == before, "the input and output folders are unchanged (no output, no temp file)"
    if case.check is not None:
        case.check(c, result)


def test_gpu_oom_falls_back_to_cpu(monkeypatch):
    """Out of memory on a (fake) GPU: batches halve down to 1 slice, then the model moves to the CPU; warned."""
    import torch

    from napari_medvae.engine import load_model, reconstruct

    model = load_model(None, device="cpu")
    model.device = torch.device("meta")  # stands in for a GPU: not "cpu", never touched by the patched forward
    sizes: list[tuple[str, int]] = []

    def when(m, x):
        sizes.append((m.device.type, x.shape[0]))
        return m.device.type != "cpu"

    _oom_when(monkeypatch, when)
    vol, geo = base()
    vol = vol[3:9]  # 6 slices: the CPU runs them one at a time after the fallback
    with pytest.warns(UserWarning) as rec:
        out = reconstruct(model, vol, geo.spacing)
    messages = [str(w.message) for w in rec]
    assert messages == [f"out of memory on meta; retrying with {n} per batch" for n in ("4 slices", "2 slices", "1 slice")] + [
        "out of memory on meta even with 1 slice per batch; falling back to CPU"]
    # a first batch of all 6 slices (the CPU batch cap is 8), then 8 // 2, 4 // 2, 2 // 2 slices
    assert [n for d, n in sizes if d == "meta"] == [6, 4, 2, 1] and all(n == 1 for d, n in sizes if d == "cpu")
    assert model.device.type == "cpu" and out.shape == vol.shape and np.isfinite(out).all()


def test_catalogue_ids_are_unique_and_tests_exist():
    assert len({c.id for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.description and c.outcome and (c.make is not None) == (c.where == "CLI"), c.id
        if c.where != "CLI":
            module, func = c.test.split("::")
            tree = ast.parse((Path(__file__).parent / module).read_text())
            assert func in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, c.test


def test_safety_page_table_is_current():
    """docs/safety.md holds exactly what scripts/catalogue_table.py prints."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import catalogue_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    readme = (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
    start, end = readme.index(catalogue_table.START), readme.index(catalogue_table.END)
    assert readme[start:end + len(catalogue_table.END)] == catalogue_table.render(), (
        "docs/safety.md catalogue is stale: run `python scripts/catalogue_table.py --write`")
