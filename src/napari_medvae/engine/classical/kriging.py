"""Kriging maths of the region prior: a Gaussian model of 3D patches that fills painted regions by conditioning on
the known voxels (numpy/scipy, and threadpoolctl for the BLAS threads; the prior's weights live in the model,
``networks.RegionPrior``).

The prior is the mean and covariance of the voxels of a ball (radius patch / 2) in ``patch``-sided cubes (voxels of
the model grid) sampled inside the brain of healthy training volumes, averaged over the 8 mirror images of the cube
(so only the rows of one octant are stored: 296 x 1791 values for patch 15). A painted region that fits in the cube with ``MARGIN`` known voxels
on every side is filled with the conditional mean of its voxels given every known voxel of the cube around it:
the least-squares-optimal linear prediction under the prior (Gaussian-process regression, or kriging, with a
covariance learned from data instead of assumed; the prior's mean is rescaled where the known voxels reject it,
e.g. in another contrast). Biharmonic inpainting assumes a fixed smoothness; the learned
covariance also knows how tissue edges continue. Regions that do not fit are filled by cubes along their edge,
blended into a classical fill the caller gives (``fill``'s ``base``; see ``_peel``), or else left to the caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..prep.brainmask import auto_brain_mask

MARGIN = 2  # known voxels required between a region and the cube's faces
# known voxels used: those within REACH steps (6-neighbourhood) of the region; on the tuning subjects (painted regions,
# 2 mm T1) 3 steps gave 30.05 dB, 2: 29.48, 4: 29.88, 5: 29.98, the whole cube: 29.94, at a third of its time
REACH = 3
NUGGET = 1e-6  # relative diagonal loading (round-off guard of the Cholesky factorisation)
# the prior's mean is rescaled for a region when the known voxels around it reject scale 1: a likelihood-ratio test,
# (a - 1)^2 m'C^-1 m > SCALE_TEST (chi-squared, 1 degree of freedom), with a the generalised-least-squares scale of
# the mean. On the tuning subjects (10 each, painted regions, pooled): T2-like 30.34 -> 30.58 dB, T1 28.01 -> 28.01
# (one subject's fill changed, by -0.02 dB); always rescaling: T2-like 30.79, T1 27.92; test at 1: 30.78 / 27.95; at 4: 30.42 / 28.01
SCALE_TEST = 2.0
# the contralateral patch: the volume mirrored about its plane of best symmetry (searched on every axis, the plane
# within MIRROR_RANGE voxels of the centre), used where that mirror image correlates at least MIRROR_MIN_CORR with the
# volume over tissue; each region's mirrored cube is matched within MIRROR_SHIFT voxels
MIRROR_RANGE = 12
MIRROR_MIN_CORR = 0.3
MIRROR_SHIFT = 2
MIRROR_SIGMA = 2.0  # the plane is found on the volume smoothed by this Gaussian (voxels): symmetry is anatomical, not of noise
# regions too large for the cube (``_peel``): cube centres one per PEEL_STEP-voxel cell of the region's edge, Gaussian
# weights of PEEL_SIGMA voxels around each centre, the classical fill's weight PEEL_BASE, and cubes with fewer known
# voxels than PEEL_MIN_KNOWN are skipped. Chosen on validation subjects sub-51..54 (docs/method.md, Painted regions)
PEEL_STEP, PEEL_SIGMA, PEEL_BASE, PEEL_MIN_KNOWN = 5, 3.0, 0.05, 20
# BLAS threads for the fill's factorisations (a few hundred to a few thousand rows each): OpenBLAS's threads cost more
# than they give there, and far more while another process keeps the cores busy (780 rows on this 2-core CPU, busy:
# 0.59 s with 2 threads, 0.012 s with one)
BLAS_THREADS = 1
# threads that krige a large region's cubes in parallel (each on one BLAS thread)
PEEL_WORKERS = max(1, min(4, os.cpu_count() or 1))


def support(patch: int) -> np.ndarray:
    """Flat cube indices of the prior's voxels: the ball of radius patch / 2 inside the cube (its corners, far from any
    region the cube can hold, are left out: half the voxels, a quarter of the stored covariance)."""
    h = patch // 2
    g = np.indices((patch,) * 3).reshape(3, -1) - h
    return np.flatnonzero((g * g).sum(0) <= (h + 0.5) ** 2)


def _flip_perms(patch: int) -> list[tuple[tuple[int, int, int], np.ndarray]]:
    """(flip signs, permutation) of the ball's voxels (support order) for the 8 mirror images of the cube:
    perm[i] = position of the mirror image of voxel i."""
    idx = np.arange(patch ** 3).reshape(patch, patch, patch)
    sup = support(patch)
    pos = np.full(patch ** 3, -1)
    pos[sup] = np.arange(len(sup))
    out = []
    for fz in (1, -1):
        for fy in (1, -1):
            for fx in (1, -1):
                out.append(((fz, fy, fx), pos[idx[::fz, ::fy, ::fx].ravel()[sup]]))
    return out


def octant_index(patch: int) -> np.ndarray:
    """Positions (support order) of the ball's voxels whose rows are stored: coordinates <= patch // 2 on every axis."""
    h = patch // 2
    coords = np.stack(np.unravel_index(support(patch), (patch,) * 3), axis=1)
    return np.flatnonzero((coords <= h).all(axis=1))


def check_patch(patch: int) -> int:
    """The cube side: an odd integer 5-21."""
    p = int(patch)
    if p != patch or p % 2 == 0 or not 5 <= p <= 21:
        raise ValueError(f"region prior patch must be an odd integer 5-21, not {patch!r}")
    return p


def check_power(power: float) -> float:
    """The intensity power of the prior: a number 0.25-4."""
    try:
        g = float(power)
    except (TypeError, ValueError):
        raise ValueError(f"region prior power must be a number 0.25-4, not {power!r}") from None
    if not 0.25 <= g <= 4:  # also refuses NaN
        raise ValueError(f"region prior power must be a number 0.25-4, not {power!r}")
    return g


def fit(volumes: Sequence[np.ndarray], patch: int = 15, per_volume: int = 3000, seed: int = 0,
        brains: Sequence[np.ndarray] | None = None, power: float = 1.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Estimate the prior from normalised volumes on the model grid; returns (octant rows, mean, patches used).

    Cube centres are drawn uniformly inside each volume's brain (``brains``, else the signal region) eroded by 3
    voxels, so that cubes cover the brain's interior and its edge alike. The model is of the intensities raised to
    ``power`` (negative values count as 0).
    """
    p = check_patch(patch)
    g = check_power(power)
    h = p // 2
    sup = support(p)
    rng = np.random.default_rng(seed)
    s = np.zeros((len(sup), len(sup)))
    total = np.zeros(len(sup))
    n = 0
    for i, v in enumerate(volumes):
        br = auto_brain_mask(v) if brains is None else brains[i]
        br = ndi.binary_erosion(br, iterations=3)
        pts = np.argwhere(br)
        pts = pts[(pts >= h).all(1) & (pts < np.array(v.shape) - h).all(1)]
        if len(pts) == 0:
            continue
        pts = pts[rng.choice(len(pts), min(per_volume, len(pts)), replace=False)]
        if g != 1:
            v = np.clip(v, 0, None) ** np.float32(g)
        x = np.stack([v[z - h:z + h + 1, y - h:y + h + 1, c - h:c + h + 1].ravel()[sup] for z, y, c in pts]).astype(np.float64)
        s += x.T @ x
        total += x.sum(0)
        n += len(x)
    if n <= len(sup):
        raise ValueError(f"the region prior needs more than {len(sup)} cubes of {p}^3 voxels inside brains; the "
                         f"volumes gave {n} (more or larger volumes, or a smaller patch)")
    mean = total / n
    cov = s / n - np.outer(mean, mean)
    perms = _flip_perms(p)
    sym = sum(cov[np.ix_(q, q)] for _, q in perms) / len(perms)
    msym = sum(mean[q] for _, q in perms) / len(perms)
    return sym[octant_index(p)].astype(np.float32), msym.astype(np.float32), n


def covariance(rows: np.ndarray, patch: int) -> np.ndarray:
    """The full covariance (float64, support order) from its stored octant rows (mirror symmetry)."""
    p = check_patch(patch)
    h = p // 2
    rows = np.asarray(rows, dtype=np.float64)
    sup = support(p)
    octant = octant_index(p)
    oct_of = np.full(len(sup), -1)
    oct_of[octant] = np.arange(len(octant))
    coords = np.stack(np.unravel_index(sup, (p,) * 3), axis=1)
    cov = np.empty((len(sup), len(sup)))
    for signs, perm in _flip_perms(p):
        # the voxels this mirror image maps into the octant
        sel = np.all([(coords[:, a] > h) == (signs[a] < 0) for a in range(3)], axis=0)
        cov[sel] = rows[oct_of[perm[sel]]][:, perm]
    return cov


def mirror_image(data: np.ndarray, mask: np.ndarray, samples: int = 20000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, int, float] | None:
    """(mirrored volume, where it holds known voxels, axis, correlation) for the plane of best mirror symmetry of
    ``data`` (normalised, model grid), or None where no mirror image correlates MIRROR_MIN_CORR with it.

    Brains are nearly symmetric about the mid-sagittal plane; the plane is found as the flip (every axis, since the
    volume's orientation is not known here) and offset whose mirror image correlates best with the volume over up
    to ``samples`` known tissue voxels (above 0.1). Mirrored voxels that fall outside the volume or on ``mask`` are
    not known."""
    tissue = np.flatnonzero((data > 0.1).ravel() & ~mask.ravel())
    if len(tissue) < 100:
        return None
    rng = np.random.default_rng(seed)
    idx = np.unravel_index(rng.choice(tissue, min(samples, len(tissue)), replace=False), data.shape)
    smooth = ndi.gaussian_filter(np.where(mask, 0, data).astype(np.float32), MIRROR_SIGMA)
    v = smooth[idx]
    best = None
    for ax in range(3):
        n = data.shape[ax]
        for k in range(-MIRROR_RANGE, MIRROR_RANGE + 1):
            xm = n - 1 + k - idx[ax]
            # voxels near the plane match their (near) mirror image through the smoothing alone: left out
            ok = (xm >= 0) & (xm < n) & (np.abs(xm - idx[ax]) > 4 * MIRROR_SIGMA)
            j = tuple(xm[ok] if a == ax else idx[a][ok] for a in range(3))
            ok2 = ~mask[j]
            if ok2.sum() < 100:
                continue
            a, b = v[ok][ok2], smooth[j][ok2]
            if a.std() == 0 or b.std() == 0:
                continue
            c = float(np.corrcoef(a, b)[0, 1])
            if best is None or c > best[0]:
                best = (c, ax, k)
    if best is None or not best[0] >= MIRROR_MIN_CORR:
        return None
    c, ax, k = best
    n = data.shape[ax]
    src = n - 1 + k - np.arange(n)
    valid = (src >= 0) & (src < n)
    src = np.clip(src, 0, n - 1)
    shape = [1, 1, 1]
    shape[ax] = n
    mirrored = np.take(data, src, axis=ax)
    known = ~np.take(mask, src, axis=ax) & valid.reshape(shape)
    return mirrored, known, ax, c


def _contralateral(mirror, box_lo, p: int, sup: np.ndarray, need: np.ndarray, known: np.ndarray,
                   vals: np.ndarray, g: float) -> np.ndarray | None:
    """The mirrored cube (support order, intensities to the power ``g``) best matched to the known voxels ``vals`` of
    a region's cube within MIRROR_SHIFT voxels (least squares after a linear fit), whose voxels ``need`` are all
    known in the mirror image; None where no such cube exists."""
    img, mknown = mirror
    best = None
    rng = range(-MIRROR_SHIFT, MIRROR_SHIFT + 1)
    design = np.ones((int(known.sum()), 2))
    for d in ((a, b, c) for a in rng for b in rng for c in rng):
        box = tuple(slice(lo + o, lo + o + p) for lo, o in zip(box_lo, d, strict=True))
        if any(s.start < 0 or s.stop > n for s, n in zip(box, img.shape, strict=True)):
            continue
        if not mknown[box].ravel()[sup][need].all():
            continue
        cv = img[box].ravel()[sup].astype(np.float64)
        cv = np.clip(cv, 0, None) ** g if g != 1 else cv
        design[:, 1] = cv[known]
        _coef, res, rank, _ = np.linalg.lstsq(design, vals[known], rcond=None)
        err = float(res[0]) if rank == 2 and len(res) else np.inf
        if best is None or err < best[0]:
            best = (err, cv)
    return None if best is None or not np.isfinite(best[0]) else best[1]


def fill(data: np.ndarray, mask: np.ndarray, cov: np.ndarray, mean: np.ndarray, patch: int,
         power: float = 1.0, mirror: tuple[np.ndarray, np.ndarray] | None = None,
         base: np.ndarray | None = None, check: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill each connected region of ``mask`` that fits in a cube; returns (volume, bool map of filled voxels).

    The known voxels are the cube's ball voxels outside ``mask`` within REACH steps of the region; a region is placed
    at the cube's centre (shifted inwards at the volume's faces), needs ``MARGIN`` known voxels towards each face and
    must lie inside the ball. Where the known voxels are clearly brighter or darker than the prior's mean (another
    contrast, a bias field; ``scale_of_mean``), the mean is rescaled first: ordinary kriging with an unknown scale.
    ``mirror`` (mirrored volume, its known voxels: ``mirror_image``): where the region's contralateral cube is known,
    the prior's mean and that cube are both drifts of the kriging (universal kriging, coefficients by generalised
    least squares), so what the other hemisphere shows there informs the fill as far as it fits the known voxels.
    ``power``: the prior's (conditioning on intensities raised to it, the prediction taken back by the inverse power).
    ``base`` (a classical fill of ``mask``, same shape): regions too large for the cube are filled too, by cubes
    along their edge blended with ``base`` (see ``_peel``); without it they keep their value in ``data``.
    The many small Cholesky factorisations run on one BLAS thread (``threadpoolctl``), see BLAS_THREADS.
    ``check()`` is called before each cube (it raises to cancel: a very large region takes many cubes).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        return _fill(data, mask, cov, mean, patch, power, mirror, base, check or (lambda: None))


def _fill(data: np.ndarray, mask: np.ndarray, cov: np.ndarray, mean: np.ndarray, patch: int, power: float,
          mirror: tuple[np.ndarray, np.ndarray] | None, base: np.ndarray | None,
          check: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
    """``fill``'s work, under its thread limit."""
    p = check_patch(patch)
    g = check_power(power)
    sup = support(p)
    in_ball = np.zeros(p ** 3, bool)
    in_ball[sup] = True
    out = np.array(data, dtype=np.float32, copy=True)
    done = np.zeros(mask.shape, bool)
    if any(s < p for s in mask.shape):
        return out, done
    lab, _ = ndi.label(mask)
    large = []
    for i, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        check()
        ext = [s.stop - s.start for s in sl]
        lo = [min(max((s.start + s.stop - p) // 2, 0), n - p) for s, n in zip(sl, mask.shape, strict=True)]
        box = tuple(slice(a, a + p) for a in lo)
        hole = (lab[box] == i).ravel()
        if max(ext) > p - 2 * MARGIN or (hole & ~in_ball).any():
            large.append((i, sl))
            continue
        known = ~mask[box].ravel() & in_ball
        if REACH:
            known &= ndi.binary_dilation(lab[box] == i, iterations=REACH).ravel()
        hole, known = hole[sup], known[sup]
        pred = _krige(out[box].ravel()[sup], hole, known, lo, cov, mean, p, sup, g, mirror)
        cube = out[box].ravel()
        cube[sup[hole]] = pred
        out[box] = cube.reshape((p, p, p))
        done[box] |= lab[box] == i
    if base is not None:
        for i, sl in large:
            _peel(out, mask, lab, i, sl, cov, mean, p, sup, g, mirror, base, check)
            done[sl] |= lab[sl] == i
    return out, done


def _krige(cube: np.ndarray, hole: np.ndarray, known: np.ndarray, lo: Sequence[int], cov: np.ndarray, mean: np.ndarray,
           p: int, sup: np.ndarray, g: float, mirror: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The conditional mean of the ``hole`` voxels of a cube (corner ``lo``; ``cube``: its ball voxels in support
    order) given its ``known`` voxels, in intensity units (see ``fill``)."""
    from scipy.linalg import cho_factor, cho_solve

    vals = cube.astype(np.float64)
    if g != 1:
        vals = np.clip(vals, 0, None) ** g
    ckk = cov[np.ix_(known, known)]
    ckk[np.diag_indices_from(ckk)] += NUGGET * float(np.mean(np.diag(cov)))
    cv = None if mirror is None else _contralateral(mirror, lo, p, sup, hole | known, known, vals, g)
    drift_k, drift_h = mean[known][:, None], mean[hole][:, None]
    if cv is not None:
        drift_k, drift_h = np.stack([mean[known], cv[known]], 1), np.stack([mean[hole], cv[hole]], 1)
    try:
        cf = cho_factor(ckk, check_finite=False)
        ci_drift = cho_solve(cf, drift_k, check_finite=False)
        if cv is not None:
            coef = np.linalg.solve(drift_k.T @ ci_drift, ci_drift.T @ vals[known])
        else:
            coef = np.array([scale_of_mean(ci_drift[:, 0], mean[known], vals[known])])
        w = cho_solve(cf, vals[known] - drift_k @ coef, check_finite=False)
    except np.linalg.LinAlgError:  # not positive definite after all: least squares, the prior's own mean
        drift_h, coef = mean[hole][:, None], np.ones(1)
        w = np.linalg.lstsq(ckk, vals[known] - mean[known], rcond=None)[0]
    pred = np.clip(drift_h @ coef + cov[np.ix_(hole, known)] @ w, 0, None)
    return pred if g == 1 else pred ** (1 / g)


def _peel(out: np.ndarray, mask: np.ndarray, lab: np.ndarray, i: int, sl: tuple[slice, ...], cov: np.ndarray,
          mean: np.ndarray, p: int, sup: np.ndarray, g: float, mirror: tuple[np.ndarray, np.ndarray] | None,
          base: np.ndarray, check: Callable[[], None]) -> None:
    """Fill region ``i`` of ``lab`` (bounding box ``sl``), too large for one cube, in ``out`` ("peeling").

    Cubes are centred on the region's edge voxels (those next to a known voxel), one per PEEL_STEP-voxel cell of the
    volume, and each krige the region's voxels in their ball from the known voxels there (as ``fill`` does). Each
    voxel's fill is the average of its cubes' predictions, weighted by a Gaussian (PEEL_SIGMA voxels) of its
    distance from the cube's centre, and of ``base`` with weight PEEL_BASE: the further inside the region (the
    further from every edge), the more the classical fill counts.
    """
    h = p // 2
    # everything happens in the region's bounding box grown by a cube: every cube lies inside it
    bb = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, n in zip(sl, mask.shape, strict=True))
    o = np.array([s.start for s in bb])
    region = lab[bb] == i
    unknown = mask[bb]
    near = ndi.binary_dilation(region, iterations=max(REACH, 1)) & ~unknown
    edge = np.argwhere(region & ndi.binary_dilation(~unknown)) + o
    centres = edge[np.unique(edge // PEEL_STEP, axis=0, return_index=True)[1]]
    acc = np.zeros(region.shape)
    wsum = np.zeros(region.shape)
    offs = np.stack(np.unravel_index(sup, (p,) * 3), axis=1)  # ball voxels' positions in the cube
    def cube(c):
        """(local flat indices, weights, fill) of the region's voxels in the cube centred on ``c``, or None."""
        lo = [min(max(int(a) - h, 0), n - p) for a, n in zip(c, mask.shape, strict=True)]
        box = tuple(slice(a - b, a - b + p) for a, b in zip(lo, o, strict=True))
        hole = region[box].ravel()[sup]
        known = near[box].ravel()[sup]
        if not hole.any() or known.sum() < PEEL_MIN_KNOWN:
            return None
        pred = _krige(out[tuple(slice(a, a + p) for a in lo)].ravel()[sup], hole, known, lo, cov, mean, p, sup, g,
                      mirror)
        pos = offs[hole] + (np.array(lo) - o)  # local voxel positions of the hole voxels
        wt = np.exp(-((pos + o - c) ** 2).sum(1) / (2 * PEEL_SIGMA**2))
        return np.ravel_multi_index(pos.T, region.shape), wt, pred  # indices distinct within a cube

    # the cubes are independent (``out`` changes only after the last): PEEL_WORKERS threads (LAPACK and numpy's
    # copies release the GIL); their fills are added in the centres' order, so the result does not depend on them
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=PEEL_WORKERS) as pool:
        futures = [pool.submit(cube, c) for c in centres]
        try:
            for f in futures:
                check()
                res = f.result()
                if res is None:
                    continue
                flat, wt, pred = res
                acc.ravel()[flat] += wt * pred
                wsum.ravel()[flat] += wt
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    view = out[bb]
    view[region] = (acc[region] + PEEL_BASE * base[bb][region]) / (wsum[region] + PEEL_BASE)


def scale_of_mean(cinv_mean: np.ndarray, mean: np.ndarray, vals: np.ndarray) -> float:
    """The scale of the prior's mean for a region: the generalised-least-squares fit a of ``vals`` ~ a * ``mean`` (with
    ``cinv_mean`` = C^-1 mean over the known voxels) when a likelihood-ratio test rejects a = 1 (SCALE_TEST), else 1."""
    q = float(mean @ cinv_mean)
    if not q > 0:
        return 1.0
    a = float(cinv_mean @ vals) / q
    return max(a, 0.0) if (a - 1.0) ** 2 * q > SCALE_TEST else 1.0
