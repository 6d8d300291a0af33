"""Inpainting: fill painted regions or missing slices from the surrounding anatomy.

Voxels outside the mask are returned unchanged (bit for bit, as float32). Inside the mask a classical
first guess (cubic interpolation along the slice axis, biharmonic fill for regions) is refined by the
network, made with the mask as an input channel. Painted regions of models with a region prior (engine.classical.kriging)
are filled by it instead, with the mirror image across the volume's plane of best symmetry (the other hemisphere)
as a second drift where it is known (no network; regions it cannot take keep the biharmonic fill). On
volumes finer in-plane than the model grid (e.g. 1 mm), the classical fill on the volume's own grid is returned
(painted regions: ``biharmonic_fill``, the same biharmonic fill solved by conjugate gradients): the model's
correction from its coarser grid did not help there. How much of the network's correction is applied is
measured on the volume itself: the same mask, moved onto known voxels, is filled both ways and the
least-squares blend weight (0 = first guess only, 1 = network only) is used for the real mask. Missing
slices of models with a missing-slice head (a 3D UNet, ``medvae train-slice-head``) get its correction
too, on volumes at the model's slice spacing: the two corrections' weights are fitted together on the
moved mask the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from ..classical.fill import biharmonic_fill, first_guess
from ..model.loader import Model
from ..prep.preprocess import Prepared, check_axis, check_spacing, check_volume, prepare
from .runner import CancelFn, Progress, ProgressFn, check_mask, run_head3d, run_network

FLIPS = [(slice(None),), (slice(None, None, -1),), (slice(None), slice(None), slice(None, None, -1)),
         (slice(None, None, -1), slice(None), slice(None, None, -1))]


def detect_blank_slices(volume: np.ndarray, axis: int) -> list[int]:
    """Constant slices (e.g. dropped or zero-filled) lying between the first and last non-constant slice."""
    check_volume(volume)
    ax = check_axis(axis, (1.0, 1.0, 1.0))
    moved = np.moveaxis(volume, ax, 0)
    flat = moved.reshape(moved.shape[0], -1)
    constant = flat.min(axis=1) == flat.max(axis=1)
    content = np.flatnonzero(~constant)
    if len(content) == 0:
        return []
    return [int(i) for i in range(content[0] + 1, content[-1]) if constant[i]]


def resolve_missing_slices(volume: np.ndarray, spacing: Sequence[float], missing: Iterable[int] | str,
                           axis: int | None) -> tuple[list[int], int]:
    """Missing-slice indices and the array axis they lie on; "auto" = the blank slices (error if none).

    The one place that turns a user's slice choice into indices (engine, CLI and widget all call it).
    """
    ax = check_axis(axis, check_spacing(spacing))
    if isinstance(missing, str):
        if missing != "auto":
            raise InputError(f"missing slices must be indices or 'auto', not {missing!r}")
        found = detect_blank_slices(volume, ax)
        if not found:
            raise InputError(f"no blank slices found along array axis {ax} (file axis {2 - ax}); nothing to inpaint")
        return found, ax
    return sorted({int(i) for i in missing}), ax


def slices_mask(shape: Sequence[int], indices: Iterable[int], axis: int) -> np.ndarray:
    """A bool mask selecting whole slices ``indices`` along ``axis`` (duplicates allowed, range checked)."""
    idx = sorted({int(i) for i in indices})
    n = shape[axis]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise InputError(f"missing-slice indices {bad} are out of range: axis {axis} has {n} slices (0..{n - 1})")
    if not idx:
        raise InputError("no missing slices given (and none detected); nothing to inpaint")
    mask = np.zeros(shape, dtype=bool)
    sl = [slice(None)] * 3
    sl[axis] = idx
    mask[tuple(sl)] = True
    return mask


def inpaint(model: Model, volume: np.ndarray, spacing: Sequence[float], *, mask: np.ndarray | None = None,
            missing_slices: Iterable[int] | str | None = None, axis: int | None = None, tta: bool = True,
            cross_validate: bool = True, symmetry: bool = True, force: bool = False, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> np.ndarray:
    """Fill the voxels of ``mask`` (non-zero) or the ``missing_slices`` along ``axis`` ("auto" = blank ones).

    Returns float32 on the input grid; voxels outside the mask equal the input. ``tta`` averages the
    predictions of the volume and its mirror images (slice axis, left-right), which only costs time on
    the slices that hold masked voxels. ``cross_validate``: the same mask, shifted onto known voxels of
    this volume, is filled too, and the network's correction of the classical first guess is applied
    with the weight (0-1) that fits those known voxels best, so the network is trusted as far as it
    helps on this volume (weight 0: the classical fill, and the network is not run on the real mask). When
    no such shift exists, the classical fill is returned. The region prior's fill of painted regions is used as
    is (cross-validating its weight the same way lost on the tuning subjects). ``symmetry``: the region prior also
    conditions on the mirror image across the volume's plane of best symmetry (the other hemisphere) where it is
    known; turn it off when the other side is abnormal at the mirrored place (painted regions only). Missing slices
    on a model whose ``slice_fill`` is "head" are filled by its missing-slice head alone (averaged with its mirror
    image), without the VAE and without cross-validation (``tta`` and ``cross_validate`` do not apply there).
    """
    check_volume(volume)
    sp = check_spacing(spacing)
    if (mask is None) == (missing_slices is None):
        raise InputError("give exactly one of a mask or missing slices to inpaint")
    if mask is not None:
        m = check_mask(mask, volume.shape)
    else:
        missing_slices, ax = resolve_missing_slices(volume, sp, missing_slices, axis)
        m = slices_mask(volume.shape, missing_slices, ax)
        axis = ax
    n = int(m.sum())
    if n == 0:
        raise InputError("the mask is empty (no non-zero voxels); paint the region to fill first")
    if n > 0.9 * m.size:
        raise InputError(f"the mask covers {100 * n / m.size:.0f}% of the volume; at least 10% must be known to inpaint")
    prep = prepare(volume, sp, model.config, axis, force=force)
    if prep.resampled:
        # finer in-plane than the model grid (e.g. 1 mm): the classical fill on the volume's own grid. The model's
        # correction from its coarser grid, cross-validated there and again on this grid, made the fill worse on 1 mm
        # tuning subjects (10 painted regions: pooled error +8 % to +13 %; 1x1x2 mm, 9 regions: +0.7 %; missing slices:
        # weight 0), and the whole fill from the model grid lost 3.2 dB (painted regions) and 3-8 dB (missing slices)
        p = Progress(1, progress, cancel)
        p.check()
        # both fills return a new float32 volume equal to the input outside the mask: the output itself (no copies)
        if missing_slices is not None:  # cubic interpolation along the slice axis
            out = np.moveaxis(first_guess(np.moveaxis(volume, prep.axis, 0), np.moveaxis(m, prep.axis, 0)), 0, prep.axis)
        else:
            out = biharmonic_fill(volume, m, cancel=p.check)
        p.step(1)
        out[m] = np.clip(out[m], 0, None)
        return np.ascontiguousarray(out)
    mm = prep.mask_to_model(m)
    flips = FLIPS if tta else FLIPS[:1]
    p0 = Progress(1, None, cancel)
    p0.check()
    # the region prior's fill of painted regions (None: no prior, whole missing slices, or another slice spacing)
    pfill = prior_fill(model, prep, mm, symmetry=symmetry, check=p0.check) if missing_slices is None else None
    init = classical = first_guess(prep.data, mm) if pfill is None else pfill
    if (missing_slices is not None and model.config.slice_fill == "head" and prep.stride == 1
            and getattr(model.net, "slice_head", None) is not None):
        # the model's missing-slice head alone, on slices at the spacing it was trained at (see ModelConfig.slice_fill)
        p = Progress(1, progress, cancel)
        p.check()
        fill = slice_head_fill(model, classical, mm)
        p.step(1)
        return _paste(volume, m, prep.to_original(np.clip(fill, 0, None)))
    # the network's weight is measured on a moved copy of the mask; the region prior's fill is used as is (weighing it
    # against the biharmonic fill on 3 moved copies lost on the tuning subjects, painted regions, pooled: T1 27.75 vs
    # 27.79 dB, T2-like 30.23 vs 32.24 dB; a copy's verdict was as much as 12 dB off the real mask's: -6.1 vs +6.3 dB)
    vmask = validation_mask(prep.data, mm) if cross_validate and pfill is None else None
    n_val = 0 if vmask is None else int(vmask.any(axis=(1, 2)).sum())
    p = Progress((int(mm.any(axis=(1, 2)).sum()) + n_val) * len(flips), progress, cancel)
    p.check()
    # without cross-validation the network's fill is used as is; when the mask cannot be moved onto known tissue,
    # the classical fill is kept (on every benchmark the uncorrected network fill was worse than it)
    weight = 1.0 if not cross_validate and pfill is None else 0.0
    # the missing-slice head: whole missing slices, slices at the model's spacing (it was trained there), cross-validated
    use_head = (getattr(model.net, "slice_head", None) is not None and missing_slices is not None and prep.stride == 1
                and vmask is not None)
    hweight = 0.0
    if vmask is not None:  # how much of the network's correction helps, measured on known voxels
        union = mm | vmask
        vinit = first_guess(prep.data, union)
        vnet = refine(model, vinit, union, prep.stride, p, flips, centres=vmask.any(axis=(1, 2)))
        if use_head:
            vhead = slice_head_fill(model, vinit, union)
            weight, hweight = blend_weights(prep.data[vmask], vinit[vmask], [vnet[vmask], vhead[vmask]])
        else:
            weight = blend_weight(prep.data[vmask], vinit[vmask], vnet[vmask])
    if pfill is not None:
        # the network's correction is not applied on top: on the tuning subjects (painted regions, 3 T1 + 3 T2-like) its
        # cross-validated weight was 0-0.53 and it changed the PSNR by -2.9 to +0.1 dB
        init = pfill
        weight = 0.0
    fill = init
    if hweight > 0:
        fill = fill + np.float32(hweight) * (slice_head_fill(model, init, mm) - init)
    if weight > 0:
        net = refine(model, init, mm, prep.stride, p, flips)
        fill = fill + np.float32(weight) * (net - init)
    else:  # the network does not help on this volume: without running it on the real mask
        p.step(p.total - p.done)
    return _paste(volume, m, prep.to_original(np.clip(fill, 0, None)))


def _paste(volume: np.ndarray, mask: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """float32 ``volume`` with ``filled``'s voxels inside ``mask`` (a new array: the input is never modified)."""
    out = volume.astype(np.float32, copy=True)
    out[mask] = filled[mask]
    return out


def prior_fill(model: Model, prep: Prepared, mask: np.ndarray, classical: np.ndarray | None = None,
               symmetry: bool = True, check: Callable[[], None] | None = None) -> np.ndarray | None:
    """The region prior's fill of ``mask`` on the model grid: regions that fit its cube are kriged in one cube, larger
    ones by cubes along their edge blended with ``classical`` (a classical fill of ``mask``; None: the biharmonic fill
    by conjugate gradients, ``biharmonic_fill``: 0.12 s where skimage took 2.06 s, a 26 x 26 x 10 mm box of a 1 mm scan)
    inside.

    None when the model has no region prior or the volume's slices are not at the model's slice spacing (the grid
    the prior was fitted on; filling the interleaved 2 mm grids of a 1 mm volume one by one ignores the slices in
    between and was worse than the classical fill). ``symmetry``: also condition on the mirror image of the volume
    (``classical.kriging.mirror_image``) where it is known. ``check()`` is called between cubes (it raises to cancel).
    """
    from ..classical import kriging

    rp = getattr(model.net, "region_prior", None)
    if rp is None:
        return None
    if prep.stride != 1 or abs(prep.spacing[prep.axis] / model.config.slice_spacing_mm - 1) > 0.1:
        return None
    cov, mean = rp.numpy()
    if classical is None:
        classical = biharmonic_fill(prep.data, mask, cancel=check)
    out = classical.copy()
    mirror = kriging.mirror_image(prep.data, mask) if symmetry else None
    filled, done = kriging.fill(prep.data, mask, cov, mean, rp.patch, power=rp.power,
                                mirror=None if mirror is None else mirror[:2], base=classical, check=check)
    out[done] = filled[done]
    return out


def refine(model: Model, init: np.ndarray, mask: np.ndarray, stride: int, p: Progress, flips,
           centres: np.ndarray | None = None) -> np.ndarray:
    """The network's refinement of a first guess on the masked slices, averaged over mirror images.

    ``centres`` (bool per slice): refine only these slices (the validation pass: the real masked slices
    are context there, already refined by the first pass).
    """
    acc = np.zeros_like(init)
    for flip in flips:  # test-time augmentation: mirrored along the slice axis and left-right
        d, k = (np.ascontiguousarray(a[flip]) for a in (init, mask))
        c = None if centres is None else np.ascontiguousarray(centres[flip[0]])
        acc += run_network(model, d, k, stride, p, only_masked=True, prefilled=True, centres=c)[flip]
    return acc / len(flips)


def _shift(mask: np.ndarray, axis: int, d: int) -> np.ndarray:
    """``mask`` moved by ``d`` voxels along ``axis`` (no wrap-around)."""
    out = np.zeros_like(mask)
    n = mask.shape[axis]
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    src[axis] = slice(max(0, -d), n - max(0, d))
    dst[axis] = slice(max(0, d), n - max(0, -d))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def validation_mask(data: np.ndarray, mask: np.ndarray, max_slices: int = 16, gap: int = 2) -> np.ndarray | None:
    """The mask moved onto known voxels with signal, to measure fills against known truth.

    Shifts along the slice axis are tried first (same kind of gap), then in-plane; the smallest shift
    whose mask keeps ``gap`` voxels away from the real mask and covers at least half as much signal is
    used, with at most ``max_slices`` of its slices. None if no shift fits.
    """
    signal = data > 0.05
    need = max(1, int((mask & signal).sum()) // 2)
    whole_slices = bool(mask.reshape(mask.shape[0], -1).all(axis=1).any())
    near = ndi.binary_dilation(mask, iterations=gap) if gap else mask
    if whole_slices:  # a missing slice must stay a whole slice: only shift along the slice axis
        near = np.broadcast_to(near.any(axis=(1, 2))[:, None, None], mask.shape)
    for axis in ((0,) if whole_slices else (0, 1, 2)):
        n = mask.shape[axis]
        for d in sorted(range(-n + 1, n), key=lambda d: (abs(d), d < 0)):
            if d == 0:
                continue
            shifted = _shift(mask, axis, d)
            if (shifted & near).any() or int((shifted & signal).sum()) < need:
                continue
            keep = np.flatnonzero(shifted.any(axis=(1, 2)))
            if len(keep) > max_slices:
                drop = np.setdiff1d(keep, keep[np.linspace(0, len(keep) - 1, max_slices).round().astype(int)])
                shifted[drop] = False
            return shifted
    return None


def blend_weights(truth: np.ndarray, first: np.ndarray, fills: Sequence[np.ndarray]) -> list[float]:
    """Weights in [0, 1] of each fill's correction of ``first`` that fit ``truth`` best together (least squares).

    Fitted jointly (the corrections' errors partly cancel), clipped to [0, 1]; a weight clipped to 0 drops its fill and
    the others are refitted alone.
    """
    keep = list(range(len(fills)))
    while keep:
        a = np.stack([(fills[i] - first).astype(np.float64) for i in keep], axis=1)
        w = np.linalg.lstsq(a, (truth - first).astype(np.float64), rcond=None)[0]
        if (w > 0).all() or len(keep) == 1:
            out = [0.0] * len(fills)
            for i, v in zip(keep, np.clip(w, 0.0, 1.0), strict=True):
                out[i] = float(v)
            return out
        keep = [i for i, v in zip(keep, w, strict=True) if v > 0]
    return [0.0] * len(fills)


def slice_head_fill(model: Model, init: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``init`` plus the missing-slice heads' correction inside ``mask`` (run on its slices and 8 around them).

    Where the model has a single-slice head (``architecture.slice_head_single``), it fills the missing slices that
    have known slices on both sides (runs of one along axis 0) and the general head fills the longer runs; each head
    sees the whole mask. Each head's output is averaged with that of the left-right mirror image."""
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    out = init.copy()
    if len(rows) == 0:
        return out
    missing = np.zeros(init.shape[0] + 2, bool)
    missing[rows + 1] = True
    alone = rows[~missing[rows] & ~missing[rows + 2]]  # no missing neighbour above or below
    jobs = [("slice_head", rows)]
    if getattr(model.net, "slice_head_single", None) is not None and len(alone):
        jobs = [("slice_head_single", alone), ("slice_head", np.setdiff1d(rows, alone))]
    for key, sel in jobs:
        if len(sel):
            _run_slice_head(model, key, init, mask, sel, out)
    return out


def _run_slice_head(model: Model, key: str, init: np.ndarray, mask: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """Head ``key``'s fill of ``mask`` on slices ``rows`` (axis 0), written into ``out`` there."""
    from ..model.networks import SingleSliceHeadConfig, SliceHeadConfig

    cls = SingleSliceHeadConfig if key == "slice_head_single" else SliceHeadConfig
    head = getattr(model.net, key)
    mult = cls.from_dict(model.config.architecture[key]).multiple
    z0, z1 = max(0, int(rows[0]) - 8), min(init.shape[0], int(rows[-1]) + 9)
    x = np.stack([init[z0:z1], mask[z0:z1].astype(np.float32)])
    acc = run_head3d(model, head, x, mult, base=0, crop="signal")
    acc += run_head3d(model, head, np.ascontiguousarray(x[..., ::-1]), mult, base=0, crop="signal")[..., ::-1]  # mirror
    sel = np.zeros(init.shape[0], bool)
    sel[rows] = True
    take = mask[z0:z1] & sel[z0:z1, None, None]
    out[z0:z1] = np.where(take, np.clip(acc / 2, 0, None), out[z0:z1])


def blend_weight(truth: np.ndarray, first: np.ndarray, net: np.ndarray) -> float:
    """The w in [0, 1] minimising |first + w (net - first) - truth|^2 (least squares, closed form)."""
    d = (net - first).astype(np.float64)
    den = float(np.dot(d, d))
    if den <= 1e-12:
        return 1.0
    return float(np.clip(np.dot(d, (truth - first).astype(np.float64)) / den, 0.0, 1.0))
