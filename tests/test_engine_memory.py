"""Memory-bounded engine steps (issue 33, item 10): chunked or in-place versions give the results of the whole-volume
computations they replaced."""

from __future__ import annotations

import numpy as np
import pytest


def _old_to_original(prep, arr, denormalise=True):
    """The former whole-volume Prepared.to_original (resize, multiply, move the axis, copy)."""
    from napari_medvae.engine.prep.preprocess import resize_inplane

    out = arr
    if prep.resampled:
        out = resize_inplane(out, prep.inplane, antialias=False)
    if denormalise:
        out = out * np.float32(prep.scale)
    return np.ascontiguousarray(np.moveaxis(out, 0, prep.axis)).astype(np.float32, copy=False)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("denormalise", [False, True])
def test_to_original_writes_the_same_volume_without_temporaries(axis, resampled, denormalise, monkeypatch):
    from napari_medvae.engine.prep import preprocess
    from napari_medvae.engine.prep.preprocess import Prepared

    monkeypatch.setattr(preprocess, "RESIZE_VALUES", 2000)  # several chunks of slices
    shape = (9, 20, 24)
    inplane = tuple(n for i, n in enumerate(shape) if i != axis)
    small = (inplane[0] // 2, inplane[1] // 2) if resampled else inplane
    arr = np.random.default_rng(axis).random((shape[axis], *small), dtype=np.float32)
    before = arr.copy()
    prep = Prepared(arr, 37.5, axis, shape, inplane, 1, (1.0, 1.0, 1.0))
    got = prep.to_original(arr, denormalise=denormalise)
    np.testing.assert_array_equal(got, _old_to_original(prep, arr, denormalise))
    assert got.shape == shape and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(arr, before)  # the model-grid array is left alone


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 2])
def test_prepare_normalises_in_chunks_like_the_whole_volume(model, read, dtype, axis, monkeypatch):
    from napari_medvae.engine.prep import preprocess

    vol, _ = read("mni_t1_healthy.nii.gz")
    vol = np.clip(vol, 0, 255).astype(dtype)
    before = vol.copy()
    spacing = (1.0, 1.0, 1.0)  # finer than the model's 2 mm: resampled in-plane
    whole = preprocess.prepare(vol, spacing, model.config, axis, force=True)
    monkeypatch.setattr(preprocess, "RESIZE_VALUES", 30_000)  # a few slices per chunk
    chunked = preprocess.prepare(vol, spacing, model.config, axis, force=True)
    expect = preprocess.resize_inplane(np.moveaxis(vol, axis, 0).astype(np.float32) / np.float32(whole.scale),
                                       whole.data.shape[1:], antialias=True)
    np.testing.assert_array_equal(chunked.data, whole.data)
    np.testing.assert_array_equal(whole.data, expect)
    np.testing.assert_array_equal(vol, before)
    same_grid = preprocess.prepare(vol, (2.0, 2.0, 2.0), model.config, axis, force=True)
    np.testing.assert_array_equal(same_grid.data,
                                  np.moveaxis(vol, axis, 0).astype(np.float32) / np.float32(same_grid.scale))
    assert same_grid.data.flags.c_contiguous


@pytest.mark.parametrize("shape", [(17, 20, 22), (16, 21, 19)])
def test_noise_sigma_in_slabs_equals_the_whole_volume(shape):
    from napari_medvae.engine.ops.denoise import noise_sigma

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.1, shape).astype(np.float32)
    tissue = rng.random(shape) > 0.3
    whole = noise_sigma(x, tissue, slab=10_000)
    for slab in (2, 3, 4, 6):
        assert noise_sigma(x, tissue, slab=slab) == whole
    few = np.zeros(shape, bool)  # too little tissue: every coefficient counts
    assert noise_sigma(x, few, slab=4) == noise_sigma(x, few, slab=10_000)


@pytest.mark.parametrize("axis", [0, 2])
def test_add_detail_in_chunks_equals_one_chunk_and_works_in_place(model, read, axis):
    from napari_medvae.engine.ops.denoise import add_detail
    from napari_medvae.engine.prep.preprocess import prepare

    vol, _ = read("mni_t1_noisy.nii.gz")
    vol = vol.astype(np.float32)
    prep = prepare(vol, (1.0, 1.0, 1.0), model.config, axis, force=True)
    assert prep.resampled
    den = prep.to_original(np.clip(prep.data, 0, None))  # a stand-in for the denoised estimate
    before = vol.copy()
    one = add_detail(vol, den.copy(), prep, chunk=10_000)
    target = den.copy()
    chunked = add_detail(vol, target, prep, chunk=5)
    assert chunked is target  # updated in place, no copy
    np.testing.assert_allclose(chunked, one, rtol=0, atol=1e-4 * float(vol.max()))
    assert not np.array_equal(one, den)  # detail was added
    assert float(one.min()) >= 0
    np.testing.assert_array_equal(vol, before)


@pytest.mark.parametrize("known", [3, 12])  # linear (fewer than 4 known slices) and cubic interpolation
def test_first_guess_interpolates_in_row_chunks_like_the_whole_volume(known, monkeypatch):
    from napari_medvae.engine.classical import fill

    rng = np.random.default_rng(1)
    data = rng.random((known + 4, 13, 11)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[[1, 3, 5, known + 2]] = True  # whole missing slices
    mask[known + 3, 4:7, 3:6] = True  # and a partial region
    whole = fill.first_guess(data, mask)
    monkeypatch.setattr(fill, "FIRST_GUESS_VALUES", 30)  # one row at a time
    chunked = fill.first_guess(data, mask)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(chunked[~mask], data[~mask])
    assert chunked.dtype == np.float32


@pytest.mark.parametrize("known", [2, 3, 12])
def test_first_guess_equals_the_spline_through_the_known_slices(known):
    """The weights (one matrix product) give what the spline itself gives, edges (nearest known slice) included."""
    from scipy.interpolate import interp1d

    from napari_medvae.engine.classical import fill

    rng = np.random.default_rng(2)
    data = rng.random((known + 4, 9, 7)).astype(np.float32) * 50
    missing = [0, 2, 4, known + 3]  # the first and last slices lie outside the known range
    mask = np.zeros(data.shape, bool)
    mask[missing] = True
    known_idx = np.setdiff1d(np.arange(data.shape[0]), missing)
    y = data[known_idx].astype(np.float64)
    f = interp1d(known_idx, y, axis=0, kind="cubic" if known >= 4 else "linear", bounds_error=False,
                 fill_value=(y[0], y[-1]))
    out = fill.first_guess(data, mask)
    np.testing.assert_allclose(out[missing], np.clip(f(missing), 0, None), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out[known_idx], data[known_idx])


def test_biharmonic_fill_labels_only_the_mask_box_and_fills_each_region():
    from napari_medvae.engine.classical.fill import biharmonic_fill

    z, y, x = np.mgrid[:20, :24, :28].astype(np.float32)
    vol = 1.0 + 0.02 * z + 0.03 * y + 0.01 * x  # linear: the biharmonic fill reproduces it
    mask = np.zeros(vol.shape, bool)
    mask[3:6, 4:7, 20:24] = True
    mask[14:17, 17:21, 5:8] = True
    out = biharmonic_fill(vol, mask)
    np.testing.assert_allclose(out[mask], vol[mask], atol=1e-3)
    np.testing.assert_array_equal(out[~mask], vol[~mask])
    np.testing.assert_array_equal(biharmonic_fill(vol, np.zeros(vol.shape, bool)), vol)  # empty mask: a copy
