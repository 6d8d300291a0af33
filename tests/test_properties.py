"""Property-based checks of engine invariants on random volumes (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_medvae.engine import inpaint, reconstruct

volumes = st.tuples(
    st.integers(3, 12), st.integers(20, 48), st.integers(20, 48),  # shape (z, y, x)
    st.sampled_from([np.uint8, np.int16, np.float32]),
    st.tuples(st.floats(3.0, 6.0), st.floats(1.8, 2.9), st.floats(1.8, 2.9)),  # spacing (mm); z thickest
    st.integers(0, 2**31 - 1),
)


def _make(shape_dtype):
    z, y, x, dtype, spacing, seed = shape_dtype
    rng = np.random.default_rng(seed)
    vol = (rng.random((z, y, x)) * 200).astype(dtype)
    vol[0, 0, 0] = 0
    vol[-1, -1, -1] = 200
    return vol, spacing, rng


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(volumes)
def test_reconstruct_keeps_grid_and_input(model, case):
    vol, spacing, _ = _make(case)
    before = vol.copy()
    out = reconstruct(model, vol, spacing)
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(vol, before)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(volumes)
def test_inpaint_leaves_unmasked_voxels_unchanged(model, case):
    vol, spacing, rng = _make(case)
    mask = rng.random(vol.shape) < 0.2
    mask.flat[0] = True
    before = vol.copy()
    out = inpaint(model, vol, spacing, mask=mask)
    assert out.shape == vol.shape
    np.testing.assert_array_equal(out[~mask], vol[~mask].astype(np.float32))
    np.testing.assert_array_equal(vol, before)
