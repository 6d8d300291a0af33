"""Tests for napari_medvae.io: geometry, readers, writers and every refusal path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_medvae import io as mio
from napari_medvae.errors import InputError, MedVAEError, VolumeReadError, VolumeWriteError
from napari_medvae.io import (
    SUPPORTED_EXTENSIONS,
    Geometry,
    check_output_path,
    is_supported_path,
    read_volume,
    write_volume,
)

EXTS = [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"]


def rotation(seed: int) -> np.ndarray:
    """A random proper rotation matrix (det +1), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def oblique_geometry(seed: int = 0) -> Geometry:
    rng = np.random.default_rng(seed)
    return Geometry(
        spacing=tuple(rng.uniform(0.4, 3.0, 3)),
        origin=tuple(rng.uniform(-150, 150, 3)),
        direction=tuple(rotation(seed).ravel()),
    )


def random_array(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def assert_geometry_close(a: Geometry, b: Geometry, tol: float = 1e-6) -> None:
    # NIfTI stores geometry as float32: compare to 1e-6 relative (absolute for small values)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=tol)


def sitk_image(array: np.ndarray, geom: Geometry) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geom.spacing[::-1])
    img.SetOrigin(geom.origin)
    img.SetDirection(geom.direction)
    return img


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_every_format(tmp_path, ext, dtype):
    geom = oblique_geometry(seed=3)
    arr = random_array((6, 7, 8), dtype, seed=1)
    out = write_volume(tmp_path / f"vol{ext}", arr, geom)
    assert out == (tmp_path / f"vol{ext}").resolve()
    back, g2 = read_volume(out)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == (6, 7, 8)
    np.testing.assert_array_equal(back, arr)
    assert_geometry_close(g2, geom)
    # only the output (and, for .mhd, its data file) is left: no temp files
    expected = ["vol.mhd", "vol.raw"] if ext == ".mhd" else [f"vol{ext}"]
    assert listing(tmp_path) == expected


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".mhd"])
def test_double_precision_formats_are_exact(tmp_path, ext):
    geom = oblique_geometry(seed=5)
    arr = random_array((6, 7, 8), np.int16)
    _, g2 = read_volume(write_volume(tmp_path / f"v{ext}", arr, geom))
    assert_geometry_close(g2, geom, tol=1e-12)


def test_write_converts_bool_and_float64(tmp_path):
    g = Geometry.identity((2.0, 1.0, 0.5))
    b, _ = read_volume(write_volume(tmp_path / "m.nii.gz", np.ones((4, 5, 6), bool), g))
    assert b.dtype == np.uint8 and b.sum() == 4 * 5 * 6
    f = np.linspace(0, 1, 120).reshape(4, 5, 6)
    a, g2 = read_volume(write_volume(tmp_path / "f.mha", f, g))
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, f, rtol=1e-6)
    assert g2 == g


def test_write_accepts_geometry_dict_and_overwrites_plain_output(tmp_path):
    g = oblique_geometry(1)
    target = tmp_path / "o.nrrd"
    write_volume(target, np.zeros((3, 4, 5), np.uint8), g.to_dict())
    write_volume(target, np.full((3, 4, 5), 7, np.uint8), g)
    a, _ = read_volume(target)
    assert (a == 7).all()


def test_mhd_header_points_at_final_data_file(tmp_path):
    write_volume(tmp_path / "brain.mhd", np.zeros((3, 4, 5), np.int16), Geometry.identity())
    header = (tmp_path / "brain.mhd").read_text(errors="replace")
    assert "ElementDataFile = brain.raw" in header
    assert "tmp" not in header


def test_uppercase_extension(tmp_path):
    arr = random_array((3, 4, 5), np.int16)
    write_volume(tmp_path / "UP.NII.GZ", arr, Geometry.identity())
    a, _ = read_volume(tmp_path / "UP.NII.GZ")
    np.testing.assert_array_equal(a, arr)


# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------


def test_geometry_dict_round_trip_and_identity():
    g = oblique_geometry(2)
    assert Geometry.from_dict(g.to_dict()) == g
    i = Geometry.identity((3.0, 1.0, 1.0))
    assert i.spacing == (3.0, 1.0, 1.0)
    assert i.origin == (0.0, 0.0, 0.0)
    assert i.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert "affine" not in i.napari_kwargs()


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"spacing": [1, 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())}, "spacing"),
        ({"spacing": [1, 0, 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())}, "positive"),
        ({"spacing": [1, -2, 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())}, "positive"),
        (
            {"spacing": [1, float("nan"), 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())},
            "finite",
        ),
        (
            {"spacing": [1, 1, 1], "origin": [0, float("inf"), 0], "direction": list(np.eye(3).ravel())},
            "finite",
        ),
        ({"spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0]}, "direction"),
        (
            {"spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": [2, 0, 0, 0, 1, 0, 0, 0, 1]},
            "orthonormal",
        ),
        (
            {"spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": [1, 1, 0, 0, 1, 0, 0, 0, 1]},
            "orthonormal",
        ),
        ({"spacing": [1, 1, 1], "origin": [0, 0, 0]}, "missing direction"),
        ({"spacing": ["a", 1, 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())}, "spacing"),
    ],
)
def test_geometry_from_dict_validates(bad, words):
    with pytest.raises(InputError, match=words):
        Geometry.from_dict(bad)


def test_index_to_world_matches_simpleitk():
    g = oblique_geometry(7)
    img = sitk_image(np.zeros((6, 7, 8), np.uint8), g)
    for zyx in [(0, 0, 0), (5, 6, 7), (1.5, 2.25, 3.75), (-1.0, 4.0, 10.0)]:
        expected = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1]))
        np.testing.assert_allclose(g.index_to_world(zyx), expected, atol=1e-9)
        np.testing.assert_allclose(g.world_to_index(expected), zyx, atol=1e-9)


def napari_world(kwargs: dict, zyx) -> np.ndarray:
    """What napari computes: affine @ (index * scale + translate)."""
    data = np.asarray(zyx, float) * np.asarray(kwargs["scale"]) + np.asarray(kwargs["translate"])
    a = np.asarray(kwargs.get("affine", np.eye(4)))
    return a[:3, :3] @ data + a[:3, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_napari_kwargs_place_voxels_at_reversed_physical_points(seed):
    g = oblique_geometry(seed)
    kw = g.napari_kwargs()
    assert kw["scale"] == list(g.spacing)
    assert kw["translate"] == list(g.origin[::-1])
    assert kw["metadata"] == {"medvae_geometry": g.to_dict()}
    assert np.asarray(kw["affine"]).shape == (4, 4)
    for zyx in [(0, 0, 0), (5, 6, 7), (2, 0, 3)]:
        np.testing.assert_allclose(napari_world(kw, zyx), g.index_to_world(zyx)[::-1], atol=1e-9)


def test_napari_kwargs_agree_with_napari_transforms():
    transforms = pytest.importorskip("napari.utils.transforms")
    g = oblique_geometry(4)
    kw = g.napari_kwargs()
    chain = transforms.TransformChain(
        [
            transforms.CompositeAffine(kw["scale"], kw["translate"], ndim=3),
            transforms.Affine(affine_matrix=kw["affine"], ndim=3),
        ]
    )
    for zyx in [(0, 0, 0), (5, 6, 7), (1, 2, 3)]:
        np.testing.assert_allclose(chain(np.asarray(zyx, float)), g.index_to_world(zyx)[::-1], atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_from_layer_kwargs_round_trip(seed):
    g = oblique_geometry(seed)
    kw = g.napari_kwargs()
    # with metadata: exact
    assert Geometry.from_layer_kwargs(kw["scale"], kw["translate"], kw["affine"], kw["metadata"]) == g
    # without metadata: rebuilt from scale/translate/affine (4x4 array, 3x3 array, Affine-like)
    rebuilt = Geometry.from_layer_kwargs(kw["scale"], kw["translate"], kw["affine"])
    assert_geometry_close(rebuilt, g, tol=1e-9)

    class AffineLike:
        affine_matrix = kw["affine"]

    assert_geometry_close(Geometry.from_layer_kwargs(kw["scale"], kw["translate"], AffineLike()), g, tol=1e-9)
    # a 3x3 rotation with the translate folded in the napari way
    rot = np.asarray(kw["affine"])[:3, :3]
    t3 = np.linalg.solve(rot, np.asarray(g.origin[::-1]))
    assert_geometry_close(Geometry.from_layer_kwargs(kw["scale"], t3, rot), g, tol=1e-9)


def test_from_layer_kwargs_axis_aligned_and_stale_metadata():
    g = Geometry(spacing=(3, 1, 0.5), origin=(10, 20, 30))
    kw = g.napari_kwargs()
    assert Geometry.from_layer_kwargs(kw["scale"], kw["translate"]) == g
    assert Geometry.from_layer_kwargs(kw["scale"], kw["translate"], None, kw["metadata"]) == g
    # the user changed the layer scale: the stale metadata must not win
    changed = Geometry.from_layer_kwargs([2, 1, 0.5], kw["translate"], None, kw["metadata"])
    assert changed.spacing == (2.0, 1.0, 0.5)
    assert changed.origin == g.origin
    # metadata alone
    assert Geometry.from_layer_kwargs(None, None, None, kw["metadata"]) == g


def test_from_layer_kwargs_refuses_non_3d_and_shear():
    with pytest.raises(InputError, match="3D layer"):
        Geometry.from_layer_kwargs([1, 1], [0, 0])
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(InputError, match="shear"):
        Geometry.from_layer_kwargs([1, 1, 1], [0, 0, 0], shear)


# ------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------


def write_dicom_series(directory: Path, array: np.ndarray, geom: Geometry, series_uid: str) -> None:
    """Write a (z, y, x) int16 volume as one DICOM file per slice (SimpleITK's series example)."""
    directory.mkdir(parents=True, exist_ok=True)
    img = sitk_image(array.astype(np.int16), geom)
    d = geom.direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = [
        ("0008|0031", "120000"),
        ("0008|0021", "20240101"),
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000e", series_uid),
        ("0020|000d", series_uid + ".1"),
        ("0020|0037", "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
        ("0008|103e", "test series"),
        ("0008|0060", "MR"),
        ("0018|0050", str(geom.spacing[0])),
    ]
    for i in range(img.GetDepth()):
        sl = img[:, :, i]
        for tag, value in common:
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0008|0012", "20240101")
        sl.SetMetaData("0008|0013", "120000")
        sl.SetMetaData("0008|0018", f"{series_uid}.{i + 100}")
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, i))))
        sl.SetMetaData("0020|0013", str(i + 1))
        writer.SetFileName(str(directory / f"{series_uid[-3:]}_{i:03d}.dcm"))
        writer.Execute(sl)


def dicom_geometry(seed: int) -> Geometry:
    rng = np.random.default_rng(seed)
    # DICOM stores positions as decimal strings: keep the values short
    return Geometry(
        spacing=(2.5, 0.75, 0.5),
        origin=tuple(np.round(rng.uniform(-100, 100, 3), 2)),
        direction=tuple(np.round(rotation(seed), 12).ravel()),
    )


def test_dicom_series_read(tmp_path):
    g = dicom_geometry(11)
    arr = random_array((5, 7, 8), np.int16) // 16
    write_dicom_series(tmp_path / "series", arr, g, "1.2.826.0.1.3680043.2.1125.1001")
    back, g2 = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back, arr)
    assert back.shape == (5, 7, 8)
    assert_geometry_close(g2, g, tol=1e-5)
    assert is_supported_path(tmp_path / "series")
    with pytest.raises(VolumeReadError, match="single 3D volume"):
        read_volume(tmp_path / "series", volume_index=1)


def test_dicom_mixed_series_directory(tmp_path):
    g = dicom_geometry(12)
    uid_a, uid_b = "1.2.826.0.1.3680043.2.1125.2001", "1.2.826.0.1.3680043.2.1125.2002"
    write_dicom_series(tmp_path / "mixed", random_array((4, 5, 6), np.int16) // 16, g, uid_a)
    b = random_array((3, 5, 6), np.int16, seed=9) // 16
    write_dicom_series(tmp_path / "mixed", b, g, uid_b)
    with pytest.raises(VolumeReadError) as info:
        read_volume(tmp_path / "mixed")
    msg = str(info.value)
    assert "2 DICOM series" in msg
    assert f"{uid_a} (4 files)" in msg and f"{uid_b} (3 files)" in msg
    assert "series_uid" in msg
    got, _ = read_volume(tmp_path / "mixed", series_uid=uid_b)
    np.testing.assert_array_equal(got, b)
    with pytest.raises(VolumeReadError, match="not in"):
        read_volume(tmp_path / "mixed", series_uid="1.2.3")


def test_directory_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="no DICOM series"):
        read_volume(tmp_path)


# ------------------------------------------------------------------------------------------------
# Read errors
# ------------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(VolumeReadError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("name", ["scan.png", "scan.txt", "scan.dcm"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00" * 100)
    with pytest.raises(VolumeReadError, match="unsupported file type") as info:
        read_volume(tmp_path / name)
    assert ".nii.gz" in str(info.value)
    if name.endswith(".dcm"):
        assert "directory" in str(info.value)


@pytest.mark.parametrize("ext", EXTS)
def test_corrupt_file(tmp_path, ext):
    p = tmp_path / f"junk{ext}"
    p.write_bytes(np.random.default_rng(0).bytes(400))
    with pytest.raises(VolumeReadError) as info:
        read_volume(p)
    msg = str(info.value)
    assert str(p) in msg
    assert "Traceback" not in msg and "\n" not in msg


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, ext):
    arr = random_array((6, 7, 8), np.int16)
    p = write_volume(tmp_path / f"full{ext}", arr, oblique_geometry(1))
    data = p.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2 + 120])  # keep the whole header, lose voxel data
    with pytest.raises(VolumeReadError) as info:
        read_volume(cut)
    assert str(cut) in str(info.value)
    assert "\n" not in str(info.value)


def test_mhd_with_missing_data_file(tmp_path):
    write_volume(tmp_path / "a.mhd", np.zeros((3, 4, 5), np.int16), Geometry.identity())
    (tmp_path / "a.raw").unlink()
    with pytest.raises(VolumeReadError, match="a.mhd"):
        read_volume(tmp_path / "a.mhd")


def test_gigantic_header_fails_fast(tmp_path, monkeypatch):
    (tmp_path / "huge.raw").write_bytes(b"\x00" * 64)
    (tmp_path / "huge.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
        "ElementType = MET_SHORT\nElementSpacing = 1 1 1\nElementDataFile = huge.raw\n"
    )
    calls = []
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda self: calls.append(1))
    with pytest.raises(VolumeReadError, match="too large|voxels") as info:
        read_volume(tmp_path / "huge.mhd")
    assert "100000 x 100000 x 100000" in str(info.value)
    assert calls == []  # refused from the header alone


def test_header_larger_than_available_memory(tmp_path, monkeypatch):
    p = write_volume(tmp_path / "v.mha", np.zeros((6, 7, 8), np.float32), Geometry.identity())
    monkeypatch.setattr(mio, "_available_memory", lambda: 1000)
    with pytest.raises(VolumeReadError, match="memory available"):
        read_volume(p)


def test_2d_image(tmp_path):
    p = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 8), np.uint8)), str(p))
    with pytest.raises(VolumeReadError, match=r"is 2D \(8 x 7 voxels\); a 3D volume is expected"):
        read_volume(p)


def test_rgb_image(tmp_path):
    p = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 7, 8, 3), np.uint8), isVector=True), str(p))
    with pytest.raises(VolumeReadError, match="3 values per voxel"):
        read_volume(p)


def test_complex_image(tmp_path):
    p = tmp_path / "c.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 7, 8), np.complex64)), str(p))
    with pytest.raises(VolumeReadError, match="complex"):
        read_volume(p)


@pytest.fixture
def four_d(tmp_path):
    vols = [random_array((4, 5, 6), np.int16, seed=s) for s in range(3)]
    img = sitk.JoinSeries([sitk_image(v, Geometry(spacing=(3, 2, 1), origin=(1, 2, 3))) for v in vols])
    p = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(img, str(p))
    return p, vols


def test_4d_without_index(four_d):
    p, _ = four_d
    with pytest.raises(VolumeReadError, match="holds 3 volumes") as info:
        read_volume(p)
    assert "volume_index" in str(info.value)
    shape = read_volume(p, volume_index=0)[0].shape
    assert f"{shape[2]} x {shape[1]} x {shape[0]} voxels" in str(info.value)  # the file's axis order, as nibabel's


@pytest.mark.parametrize("index", [0, 2])
def test_4d_with_index(four_d, index):
    p, vols = four_d
    arr, g = read_volume(p, volume_index=index)
    np.testing.assert_array_equal(arr, vols[index])
    assert_geometry_close(g, Geometry(spacing=(3, 2, 1), origin=(1, 2, 3)))


@pytest.mark.parametrize("index", [3, -1])
def test_4d_out_of_range_index(four_d, index):
    p, _ = four_d
    with pytest.raises(VolumeReadError, match="volume_index"):
        read_volume(p, volume_index=index)


def test_3d_with_nonzero_index(tmp_path):
    p = write_volume(tmp_path / "v.nrrd", np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    assert read_volume(p, volume_index=0)[0].shape == (3, 4, 5)
    with pytest.raises(VolumeReadError, match="single 3D volume"):
        read_volume(p, volume_index=1)


def test_errors_are_medvae_errors():
    assert issubclass(VolumeReadError, MedVAEError) and issubclass(VolumeWriteError, MedVAEError)


# ------------------------------------------------------------------------------------------------
# Output paths and atomic writes
# ------------------------------------------------------------------------------------------------


def test_supported_extensions_and_helper(tmp_path):
    assert SUPPORTED_EXTENSIONS == (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".mgz", ".mgh")
    assert is_supported_path(tmp_path / "aseg.mgz") and is_supported_path(tmp_path / "T1.mgh")
    assert is_supported_path(tmp_path / "x.nii.gz")
    assert is_supported_path(tmp_path / "x.MHA")
    assert is_supported_path(tmp_path)
    assert not is_supported_path(tmp_path / "x.png")
    assert not is_supported_path(tmp_path / "x.gz")


def test_check_output_path_ok(tmp_path):
    assert (
        check_output_path(tmp_path / "out.nii.gz", [tmp_path / "in.nii.gz"])
        == (tmp_path / "out.nii.gz").resolve()
    )


def test_check_output_path_unsupported_extension(tmp_path):
    with pytest.raises(VolumeWriteError, match=r"unsupported extension.*\.nii\.gz"):
        check_output_path(tmp_path / "out.png")


def test_check_output_path_missing_dir(tmp_path):
    with pytest.raises(VolumeWriteError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "out.nii.gz")


def test_check_output_path_read_only_dir(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(
        mio.os, "access", lambda p, mode: False if Path(p) == tmp_path.resolve() else real_access(p, mode)
    )
    with pytest.raises(VolumeWriteError, match="not writable"):
        check_output_path(tmp_path / "out.nii.gz")


def test_check_output_path_same_as_input(tmp_path):
    inp = write_volume(tmp_path / "in.nii.gz", np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    with pytest.raises(VolumeWriteError, match="would overwrite the input"):
        check_output_path(inp, [inp])
    # the same file reached another way: "..", symlink
    (tmp_path / "sub").mkdir()
    with pytest.raises(VolumeWriteError, match="would overwrite the input"):
        check_output_path(tmp_path / "sub" / ".." / "in.nii.gz", [str(inp)])
    link = tmp_path / "link.nii.gz"
    link.symlink_to(inp)
    with pytest.raises(VolumeWriteError, match="would overwrite the input"):
        check_output_path(link, [inp])


def test_check_output_path_existing_directory(tmp_path):
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(VolumeWriteError, match="directory"):
        check_output_path(tmp_path / "dir.nii")


def test_write_refuses_bad_input(tmp_path):
    with pytest.raises(VolumeWriteError, match="3D"):
        write_volume(tmp_path / "x.nii", np.zeros((4, 5)), Geometry.identity())
    with pytest.raises(VolumeWriteError, match="unsupported extension"):
        write_volume(tmp_path / "x.png", np.zeros((3, 4, 5)), Geometry.identity())
    with pytest.raises(VolumeWriteError, match="does not exist"):
        write_volume(tmp_path / "no" / "x.nii", np.zeros((3, 4, 5)), Geometry.identity())
    with pytest.raises(VolumeWriteError, match="dtype"):
        write_volume(tmp_path / "x.nii", np.zeros((3, 4, 5), np.complex64), Geometry.identity())
    assert listing(tmp_path) == []


@pytest.mark.parametrize("ext", EXTS)
def test_failed_write_leaves_nothing_and_keeps_existing_file(tmp_path, monkeypatch, ext):
    target = tmp_path / f"out{ext}"
    write_volume(target, np.full((3, 4, 5), 5, np.uint8), Geometry.identity())
    before = {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)}

    def failing_write(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")  # simulate a half-written temp file
        raise RuntimeError("ITK ERROR: ImageFileWriter(0x1234): disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(VolumeWriteError, match="disk full") as info:
        write_volume(target, np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    assert "\n" not in str(info.value)
    assert {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)} == before


@pytest.mark.parametrize("ext", [".nii.gz", ".mhd"])
def test_failed_replace_leaves_no_temp(tmp_path, monkeypatch, ext):
    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mio.os, "replace", failing_replace)
    with pytest.raises(VolumeWriteError, match="Permission denied"):
        write_volume(tmp_path / f"o{ext}", np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Property test
# ------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7)),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
    spacing=st.tuples(*[st.floats(0.1, 5.0)] * 3),
    origin=st.tuples(*[st.floats(-300.0, 300.0)] * 3),
    rot_seed=st.integers(0, 2**31 - 1),
    ext=st.sampled_from([".nii.gz", ".mha"]),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_property_round_trip(shape, dtype, spacing, origin, rot_seed, ext, data_seed):
    geom = Geometry(spacing=spacing, origin=origin, direction=tuple(rotation(rot_seed).ravel()))
    arr = random_array(shape, dtype, seed=data_seed)
    with tempfile.TemporaryDirectory() as d:
        back, g2 = read_volume(write_volume(Path(d) / f"p{ext}", arr, geom))
        assert back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)
        assert_geometry_close(g2, geom, tol=1e-6 if ext.startswith(".nii") else 1e-12)


# ------------------------------------------------------------------------------------------------
# FreeSurfer MGZ / MGH
# ------------------------------------------------------------------------------------------------

MGH_EXTS = [".mgz", ".mgh"]


def freesurfer_like_geometry() -> Geometry:
    """Oblique (rotated about two axes) and anisotropic, origin far from 0: a tilted clinical FLAIR."""
    a, b = 0.35, -0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry(spacing=(4.0, 0.9, 0.45), origin=(-118.25, 96.5, -71.75), direction=tuple((rz @ rx).ravel()))


def nibabel_world(path: Path, zyx) -> np.ndarray:
    """RAS mm of array index (z, y, x), by nibabel's own reading of the file (independent of our reader)."""
    import nibabel as nib

    return (nib.load(str(path)).affine @ np.array([*zyx[::-1], 1.0]))[:3]


@pytest.mark.parametrize("ext", MGH_EXTS)
def test_mgz_round_trip_from_oblique_nifti(tmp_path, ext):
    geom = freesurfer_like_geometry()
    arr = random_array((7, 9, 11), np.int16, seed=4)
    nii = write_volume(tmp_path / "flair.nii.gz", arr, geom)
    a1, g1 = read_volume(nii)
    out = write_volume(tmp_path / f"flair{ext}", a1, g1)
    assert out == (tmp_path / f"flair{ext}").resolve()
    assert listing(tmp_path) == sorted(["flair.nii.gz", f"flair{ext}"])  # no temp file left
    a2, g2 = read_volume(out)
    assert a2.dtype == np.int16 and a2.dtype.isnative
    np.testing.assert_array_equal(a2, a1)
    assert_geometry_close(g2, g1, tol=1e-5)
    # the RAS <-> LPS convention, checked against nibabel's own reading of both files
    for zyx in [(0, 0, 0), (6, 8, 10), (3, 1, 7)]:
        ras = nibabel_world(out, zyx)
        np.testing.assert_allclose(ras, nibabel_world(nii, zyx), atol=1e-4)
        np.testing.assert_allclose(g2.index_to_world(zyx), ras * [-1, -1, 1], atol=1e-4)
    if ext == ".mgz":
        assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip


def test_mgz_voxels_match_nibabel(tmp_path):
    import nibabel as nib

    arr = random_array((5, 6, 7), np.float32, seed=2)
    out = write_volume(tmp_path / "v.mgz", arr, freesurfer_like_geometry())
    ref = np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0)  # nibabel: (i, j, k)
    back, _ = read_volume(out)
    np.testing.assert_array_equal(back, ref)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    "dtype, stored",
    [(np.uint8, np.uint8), (np.int16, np.int16), (np.int32, np.int32), (np.float32, np.float32),
     (np.int8, np.int16), (np.uint16, np.int32), (np.uint32, np.int32), (np.int64, np.int32),
     (np.float64, np.float32), (np.bool_, np.uint8)],
)
def test_mgz_dtypes_are_kept_or_widened_losslessly(tmp_path, dtype, stored):
    if dtype is np.bool_:
        arr = np.random.default_rng(0).random((4, 5, 6)) > 0.5
    elif np.dtype(dtype).kind == "f":
        arr = random_array((4, 5, 6), dtype)
    else:
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
        arr = np.random.default_rng(1).integers(lo, hi, (4, 5, 6), endpoint=True).astype(dtype)
        arr.flat[:2] = (lo, hi)
    back, _ = read_volume(write_volume(tmp_path / "v.mgz", arr, Geometry.identity()))
    assert back.dtype == np.dtype(stored)
    np.testing.assert_array_equal(back, arr.astype(stored))


def test_mgz_refuses_integers_beyond_int32(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint32)
    arr[0, 0, 0] = 2**31
    with pytest.raises(VolumeWriteError, match=r"\(0\.\.2147483648\) do not fit the 32-bit integers.*\.nii\.gz"):
        write_volume(tmp_path / "big.mgz", arr, Geometry.identity())
    assert listing(tmp_path) == []


def test_mgz_uppercase_extension(tmp_path):
    arr = random_array((3, 4, 5), np.uint8)
    out = write_volume(tmp_path / "ASEG.MGZ", arr, Geometry.identity((1.0, 1.0, 1.0)))
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_volume(out)[0], arr)


def test_read_uint16_mgz_written_by_freesurfer_7(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(6, 5, 4) * 1000  # (i, j, k), beyond int16
    p = tmp_path / "u16.mgz"
    nib.MGHImage(data, np.diag([-1.0, 1.0, 1.0, 1.0])).to_filename(str(p))
    back, geo = read_volume(p)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, data.transpose(2, 1, 0))
    assert geo.direction == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS -x,+y -> LPS +x,-y


@pytest.fixture
def four_d_mgz(tmp_path):
    import nibabel as nib

    vols = [random_array((4, 5, 6), np.int16, seed=s) for s in range(3)]
    data = np.stack([v.transpose(2, 1, 0) for v in vols], axis=-1)  # (i, j, k, frame)
    p = tmp_path / "dwi.mgz"
    nib.MGHImage(data, np.diag([2.0, 2.0, 3.0, 1.0])).to_filename(str(p))
    return p, vols


@pytest.mark.parametrize("index", [0, 2])
def test_4d_mgz_with_index(four_d_mgz, index):
    p, vols = four_d_mgz
    arr, geo = read_volume(p, volume_index=index)
    np.testing.assert_array_equal(arr, vols[index])
    assert geo.spacing == (3.0, 2.0, 2.0)


def test_4d_mgz_refusals(four_d_mgz, tmp_path):
    p, _ = four_d_mgz
    with pytest.raises(VolumeReadError, match=r"4D: it holds 3 volumes.*volume_index"):
        read_volume(p)
    with pytest.raises(VolumeReadError, match=r"volume_index 3 is out of range.*holds 3 volumes"):
        read_volume(p, volume_index=3)
    single = write_volume(tmp_path / "one.mgh", np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    assert read_volume(single, volume_index=0)[0].shape == (3, 4, 5)
    with pytest.raises(VolumeReadError, match="single 3D volume"):
        read_volume(single, volume_index=1)


def _mgh_bytes(tmp_path: Path, ext: str = ".mgh") -> bytes:
    p = write_volume(tmp_path / f"src{ext}", random_array((6, 7, 8), np.int16), freesurfer_like_geometry())
    data = p.read_bytes()
    p.unlink()
    return data


def _patch_header(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    import struct

    packed = struct.pack(fmt, *values)
    return raw[:offset] + packed + raw[offset + len(packed):]


def _expect_read_error(path: Path, *words: str) -> str:
    with pytest.raises(VolumeReadError) as info:
        read_volume(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg and "Traceback" not in msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize("ext", MGH_EXTS)
def test_corrupt_mgz_random_bytes(tmp_path, ext):
    p = tmp_path / f"junk{ext}"
    p.write_bytes(np.random.default_rng(0).bytes(400))
    _expect_read_error(p, "corrupt")


def test_mgz_that_is_not_gzip_and_empty_mgz(tmp_path):
    p = tmp_path / "plain.mgz"
    p.write_bytes(_mgh_bytes(tmp_path))  # an uncompressed .mgh named .mgz
    _expect_read_error(p, "not a valid .mgz file", "corrupt")
    empty = tmp_path / "empty.mgz"
    empty.write_bytes(b"")
    _expect_read_error(empty, "ends inside its 284-byte MGH header")


@pytest.mark.parametrize("ext", MGH_EXTS)
def test_truncated_mgz(tmp_path, ext):
    import gzip

    raw = _mgh_bytes(tmp_path)
    cut = raw[: 284 + 6 * 7 * 8]  # whole header, half of the int16 voxels
    p = tmp_path / f"cut{ext}"
    p.write_bytes(gzip.compress(cut) if ext == ".mgz" else cut)
    _expect_read_error(p, "truncated", f"{6 * 7 * 8} of {6 * 7 * 8 * 2} bytes")


def test_mgz_with_cut_gzip_stream(tmp_path):
    data = _mgh_bytes(tmp_path, ".mgz")
    p = tmp_path / "cut.mgz"
    p.write_bytes(data[: len(data) // 2])
    _expect_read_error(p, "truncated or corrupt")


@pytest.mark.parametrize(
    "offset, fmt, values, words",
    [
        (0, ">i", (7,), ("version field 7, expected 1",)),
        (4, ">iiii", (8, 7, 0, 1), ("dimensions [8, 7, 0, 1]", "positive")),
        (20, ">i", (6,), ("voxel type code 6", "float (float32)")),
        (30, ">fff", (1.0, 0.0, 1.0), ("invalid geometry", "spacing must be positive")),
        (42, ">fff", (2.0, 0.0, 0.0), ("invalid geometry", "orthonormal")),
    ],
)
def test_mgh_bad_header_fields(tmp_path, offset, fmt, values, words):
    p = tmp_path / "bad.mgh"
    p.write_bytes(_patch_header(_mgh_bytes(tmp_path), offset, fmt, *values))
    _expect_read_error(p, *words)


def test_mgh_gigantic_header_fails_fast(tmp_path, monkeypatch):
    p = tmp_path / "huge.mgh"
    p.write_bytes(_patch_header(_mgh_bytes(tmp_path), 4, ">iii", 100000, 100000, 100000))
    allocated = []
    real_empty = np.empty
    monkeypatch.setattr(mio.np, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    msg = _expect_read_error(p, "100000 x 100000 x 100000")
    assert "voxels" in msg and allocated == []  # refused from the header alone


def test_mgz_nonfinite_voxels_read_as_zero_with_warning(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, 0], arr[1, 2, 3] = np.nan, np.inf
    p = write_volume(tmp_path / "nan.mgz", arr, Geometry.identity())
    with pytest.warns(UserWarning, match="2 NaN/Inf voxels; they are read as 0"):
        back, _ = read_volume(p)
    assert back[0, 0, 0] == 0 and back[1, 2, 3] == 0 and back.sum() == arr.size - 2


@pytest.mark.parametrize("ext", MGH_EXTS)
def test_failed_mgz_write_leaves_nothing_and_keeps_existing_file(tmp_path, monkeypatch, ext):
    import nibabel as nib

    target = tmp_path / f"out{ext}"
    write_volume(target, np.full((3, 4, 5), 5, np.uint8), Geometry.identity())
    before = target.read_bytes()
    written = []

    def failing_write(self, filename, **kwargs):
        written.append(filename)
        Path(filename).write_bytes(b"partial")  # a half-written temp file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib.MGHImage, "to_filename", failing_write)
    with pytest.raises(VolumeWriteError, match="No space left on device"):
        write_volume(target, np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    assert written and written[0].endswith(ext) and Path(written[0]).name.startswith(".out.tmp-")
    assert listing(tmp_path) == [f"out{ext}"] and target.read_bytes() == before


def test_failed_mgz_replace_leaves_no_temp(tmp_path, monkeypatch):
    monkeypatch.setattr(mio.os, "replace", lambda src, dst: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(VolumeWriteError, match="Permission denied"):
        write_volume(tmp_path / "o.mgz", np.zeros((3, 4, 5), np.uint8), Geometry.identity())
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["out.mgz", "out.mgh", "OUT.MGZ"])
def test_check_output_path_accepts_freesurfer(tmp_path, name):
    assert check_output_path(tmp_path / name, [tmp_path / "in.nii.gz"]) == (tmp_path / name).resolve()


# --------------------------------------------------------------------------------------------
# NIfTI in, NIfTI out: the input's header is kept


def _mni_head(path: Path, shape=(6, 7, 8, 1), slope: float | None = None) -> None:
    """A NIfTI file as MNI-space tools write it: sform code 4 (MNI), qform code 1, a description, a TR."""
    import nibabel as nib

    aff = np.array([[-1.5, 0, 0, 90.0], [0, 1.5, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), aff)
    img.header.set_sform(aff, 4)
    img.header.set_qform(aff, 1)
    img.header["descrip"] = b"T1 MPRAGE"
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.5
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    img.to_filename(str(path))


@pytest.mark.parametrize("out_ext", [".nii.gz", ".nii"])
def test_nifti_output_keeps_the_input_header(tmp_path, out_ext):
    import nibabel as nib

    src = tmp_path / "in.nii.gz"
    _mni_head(src)
    vol, geo = read_volume(src)
    res = vol.astype(np.float32) * 0.5
    out = write_volume(tmp_path / f"out{out_ext}", res, geo, header_from=src)
    a, b = nib.load(str(src)), nib.load(str(out))
    assert (int(b.header["sform_code"]), int(b.header["qform_code"])) == (4, 1)  # was (1, 1) from the geometry
    np.testing.assert_allclose(b.affine, a.affine)
    assert b.header["descrip"].tobytes().rstrip(b"\0") == b"T1 MPRAGE"
    assert b.shape == a.shape == (6, 7, 8, 1) and float(b.header["pixdim"][4]) == 2.5  # still 4D, with its TR
    assert b.header.get_xyzt_units() == ("mm", "sec")
    back, bgeo = read_volume(out)  # and it reads back as the same volume on the same grid
    np.testing.assert_array_equal(back, res)
    assert bgeo.spacing == pytest.approx(geo.spacing) and bgeo.origin == pytest.approx(geo.origin)
    # a derived map gets its own description; scaling and display range are reset
    heat = write_volume(tmp_path / f"heat{out_ext}", res, geo, header_from=src, descrip="medvae anomaly heatmap")
    h = nib.load(str(heat)).header
    assert h["descrip"].tobytes().rstrip(b"\0") == b"medvae anomaly heatmap"
    assert h.get_slope_inter() == (None, None) and float(h["cal_max"]) == 0.0


def test_nifti_header_of_a_scaled_input_is_not_applied_twice(tmp_path):
    """An int16 file with scl_slope 2 reads as float (the scaled values); the output holds those values as they are."""
    import nibabel as nib

    src = tmp_path / "scaled.nii.gz"
    _mni_head(src, shape=(6, 7, 8), slope=2.0)
    vol, geo = read_volume(src)
    out = write_volume(tmp_path / "out.nii.gz", vol, geo, header_from=src)
    np.testing.assert_array_equal(read_volume(out)[0], vol)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), np.transpose(vol, (2, 1, 0)))


def test_header_from_falls_back_to_the_geometry(tmp_path):
    """Another grid, another format or no NIfTI source: the output is written from the geometry alone."""
    import nibabel as nib

    src = tmp_path / "in.nii.gz"
    _mni_head(src, shape=(6, 7, 8))
    vol, geo = read_volume(src)
    other = write_volume(tmp_path / "small.nii.gz", vol[:, :, :4], geo, header_from=src)  # not the input's grid
    assert nib.load(str(other)).shape == (4, 7, 8) and int(nib.load(str(other)).header["sform_code"]) != 4
    nrrd = write_volume(tmp_path / "out.nrrd", vol, geo, header_from=src)  # NIfTI header, NRRD output
    np.testing.assert_array_equal(read_volume(nrrd)[0], vol)
    mha = write_volume(tmp_path / "in.mha", vol, geo)
    again = write_volume(tmp_path / "again.nii.gz", vol, geo, header_from=mha)  # not a NIfTI source
    np.testing.assert_array_equal(read_volume(again)[0], vol)
    moved = Geometry(spacing=(9.0, 9.0, 9.0), origin=geo.origin, direction=geo.direction)
    odd = write_volume(tmp_path / "odd.nii.gz", vol, moved, header_from=src)  # voxel sizes disagree: the geometry's
    assert read_volume(odd)[1].spacing == pytest.approx((9.0, 9.0, 9.0))


def test_header_from_is_ignored_when_the_array_was_moved(tmp_path):
    """Same shape and voxel sizes but another origin (a napari layer the user shifted): the geometry decides."""
    import nibabel as nib

    src = tmp_path / "in.nii.gz"
    _mni_head(src, shape=(6, 7, 8))
    vol, geo = read_volume(src)
    shifted = Geometry(spacing=geo.spacing, origin=tuple(o + 5.0 for o in geo.origin), direction=geo.direction)
    out = write_volume(tmp_path / "out.nii.gz", vol, shifted, header_from=src)
    assert read_volume(out)[1].origin == pytest.approx(shifted.origin)
    assert int(nib.load(str(out)).header["sform_code"]) != 4
