"""3D heads run on the box around the signal (runner.head_box), not on the empty background around a head."""

from __future__ import annotations

import numpy as np

from napari_medvae.engine.ops.runner import HEAD_MARGIN, head_box, run_head3d


def _volume() -> np.ndarray:
    x = np.zeros((1, 60, 90, 100), dtype=np.float32)
    rng = np.random.default_rng(0)
    x[0, 20:40, 30:60, 35:70] = 0.5 + 0.3 * rng.random((20, 30, 35), dtype=np.float32)
    return x


def test_head_box_covers_the_signal_plus_margin_and_other_channels():
    x = _volume()
    box = head_box(x, 0)
    assert box == (slice(20 - HEAD_MARGIN, 40 + HEAD_MARGIN), slice(30 - HEAD_MARGIN, 60 + HEAD_MARGIN),
                   slice(35 - HEAD_MARGIN, 70 + HEAD_MARGIN))
    with_mask = np.concatenate([x, np.zeros_like(x)])
    with_mask[1, 2, 5, 5] = 1  # a mask voxel far from the signal widens the box
    assert head_box(with_mask, 0)[0].start == 0
    assert head_box(np.ones((1, 8, 8, 8), np.float32), 0) is None  # signal everywhere: nothing to crop
    assert head_box(np.zeros((1, 8, 8, 8), np.float32), 0) is None  # no signal at all


def test_signal_box_ignores_masks_that_span_the_background():
    """Missing slices are whole planes; crop="signal" boxes the signal only, so the slice heads skip the background."""
    x = _volume()
    with_slices = np.concatenate([x, np.zeros_like(x)])
    with_slices[1, 30] = 1  # a whole missing slice: the mask spans the plane
    assert head_box(with_slices, 0)[1:] == (slice(0, 90), slice(0, 100))
    assert head_box(with_slices, 0, others=False) == head_box(x, 0)


def test_slice_heads_run_on_the_signal_box(model, monkeypatch):
    from napari_medvae.engine.ops import inpaint

    if model.net.slice_head is None:
        return
    seen = []
    real = inpaint.run_head3d
    monkeypatch.setattr(inpaint, "run_head3d", lambda *a, **k: seen.append(k.get("crop")) or real(*a, **k))
    vol = _volume()[0]
    mask = np.zeros(vol.shape, bool)
    mask[30] = True
    out = inpaint.slice_head_fill(model, np.where(mask, 0, vol), mask)
    assert seen and all(c == "signal" for c in seen)
    assert np.all(out[~mask] == vol[~mask])


def test_cropped_run_equals_the_head_on_the_box_and_leaves_the_background(model):
    head = model.net.heal_head if model.net.heal_head is not None else model.net.slice_head
    mult = 8
    x = _volume()
    out = run_head3d(model, head, x, mult, base=0, crop=True)
    box = head_box(x, 0)
    inside = run_head3d(model, head, np.ascontiguousarray(x[(slice(None), *box)]), mult, base=0)
    np.testing.assert_array_equal(out[box], inside)
    outside = np.ones(out.shape, bool)
    outside[box] = False
    assert np.all(out[outside] == x[0][outside])  # channel 0 unchanged there (background)
    assert out.shape == x.shape[1:]


def test_heal_runs_both_mirrored_passes_on_one_box(model):
    """heal() finds the box once; the mirrored pass runs on its mirror image, the background keeps the input."""
    from napari_medvae.engine.ops.anomaly import heal

    if model.net.heal_head is None:
        return
    x = _volume()[0]
    margin = model.config.anomaly.heal_margin
    box = head_box(x[None], 0, HEAD_MARGIN if margin is None else margin)
    out = heal(model, x, flip=True)
    outside = np.ones(x.shape, bool)
    outside[box] = False
    assert np.all(out[outside] == x[outside])
    mult = 8
    inner = np.ascontiguousarray(x[None][(slice(None), *box)])
    one = run_head3d(model, model.net.heal_head, inner, mult, base=0)
    two = run_head3d(model, model.net.heal_head, np.ascontiguousarray(inner[..., ::-1]), mult, base=0)[..., ::-1]
    np.testing.assert_allclose(out[box], (one + two) / 2, rtol=0, atol=1e-6)
