"""``medvae`` reads and writes FreeSurfer .mgz/.mgh: same grid as the input, the input's dtype kept."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medvae.cli import main
from napari_medvae.io import read_volume, write_volume


@pytest.fixture(scope="module")
def uint8_mgz(tmp_path_factory, sample_dir):
    """The noisy sample rescaled to uint8 and saved as .mgz, as FreeSurfer's T1.mgz is."""
    arr, geo = read_volume(sample_dir / "mni_t1_noisy.nii.gz")
    u8 = np.clip(np.rint(arr.astype(np.float64) * 255.0 / arr.max()), 0, 255).astype(np.uint8)
    return write_volume(tmp_path_factory.mktemp("fs") / "T1.mgz", u8, geo)


def _assert_same_grid(a, b) -> tuple[np.ndarray, np.ndarray]:
    va, ga = read_volume(a)
    vb, gb = read_volume(b)
    assert va.shape == vb.shape
    np.testing.assert_allclose(gb.spacing, ga.spacing, rtol=1e-6)
    np.testing.assert_allclose(gb.origin, ga.origin, atol=1e-4)
    np.testing.assert_allclose(gb.direction, ga.direction, atol=1e-6)
    return va, vb


def test_denoise_mgz_to_mgz_keeps_grid_and_uint8(tmp_path, uint8_mgz):
    import nibabel as nib

    out = tmp_path / "T1_denoised.mgz"
    assert main(["denoise", str(uint8_mgz), "-o", str(out), "-q"]) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    img = nib.load(str(out))  # a valid MGZ for FreeSurfer's own reader too
    assert img.get_data_dtype() == np.uint8
    vin, vout = _assert_same_grid(uint8_mgz, out)
    assert vout.dtype == np.uint8 and not np.array_equal(vout, vin)
    np.testing.assert_allclose(img.affine, nib.load(str(uint8_mgz)).affine, atol=1e-4)


def test_reconstruct_nifti_to_mgh(tmp_path, sample_dir):
    src = sample_dir / "mni_t1_lesion.nii.gz"
    out = tmp_path / "recon.mgh"
    assert main(["reconstruct", str(src), "-o", str(out), "-q"]) == 0
    vin, vout = _assert_same_grid(src, out)
    assert vout.dtype == vin.dtype == np.int16


def test_unsupported_output_extension_lists_mgz(tmp_path, sample_dir, capsys):
    out = tmp_path / "out.img"
    assert main(["reconstruct", str(sample_dir / "mni_t1_lesion.nii.gz"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unsupported extension" in err and ".mgz" in err and ".mgh" in err
    assert not out.exists()
