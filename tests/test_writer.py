"""The plugin's npe2 writers without a viewer: the source dtype recorded in layer metadata is restored."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medvae._writer import write_image, write_labels
from napari_medvae.errors import VolumeWriteError
from napari_medvae.io import Geometry, read_volume
from napari_medvae.output_dtype import SOURCE_DTYPE_KEY, cast_like


def _meta(**extra) -> dict:
    geo = Geometry(spacing=(2.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0))
    kw = geo.napari_kwargs()
    return {"scale": kw["scale"], "translate": kw["translate"], "affine": np.eye(4),
            "metadata": {**kw["metadata"], **extra}}


DATA = np.array([-3.2, 0.4, 0.6, 127.5, 254.6, 300.0], np.float32).reshape(1, 2, 3)


@pytest.mark.parametrize("ext", [".nii.gz", ".mgz"])
def test_image_writer_casts_back_to_recorded_uint8(tmp_path, ext):
    (path,) = write_image(str(tmp_path / f"r{ext}"), DATA, _meta(**{SOURCE_DTYPE_KEY: "uint8"}))
    back, _ = read_volume(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back.ravel(), [0, 0, 1, 128, 255, 255])  # rounded and clipped, as the CLI
    np.testing.assert_array_equal(back, cast_like(DATA, np.uint8))


def test_image_writer_without_record_keeps_float32(tmp_path):
    (path,) = write_image(str(tmp_path / "heat.nii.gz"), DATA, _meta())
    back, _ = read_volume(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, DATA)


def test_labels_writer_ignores_the_record(tmp_path):
    labels = np.arange(6, dtype=np.int32).reshape(1, 2, 3) * 1000
    (path,) = write_labels(str(tmp_path / "lab.nii.gz"), labels, _meta(**{SOURCE_DTYPE_KEY: "uint8"}))
    back, _ = read_volume(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize("bad", ["banana", "complex64", "object", 12.5])
def test_image_writer_refuses_a_bad_record(tmp_path, bad):
    with pytest.raises(VolumeWriteError, match=f"{SOURCE_DTYPE_KEY}.*integer or float numpy dtype") as info:
        write_image(str(tmp_path / "r.nii.gz"), DATA, _meta(**{SOURCE_DTYPE_KEY: bad}))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_and_writer_share_one_cast():
    from pathlib import Path

    from napari_medvae import batch, cli, output_dtype
    from napari_medvae.service import ops

    assert ops.cast_like is output_dtype.cast_like  # the service casts what medvae writes
    for module in (cli, batch, ops):
        assert "def cast_like" not in Path(module.__file__).read_text(encoding="utf-8")


def test_layer_from_a_nifti_file_keeps_its_header(tmp_path):
    """A layer whose metadata names the NIfTI file it came from (the reader records it) is saved with that file's
    header (sform code 4 stays 4) while its placement is unchanged; after a move the layer's geometry decides."""
    import nibabel as nib

    from napari_medvae.io import write_volume

    geo = Geometry(spacing=(2.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0))
    src = tmp_path / "src.nii.gz"
    write_volume(src, DATA, geo)
    img = nib.load(str(src))
    hdr = img.header.copy()
    hdr.set_sform(img.affine, 4)
    nib.Nifti1Image(np.asarray(img.dataobj), None, header=hdr).to_filename(str(src))
    (path,) = write_image(str(tmp_path / "out.nii.gz"), DATA * 2, _meta(source_path=str(src)))
    assert int(nib.load(path).header["sform_code"]) == 4
    back, bgeo = read_volume(path)
    np.testing.assert_array_equal(back, DATA * 2)
    assert bgeo.origin == pytest.approx(geo.origin)
    moved = _meta(source_path=str(src))
    moved["translate"] = np.asarray(moved["translate"]) + 7.0
    (path,) = write_image(str(tmp_path / "moved.nii.gz"), DATA, moved)
    assert int(nib.load(path).header["sform_code"]) != 4
