"""The real-scan path on two small real volumes (sample_data/real_*; provenance in sample_data/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medvae.engine import skullstrip
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
