"""The one PSNR definition that training validation, the demo and the benchmarks share."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medvae.engine.metrics import psnr_db


def test_psnr_matches_its_definition_over_the_mask_only():
    ref = np.zeros((4, 4), dtype=np.float32)
    est = ref.copy()
    est[0, 0] = 0.1  # error 0.1 at one voxel
    est[3, 3] = 100.0  # a large error outside the mask below
    mask = np.zeros_like(ref, dtype=bool)
    mask[0] = True  # 4 voxels, one of them wrong: mse 0.0025
    assert psnr_db(est, ref, 1.0, mask) == pytest.approx(10 * np.log10(1 / 0.0025))
    assert psnr_db(est, ref, 1.0) < psnr_db(est, ref, 1.0, mask)  # the whole image counts the outlier


def test_identical_inputs_give_a_finite_number_and_integer_inputs_do_not_overflow():
    a = np.full(8, 200, dtype=np.uint8)
    assert np.isfinite(psnr_db(a, a, 255))
    b = a.copy()
    b[0] = 0  # 0 - 200 must not wrap around in uint8
    assert psnr_db(b, a, 255) == pytest.approx(10 * np.log10(255**2 / (200**2 / 8)))
