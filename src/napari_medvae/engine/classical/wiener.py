"""Wiener filters in the 3D DCT domain, the noise estimate they need and the Rician bias correction.

``wiener_dct``: the empirical Wiener filter in overlapping fixed blocks, signal power from a pilot estimate (the second
stage of BM3D/BM4D without block matching). ``collaborative_wiener``: BM4D's collaborative Wiener filter (groups of
similar blocks, matched on the pilot). ``noise_sigma``: the noise level from the finest Haar wavelet coefficients.
Arrays are (z, y, x) float32; sizes and steps are in voxels. The denoising operation (``engine.ops.denoise``) chains
them with the network; here they have no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sfft

if TYPE_CHECKING:
    from ..ops.runner import Progress

BLOCK, STEP = 8, 4  # Wiener filter: DCT block size and block step (voxels, model grid)
# stage 4 (collaborative Wiener filter): block edge, reference-block step, search radius (voxels, model grid),
# blocks per group, passes (the second reuses the first's groups: re-matching gained 0.01-0.02 dB for a third more
# time) and the Kaiser beta of the aggregation window. Chosen on the parameter-tuning subject (seed 20999), 2 mm,
# 3/5/9 % noise: block 5 or groups of 8/24/32 were 0.0-0.2 dB worse; search radius 2 loses 0.04-0.07 dB and 4
# gains 0.03-0.05 dB at twice the time; step 2 gains 0.05-0.1 dB at 2.5 times the time (over the speed target on
# the 1 mm brain); a third pass gains nothing; Kaiser beta 2 beats a flat window by 0.08-0.16 dB (1.5 and 3 less,
# 4 worse than flat).
BM_BLOCK, BM_STEP, BM_RADIUS, BM_GROUP, BM_PASSES, BM_KAISER = 4, 3, 3, 16, 2, 2.0
# the search window is the cube's offsets within this squared distance (179 of 343): 20-25 % less time on the 1 mm
# brain, to stay within its 5 s target, for 0.03-0.04 dB on the tuning subject (a ball of 9: 123 offsets, -0.07 dB)
BM_BALL = 12
BG_RAMP = (0.02, 0.06)  # background: stage 4's output blends into stage 3's between these (see background_blend)
BM_FLOOR = 0.06  # reference blocks whose pilot stays below this (normalised, the top of BG_RAMP) are not filtered


def noise_sigma(x: np.ndarray, tissue: np.ndarray, slab: int = 64) -> float:
    """Noise standard deviation of ``x``: MAD of its finest 3D Haar wavelet coefficients inside ``tissue``.

    Smooth anatomy hardly reaches the finest diagonal sub-band, so its coefficients are mostly noise
    (Donoho & Johnstone's estimator). Falls back to all voxels when the tissue is tiny. Computed in slabs of
    ``slab`` slices (even) along axis 0, so a large volume is never copied whole (same coefficients).
    """
    n = [s - s % 2 for s in x.shape]
    step = max(2, slab - slab % 2)
    coefs, masks = [], []
    for z0 in range(0, n[0], step):
        z1 = min(n[0], z0 + step)
        d = x[z0:z1, : n[1], : n[2]].astype(np.float32)
        m = tissue[z0:z1, : n[1], : n[2]]
        for ax in range(3):
            ev = [slice(None)] * 3
            od = [slice(None)] * 3
            ev[ax], od[ax] = slice(0, None, 2), slice(1, None, 2)
            d = (d[tuple(ev)] - d[tuple(od)]) * np.float32(1 / np.sqrt(2))
            m = m[tuple(ev)] & m[tuple(od)]
        coefs.append(d)
        masks.append(m)
    inside = sum(int(m.sum()) for m in masks) >= 100
    v = np.concatenate([d[m] if inside else d.ravel() for d, m in zip(coefs, masks, strict=True)])
    return float(np.median(np.abs(v)) / 0.6745)


def wiener_dct(noisy: np.ndarray, pilot: np.ndarray, sigma: float, block: int = BLOCK, step: int | tuple[int, int, int] = STEP,
               progress: Progress | None = None, slab_values: int = 16_000_000) -> np.ndarray:
    """Empirical Wiener filter of ``noisy`` in overlapping 3D DCT blocks, signal power from ``pilot``.

    Each block's coefficients are scaled by P² / (P² + sigma²) (P: the pilot's coefficients); the blocks
    are put back with BM3D's weights 1 / sum(scale²); ``step`` may differ per axis (a tuple). Processed in slabs of about ``slab_values`` block
    coefficients (64 MB per float32 array) to bound memory on large volumes.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    if sigma <= 0:
        return noisy.astype(np.float32, copy=True)
    sz, sy, sx = (step,) * 3 if isinstance(step, int) else (int(v) for v in step)
    if max(sz, sy, sx) > block or any(block % v for v in (sz, sy, sx)):
        raise ValueError(f"block steps {(sz, sy, sx)} must divide the block ({block})")
    rz, ry, rx = block // sz, block // sy, block // sx
    pad = [(st, st + (-(n + 2 * st - block) % st)) for n, st in zip(noisy.shape, (sz, sy, sx), strict=True)]
    mode = "reflect" if min(noisy.shape) > max(sz, sy, sx) + 1 else "edge"
    y = np.pad(noisy.astype(np.float32, copy=False), pad, mode=mode)
    p = np.pad(pilot.astype(np.float32, copy=False), pad, mode=mode)
    acc = np.zeros(y.shape, np.float32)
    wacc = np.zeros(y.shape, np.float32)
    ny, nx = (y.shape[1] - block) // sy + 1, (y.shape[2] - block) // sx + 1
    nz = (y.shape[0] - block) // sz + 1
    rows = max(rz, slab_values // max(1, ny * nx * block**3) // rz * rz)  # block rows per slab
    s2 = np.float32(sigma) ** 2
    for i0 in range(0, nz, rows):
        i1 = min(nz, i0 + rows)
        z0, z1 = i0 * sz, (i1 - 1) * sz + block
        yb = sliding_window_view(y[z0:z1], (block,) * 3)[::sz, ::sy, ::sx]
        pb = sliding_window_view(p[z0:z1], (block,) * 3)[::sz, ::sy, ::sx]
        pc = sfft.dctn(np.ascontiguousarray(pb), axes=(3, 4, 5), norm="ortho", workers=-1)
        w = pc * pc
        w /= w + s2
        del pc
        est = sfft.idctn(w * sfft.dctn(np.ascontiguousarray(yb), axes=(3, 4, 5), norm="ortho", workers=-1), axes=(3, 4, 5), norm="ortho", workers=-1)
        wb = 1.0 / np.maximum((w * w).sum(axis=(3, 4, 5)), 1e-3)
        del w
        est *= wb[..., None, None, None]
        for a in range(rz):  # blocks of one parity class do not overlap: tile them and add at once
            for b in range(ry):
                for c in range(rx):
                    e = est[a::rz, b::ry, c::rx]
                    ka, kb, kc = e.shape[:3]
                    if not (ka and kb and kc):
                        continue
                    shape = (ka * block, kb * block, kc * block)
                    sl = (slice(z0 + a * sz, z0 + a * sz + shape[0]), slice(b * sy, b * sy + shape[1]),
                          slice(c * sx, c * sx + shape[2]))
                    acc[sl] += e.transpose(0, 3, 1, 4, 2, 5).reshape(shape)
                    wt = np.broadcast_to(wb[a::rz, b::ry, c::rx, None, None, None], e.shape)
                    wacc[sl] += wt.transpose(0, 3, 1, 4, 2, 5).reshape(shape)
        if progress is not None:
            progress.check()
    out = acc / np.maximum(wacc, 1e-12)
    return out[tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, noisy.shape, strict=True))]


def _dct_matrix(n: int):
    """Orthonormal DCT-II matrix (n x n) as a torch tensor: rows are the basis vectors (scipy's DCT of the identity)."""
    import torch

    return torch.from_numpy(sfft.dct(np.eye(n), norm="ortho", axis=0).astype(np.float32))


def _block_sums(d, b: int, steps: tuple[int, int, int], n: tuple[int, int, int]):
    """Sums of ``d`` over the ``b``³ blocks whose corners lie every ``steps`` voxels (``n`` per axis): separable,
    on strided views (4x faster than avg_pool3d here)."""
    for ax in range(3):
        sl = [slice(None)] * 3
        st = steps[ax]
        sl[ax] = slice(0, st * n[ax], st)
        acc = d[tuple(sl)].clone()
        for j in range(1, b):
            sl[ax] = slice(j, st * n[ax] + j, st)
            acc += d[tuple(sl)]
        d = acc
    return d


def collaborative_wiener(noisy: np.ndarray, pilot: np.ndarray, sigma: float, *, passes: int = 1,
                         block: int = BM_BLOCK, step: int | tuple[int, int, int] = BM_STEP, radius: int = BM_RADIUS, group: int = BM_GROUP,
                         floor: float = BM_FLOOR, progress: Progress | None = None, max_values: int = 8_000_000,
                         chunk: int = 4096, kaiser: float = BM_KAISER, ball: float | None = BM_BALL) -> np.ndarray:
    """BM4D's second stage on ``noisy`` with ``pilot`` as the basic estimate (see module doc, stage 4).

    Reference blocks (``block``³ voxels, every ``step`` voxels (one per axis if a tuple), only where the pilot holds signal) are each
    grouped with the ``group`` blocks of the pilot closest to them in squared distance, searched among the
    offsets of at most ``radius`` voxels along each axis (and, unless ``ball`` is None, of squared length at
    most ``ball``). Each group's noisy blocks are Wiener-filtered in a 3D DCT x 1D DCT (across the group) with
    the pilot group's coefficients as signal power and put back with weights 1 / sum(gain²) times a Kaiser
    window (``kaiser`` = beta; 0 = flat) that favours block centres. Voxels no group covers keep the pilot.
    Each further pass filters ``noisy`` again with the previous pass's output as the pilot, in the same
    groups. Distances are computed in slabs of reference rows of at most ``max_values`` floats, the
    filtering in ``chunk`` groups at a time, so memory stays bounded on large volumes.
    """

    import torch
    import torch.nn.functional as F

    pilot = np.asarray(pilot, dtype=np.float32)
    if sigma <= 0:
        return np.asarray(noisy, dtype=np.float32).copy()
    sig = np.argwhere(pilot > floor)
    if len(sig) == 0 or passes < 1:
        return pilot.copy()
    b, r = int(block), int(radius)
    lo = np.maximum(sig.min(0) - b, 0)
    hi = np.minimum(sig.max(0) + b + 1, pilot.shape)
    box = tuple(slice(int(a), int(c)) for a, c in zip(lo, hi, strict=True))
    crop = tuple(int(n) for n in hi - lo)
    # pad (replicating the edge) so that the reference grid ends exactly on the last voxel, and at least one block
    steps = (step,) * 3 if isinstance(step, int) else tuple(int(v) for v in step)
    if max(steps) > b:
        raise ValueError(f"reference steps {steps} leave voxels between {b}-voxel blocks uncovered")
    pad = [max(b - n, (-(n - b)) % st) for n, st in zip(crop, steps, strict=True)]
    spec = (0, pad[2], 0, pad[1], 0, pad[0])
    y = F.pad(torch.from_numpy(np.ascontiguousarray(noisy[box], dtype=np.float32))[None, None], spec, mode="replicate")[0, 0]
    p = F.pad(torch.from_numpy(np.ascontiguousarray(pilot[box]))[None, None], spec, mode="replicate")[0, 0]
    Z, Y, X = p.shape
    nz, ny, nx = ((n - b) // st + 1 for n, st in zip(p.shape, steps, strict=True))
    active = (F.max_pool3d(p[None, None], b, stride=steps)[0, 0] > floor).reshape(nz, -1)
    rng = torch.arange(-r, r + 1)
    offs = torch.cartesian_prod(rng, rng, rng)  # (n_off, 3)
    if ball is not None:
        offs = offs[(offs * offs).sum(1) <= ball]
    zero = int(torch.nonzero((offs == 0).all(1))[0, 0])
    k = min(int(group), len(offs))
    dz, dy, dx = (torch.arange(b) for _ in range(3))
    inblock = (dz[:, None, None] * (Y * X) + dy[None, :, None] * X + dx[None, None, :]).reshape(-1)
    offlin = offs[:, 0] * (Y * X) + offs[:, 1] * X + offs[:, 2]
    lim = torch.tensor([Z - b, Y - b, X - b])
    D = _dct_matrix(b)
    T3 = torch.kron(torch.kron(D, D), D)  # 3D DCT of a flattened block
    DK = _dct_matrix(k)  # DCT across the group
    yf = y.reshape(-1)
    kw = np.kaiser(b, kaiser) if kaiser > 0 else np.ones(b)
    win = torch.from_numpy(np.einsum("i,j,k->ijk", kw, kw, kw).reshape(-1).astype(np.float32))
    s2 = float(sigma) ** 2
    rows = max(1, int(max_values) // max(1, len(offs) * ny * nx))

    def match(pv):
        """(corner index of every grouped block (n_act, k)) for all active references, slab by slab."""
        pp = F.pad(pv[None, None], (r,) * 6, mode="replicate")[0, 0]
        out = []
        for r0 in range(0, nz, rows):
            r1 = min(nz, r0 + rows)
            act = torch.nonzero(active[r0:r1].reshape(-1)).squeeze(1)
            if len(act) == 0:
                continue
            z0, z1 = r0 * steps[0], (r1 - 1) * steps[0] + b
            ref = pv[z0:z1]
            buf = torch.empty_like(ref)
            dist = torch.empty((len(offs), len(act)))
            for i, (a, c, e) in enumerate(offs.tolist()):
                torch.sub(ref, pp[r + a + z0:r + a + z1, r + c:r + c + Y, r + e:r + e + X], out=buf).square_()
                dist[i] = _block_sums(buf, b, steps, (r1 - r0, ny, nx)).reshape(-1)[act]
            corner = torch.stack([act // (ny * nx) + r0, (act // nx) % ny, act % nx], 1) * torch.tensor(steps)  # (n_act, 3)
            cand = corner[None] + offs[:, None]
            dist[((cand < 0) | (cand > lim)).any(-1)] = float("inf")  # blocks that would leave the volume
            del cand
            best = torch.topk(dist, k, dim=0, largest=False).indices.T  # (n_act, k), closest first
            best = torch.where(torch.isinf(torch.gather(dist.T, 1, best)), zero, best)  # tiny volumes: repeat the reference
            del dist
            out.append((corner[:, 0] * (Y * X) + corner[:, 1] * X + corner[:, 2])[:, None] + offlin[best])
            if progress is not None:
                progress.check()
        return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)

    groups = match(p)
    kw1 = [float(v) for v in kw]
    for _ in range(int(passes)):
        pf = p.reshape(-1)
        acc = torch.zeros(Z * Y * X)
        corner_w = torch.zeros(Z * Y * X)  # each grouped block's weight at its corner voxel
        for c0 in range(0, len(groups), chunk):
            g = groups[c0:c0 + chunk]
            idx = (g[:, :, None] + inblock).reshape(-1)
            n = len(g)
            ty = DK @ (yf[idx].view(n, k, -1) @ T3.T)
            w = (DK @ (pf[idx].view(n, k, -1) @ T3.T)).square_()
            w = w.div_(w + s2)
            wt = 1.0 / w.square().sum(dim=(1, 2)).clamp_min(1e-3)
            est = (DK.T @ w.mul_(ty)) @ T3
            est *= wt[:, None, None] * win
            acc.index_add_(0, idx, est.reshape(-1))
            corner_w.index_add_(0, g.reshape(-1), wt[:, None].expand(n, k).reshape(-1))
            if progress is not None:
                progress.check()
        # the weights' sum at each voxel: every corner's weight spread over its block with the window, instead of
        # adding b³ weights per block one by one (the same sums up to float rounding)
        wacc = corner_w.view(Z, Y, X)
        for ax in range(3):  # the window is separable: spread along each axis in turn
            spread = wacc * kw1[0]
            for j in range(1, b):
                dst = [slice(None)] * 3
                src = [slice(None)] * 3
                dst[ax], src[ax] = slice(j, None), slice(None, -j)
                spread[tuple(dst)] += wacc[tuple(src)] * kw1[j]
            wacc = spread
        wacc = wacc.reshape(-1)
        p = torch.where(wacc > 0, acc / wacc.clamp_min(1e-12), pf).clamp_min_(0).reshape(Z, Y, X)
    res = pilot.copy()
    res[box] = p[: crop[0], : crop[1], : crop[2]].numpy()
    return res


def background_blend(estimate: np.ndarray, filtered: np.ndarray, lo: float = BG_RAMP[0], hi: float = BG_RAMP[1]) -> np.ndarray:
    """``filtered`` where ``estimate`` >= ``hi``, ``estimate`` where it is <= ``lo``, linear in between.

    Near zero the Rician noise floor survives √(y² − σ²) as a positive bias that the collaborative filter
    keeps (the grouped blocks share the brain's DC), which drew a noisy halo around the brain (rms error in
    the 8 mm ring outside the brain 3.7 -> 9.0 at 5 % noise, 5.5 -> 16.4 at 9 %, tuning subject). The
    estimate before stage 4 has no such floor; taking it in the background brings the ring back to 3.7 / 6.9
    for 0.03 dB inside the brain.
    """
    a = np.clip((estimate - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    return (a * filtered + (1 - a) * estimate).astype(np.float32, copy=False)


def rician_unbiased(data: np.ndarray, sigma: float) -> np.ndarray:
    """sqrt(y² - sigma²): magnitude (Rician) noise lifts dark tissue (E[y²] = x² + 2 sigma²); this removes most of it."""
    return np.sqrt(np.maximum(data * data - np.float32(sigma) ** 2, 0))
