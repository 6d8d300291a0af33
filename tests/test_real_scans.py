"""The real-scan path on two small real volumes (sample_data/real_*; provenance in sample_data/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medvae.engine.prep import skullstrip
from napari_medvae.errors import InputError
from napari_medvae.io import read_volume

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
HEAD = SAMPLES / "real_t1_head_ds011_sub-01_2mm.nii.gz"
SLAB = SAMPLES / "real_t1_ds002748_sub-51_slab.nii.gz"


def test_real_head_is_recognised_as_having_a_skull():
    vol, geom = read_volume(HEAD)
    assert skullstrip.foreground_ml(vol, geom.spacing) > 2500
    assert skullstrip.has_skull(vol, geom.spacing)


@pytest.mark.parametrize("path", [SLAB, SAMPLES / "mni_t1_healthy.nii.gz"])
def test_skull_stripped_volumes_are_not_taken_for_heads(path):
    vol, geom = read_volume(path)
    assert not skullstrip.has_skull(vol, geom.spacing)


def test_nifti_affine_matches_the_readers_geometry():
    import nibabel as nib

    vol, geom = read_volume(HEAD)
    aff = skullstrip.nifti_affine(geom.direction, geom.origin, geom.spacing)
    np.testing.assert_allclose(aff, nib.load(str(HEAD)).affine, atol=1e-3)


@pytest.mark.slow
def test_brain_extraction_on_a_real_head_gives_an_adult_brain_inside_the_head():
    vol, geom = read_volume(HEAD)
    mask = skullstrip.extract_brain(vol, geom.spacing, geom.direction, geom.origin)
    assert mask.shape == vol.shape and mask.dtype == bool
    ml = mask.sum() * np.prod(geom.spacing) / 1000
    assert 1000 < ml < 1900  # an adult brain, not the whole head (about 3 l here)
    # the brain lies inside the head and away from the field of view's border (the scalp is not in it)
    assert vol[mask].mean() > vol[vol > 0].mean()
    assert not mask[0].any() and not mask[-1].any()


def test_brain_extraction_refuses_a_non_3d_array():
    with pytest.raises(InputError, match="3D"):
        skullstrip.extract_brain(np.zeros((4, 4)), (1.0, 1.0, 1.0))


def _medvae(*args: str):
    from napari_medvae.cli import main

    return main([*map(str, args)])


@pytest.mark.slow
def test_cli_anomaly_on_a_head_keeps_candidates_in_the_brain_and_writes_the_mask(tmp_path):
    heat, mask_out, labels = tmp_path / "heat.nii.gz", tmp_path / "brain.nii.gz", tmp_path / "labels.nii.gz"
    before = HEAD.read_bytes()
    assert _medvae("anomaly", HEAD, "-o", heat, "--labels", labels, "--brain-mask-out", mask_out, "-q") == 0
    assert HEAD.read_bytes() == before  # the input file is never modified
    vol, geom = read_volume(HEAD)
    brain, _ = read_volume(mask_out)
    lab, _ = read_volume(labels)
    hm, g2 = read_volume(heat)
    assert g2 == geom and brain.shape == vol.shape
    assert 1000 < brain.astype(bool).sum() * np.prod(geom.spacing) / 1000 < 1900
    assert not (hm[brain == 0] > 0).any()  # no score on scalp, muscle, orbits or neck
    assert not (lab[brain == 0] > 0).any()


@pytest.mark.slow
def test_batch_extracts_the_brain_of_heads(tmp_path):
    """medvae batch strips the skull as the single-volume commands do (--skull-strip auto, the default of both): on a
    head, its heatmap is the one `medvae anomaly` writes (before, batch never stripped and scored the scalp)."""
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(HEAD, src / "head.nii.gz")
    assert _medvae("batch", "anomaly", src, "-o", tmp_path / "batch", "-q") == 0
    assert _medvae("anomaly", HEAD, "-o", tmp_path / "single.nii.gz", "-q") == 0
    batch, _ = read_volume(tmp_path / "batch" / "head.nii.gz")
    single, _ = read_volume(tmp_path / "single.nii.gz")
    assert single.max() > 0
    np.testing.assert_array_equal(batch, single)


def test_cli_refuses_a_mask_output_when_no_brain_was_extracted(tmp_path, capsys):
    code = _medvae("reconstruct", SLAB, "-o", tmp_path / "r.nii.gz", "--brain-mask-out", tmp_path / "m.nii.gz", "-q")
    assert code != 0
    assert "no brain mask was made" in capsys.readouterr().err
    assert not (tmp_path / "r.nii.gz").exists() and not (tmp_path / "m.nii.gz").exists()


def test_cli_refuses_the_output_as_mask_output(tmp_path, capsys):
    out = tmp_path / "r.nii.gz"
    assert _medvae("reconstruct", SLAB, "-o", out, "--brain-mask-out", out, "-q") != 0
    assert "must differ from the output" in capsys.readouterr().err


def test_cli_refuses_the_painted_mask_as_mask_output(tmp_path, capsys):
    """--brain-mask-out must never overwrite the painted --mask it reads."""
    from napari_medvae.io import write_volume

    vol, geom = read_volume(HEAD)
    painted = tmp_path / "painted.nii.gz"
    m = np.zeros(vol.shape, np.uint8)
    m[tuple(n // 2 for n in vol.shape)] = 1
    write_volume(painted, m, geom)
    before = painted.read_bytes()
    code = _medvae("inpaint", HEAD, "-o", tmp_path / "o.nii.gz", "--mask", painted, "--brain-mask-out", painted, "-q")
    assert code != 0 and painted.read_bytes() == before
    assert "would overwrite the input" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.slow
def test_cli_inpaints_a_head_with_a_float_mask(tmp_path):
    """A painted mask stored as float 0/1 on a head with skull: filled (the brain is extracted first), not a crash."""
    from napari_medvae.io import write_volume

    vol, geom = read_volume(HEAD)
    c = [n // 2 for n in vol.shape]
    m = np.zeros(vol.shape, np.float32)
    m[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1.0
    painted, out = tmp_path / "painted.nii.gz", tmp_path / "o.nii.gz"
    write_volume(painted, m, geom)
    assert _medvae("inpaint", HEAD, "-o", out, "--mask", painted, "-q") == 0
    res, _ = read_volume(out)
    keep = m == 0
    np.testing.assert_array_equal(res[keep], vol[keep])
    assert not np.array_equal(res[~keep], vol[~keep])


def test_skull_strip_modes_are_checked():
    vol, geom = read_volume(SLAB)
    assert skullstrip.brain_for(vol, geom.spacing, mode="auto") is None
    assert skullstrip.brain_for(vol, geom.spacing, mode="never") is None
    with pytest.raises(InputError, match="one of auto, always, never"):
        skullstrip.brain_for(vol, geom.spacing, mode="sometimes")


def test_restore_outside_keeps_the_input_outside_the_brain():
    vol = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    stripped = skullstrip.strip(vol, mask)
    assert stripped[1, 1, 1] == 13 and (stripped[~mask] == 0).all() and stripped.dtype == vol.dtype
    out = skullstrip.restore_outside(np.full((3, 3, 3), -1.0, np.float32), vol, mask)
    assert out[1, 1, 1] == -1 and (out[~mask] == vol[~mask]).all()


@pytest.mark.parametrize("vol", [np.zeros((4, 4, 4)), np.full((20, 20, 20), np.nan), np.ones((20, 20, 20)),
                                 np.zeros((20, 20))])
def test_skull_detection_leaves_bad_input_to_the_engines_checks(vol):
    assert skullstrip.foreground_ml(vol, (1.0, 1.0, 1.0)) == 0.0
    assert skullstrip.brain_for(vol, (1.0, 1.0, 1.0)) is None
