"""Reader, writers and sample data through napari itself: viewer.open, layer.save, open_sample."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import PLUGIN, open_volume

from napari_medvae.io import Geometry, read_volume

pytestmark = pytest.mark.napari


def test_reader_names_layer_from_stem_and_keeps_geometry(make_napari_viewer, sample_dir):
    viewer = make_napari_viewer()
    layer = open_volume(viewer, sample_dir / "mni_t1_lesion.nii.gz")
    arr, geo = read_volume(sample_dir / "mni_t1_lesion.nii.gz")
    assert layer.name == "mni_t1_lesion"
    np.testing.assert_array_equal(layer.data, arr)
    kw = geo.napari_kwargs()
    np.testing.assert_allclose(layer.scale, kw["scale"])
    np.testing.assert_allclose(layer.translate, kw["translate"])
    assert layer.metadata["medvae_geometry"] == geo.to_dict()


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mgz", ".mgh"])
def test_image_round_trip_through_save_and_open(make_napari_viewer, sample_dir, tmp_path, ext):
    viewer = make_napari_viewer()
    layer = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    _, geo = read_volume(sample_dir / "mni_t1_healthy.nii.gz")
    out = tmp_path / f"copy{ext}"
    layer.save(str(out), plugin=PLUGIN)
    arr2, geo2 = read_volume(out)
    np.testing.assert_array_equal(arr2, layer.data)
    assert arr2.dtype == layer.data.dtype
    np.testing.assert_allclose(geo2.spacing, geo.spacing, atol=1e-6)
    np.testing.assert_allclose(geo2.origin, geo.origin, atol=1e-4)
    np.testing.assert_allclose(geo2.direction, geo.direction, atol=1e-6)
    again = open_volume(viewer, out)
    assert again.name == "copy"
    np.testing.assert_allclose(again.scale, layer.scale)
    np.testing.assert_allclose(again.translate, layer.translate)


def test_oblique_geometry_survives_open_and_save(make_napari_viewer, tmp_path):
    from napari_medvae.io import write_volume

    c, s = np.cos(0.3), np.sin(0.3)
    geo = Geometry(spacing=(3.0, 1.0, 0.8), origin=(-90.0, 12.5, 40.0), direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    arr = np.random.default_rng(0).integers(0, 1000, (6, 9, 11)).astype(np.int16)
    src = write_volume(tmp_path / "oblique.nrrd", arr, geo)
    viewer = make_napari_viewer()
    layer = open_volume(viewer, src)
    assert not np.allclose(layer.affine.affine_matrix, np.eye(4))  # the rotation is shown in napari
    layer.save(str(tmp_path / "back.nii.gz"), plugin=PLUGIN)
    arr2, geo2 = read_volume(tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(arr2, arr)
    np.testing.assert_allclose(geo2.direction, geo.direction, atol=1e-6)
    np.testing.assert_allclose(geo2.origin, geo.origin, atol=1e-4)
    np.testing.assert_allclose(geo2.spacing, geo.spacing, atol=1e-6)


def test_layer_without_file_geometry_is_written_from_scale_and_translate(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    layer = viewer.add_image(data, name="made here", scale=(2.5, 1.0, 0.5), translate=(10.0, -3.0, 7.0))
    layer.save(str(tmp_path / "made.mha"), plugin=PLUGIN)
    back = open_volume(viewer, tmp_path / "made.mha")
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.scale, (2.5, 1.0, 0.5))
    np.testing.assert_allclose(back.data_to_world((1, 2, 3)), layer.data_to_world((1, 2, 3)), atol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_labels_round_trip(make_napari_viewer, sample_dir, tmp_path, dtype):
    viewer = make_napari_viewer()
    img = open_volume(viewer, sample_dir / "mni_t1_lesion.nii.gz")
    mask, _ = read_volume(sample_dir / "mni_t1_lesion_mask.nii.gz")
    lab = viewer.add_labels(mask.astype(dtype), name="lesions", scale=img.scale, translate=img.translate,
                            affine=img.affine, metadata=dict(img.metadata))
    lab.save(str(tmp_path / "lesions.nii.gz"), plugin=PLUGIN)
    back, geo = read_volume(tmp_path / "lesions.nii.gz")
    np.testing.assert_array_equal(back, mask.astype(dtype))
    assert geo.to_dict() == Geometry.from_dict(img.metadata["medvae_geometry"]).to_dict()


def test_dicom_series_folder_opens_as_one_layer(make_napari_viewer, tmp_path):
    from test_io import dicom_geometry, write_dicom_series

    g = dicom_geometry(3)
    arr = (np.random.default_rng(1).integers(0, 2000, (5, 7, 8))).astype(np.int16)
    write_dicom_series(tmp_path / "T1_series", arr, g, "1.2.826.0.1.3680043.2.1125.3001")
    viewer = make_napari_viewer()
    layer = open_volume(viewer, tmp_path / "T1_series")
    assert layer.name == "T1_series"
    np.testing.assert_array_equal(layer.data, arr)
    np.testing.assert_allclose(layer.scale, g.spacing, atol=1e-5)


def test_reader_leaves_other_folders_and_files_to_other_plugins(tmp_path):
    from napari_medvae._reader import get_reader

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a volume")
    assert get_reader(str(tmp_path / "notes")) is None
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader(str(tmp_path / "x.nii.gz")) is not None


def test_open_every_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    for key in ("real_brain", "real_head", "healthy", "lesion", "missing", "noisy"):
        viewer.open_sample(PLUGIN, key)
    names = [layer.name for layer in viewer.layers]
    assert {"real_t1_ds002748_sub-51_slab", "real_t1_head_ds011_sub-01_2mm", "mni_t1_healthy", "mni_t1_lesion",
            "mni_t1_lesion truth", "mni_t1_missing", "mni_t1_noisy"} <= set(names)
    slab = viewer.layers["real_t1_ds002748_sub-51_slab"]
    assert np.allclose(sorted(slab.scale), [0.868, 0.868, 1.0], atol=0.01)  # native spacing, not resampled
    for layer in viewer.layers:
        assert layer.ndim == 3 and "medvae_geometry" in layer.metadata


# ------------------------------------------------------------------------------------------------
# FreeSurfer .mgz / .mgh
# ------------------------------------------------------------------------------------------------


def test_reader_opens_oblique_mgz_with_scale_translate_affine(make_napari_viewer, tmp_path):
    import nibabel as nib
    from test_io import freesurfer_like_geometry

    from napari_medvae.io import write_volume

    geo = freesurfer_like_geometry()
    arr = np.random.default_rng(2).integers(0, 255, (7, 9, 11)).astype(np.uint8)
    src = write_volume(tmp_path / "brain.finalsurfs.mgz", arr, geo)
    viewer = make_napari_viewer()
    layer = open_volume(viewer, src)
    assert layer.name == "brain.finalsurfs"
    assert layer.data.dtype == np.uint8
    np.testing.assert_array_equal(layer.data, arr)
    _, read_geo = read_volume(src)
    kw = read_geo.napari_kwargs()
    np.testing.assert_allclose(layer.scale, kw["scale"])
    np.testing.assert_allclose(layer.translate, kw["translate"])
    np.testing.assert_allclose(layer.affine.affine_matrix, kw["affine"])
    assert not np.allclose(layer.affine.affine_matrix, np.eye(4))  # the tilt is shown
    np.testing.assert_allclose(layer.scale, geo.spacing, rtol=1e-6)
    # napari's world (z, y, x, LPS) against nibabel's RAS position of the same voxel
    ras_affine = nib.load(str(src)).affine
    for zyx in [(0, 0, 0), (6, 8, 10), (2, 5, 1)]:
        ras = (ras_affine @ np.array([*zyx[::-1], 1.0]))[:3]
        np.testing.assert_allclose(layer.data_to_world(zyx), [ras[2], -ras[1], -ras[0]], atol=1e-4)


def test_labels_save_as_mgz(make_napari_viewer, sample_dir, tmp_path):
    viewer = make_napari_viewer()
    img = open_volume(viewer, sample_dir / "mni_t1_lesion.nii.gz")
    mask, _ = read_volume(sample_dir / "mni_t1_lesion_mask.nii.gz")
    lab = viewer.add_labels(mask.astype(np.int32) * 17, name="aseg", scale=img.scale, translate=img.translate,
                            affine=img.affine, metadata=dict(img.metadata))
    lab.save(str(tmp_path / "aseg.mgz"), plugin=PLUGIN)
    back, geo = read_volume(tmp_path / "aseg.mgz")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, mask.astype(np.int32) * 17)
    ref = Geometry.from_dict(img.metadata["medvae_geometry"])
    np.testing.assert_allclose(geo.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(geo.direction, ref.direction, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Saved results keep the source's dtype, as the CLI's do
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".mgz"])
def test_denoised_layer_of_uint8_source_saves_as_uint8(make_napari_viewer, qtbot, sample_dir, tmp_path, ext):
    from plugin_helpers import dock, wait_layer

    from napari_medvae.io import write_volume
    from napari_medvae.output_dtype import SOURCE_DTYPE_KEY, cast_like
    from napari_medvae.widgets._common import layer_geometry

    arr, geo = read_volume(sample_dir / "mni_t1_noisy.nii.gz")
    u8 = np.clip(np.rint(arr.astype(np.float64) * 255.0 / arr.max()), 0, 255).astype(np.uint8)
    viewer = make_napari_viewer()
    src = open_volume(viewer, write_volume(tmp_path / f"noisy_u8{ext}", u8, geo))
    assert src.data.dtype == np.uint8
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    w.denoise_btn.click()
    den = wait_layer(qtbot, viewer, "noisy_u8 denoised", w.job)
    assert den.data.dtype == np.float32  # shown as computed
    assert den.metadata[SOURCE_DTYPE_KEY] == "uint8"
    assert SOURCE_DTYPE_KEY not in src.metadata  # the source layer is not touched
    out = tmp_path / f"den{ext}"
    den.save(str(out), plugin=PLUGIN)
    back, geo2 = read_volume(out)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, cast_like(np.asarray(den.data), np.uint8))
    np.testing.assert_allclose(geo2.origin, geo.origin, atol=1e-4)
    # a result of a result keeps the first source's dtype; maps on another scale (anomaly) do not get it
    assert layer_geometry(den, keep_dtype=True)["metadata"][SOURCE_DTYPE_KEY] == "uint8"
    assert SOURCE_DTYPE_KEY not in layer_geometry(den)["metadata"]

