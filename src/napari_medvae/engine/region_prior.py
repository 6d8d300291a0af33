"""Region prior: a Gaussian model of 3D patches that fills painted regions by conditioning on the known voxels.

The prior is the mean and covariance of the voxels of a ball (radius patch / 2) in ``patch``-sided cubes (voxels of
the model grid) sampled inside the brain of healthy training volumes, averaged over the 8 mirror images of the cube
(so only the rows of one octant are stored: 296 x 1791 values for patch 15). A painted region that fits in the cube with ``MARGIN`` known voxels
on every side is filled with the conditional mean of its voxels given every known voxel of the cube around it:
the least-squares-optimal linear prediction under the prior (Gaussian-process regression, or kriging, with a
covariance learned from data instead of assumed; the prior's mean is rescaled where the known voxels reject it,
e.g. in another contrast). Biharmonic inpainting assumes a fixed smoothness; the learned
covariance also knows how tissue edges continue. Regions that do not fit are left to the caller's classical fill.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

MARGIN = 2  # known voxels required between a region and the cube's faces
# known voxels used: those within REACH steps (6-neighbourhood) of the region; on the tuning subjects (painted regions,
# 2 mm T1) 3 steps gave 30.05 dB, 2: 29.48, 4: 29.88, 5: 29.98, the whole cube: 29.94, at a third of its time
REACH = 3
NUGGET = 1e-6  # relative diagonal loading (round-off guard of the Cholesky factorisation)
# the prior's mean is rescaled for a region when the known voxels around it reject scale 1: a likelihood-ratio test,
# (a - 1)^2 m'C^-1 m > SCALE_TEST (chi-squared, 1 degree of freedom), with a the generalised-least-squares scale of
# the mean. On the tuning subjects (10 each, painted regions, pooled): T2-like 30.34 -> 30.58 dB, T1 28.01 -> 28.01
# (one region of 40 changed); always rescaling: T2-like 30.79, T1 27.92; test at 1: 30.78 / 27.95; at 4: 30.42 / 28.01
SCALE_TEST = 2.0


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
    from .anomaly import auto_brain_mask

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


def fill(data: np.ndarray, mask: np.ndarray, cov: np.ndarray, mean: np.ndarray, patch: int,
         power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fill each connected region of ``mask`` that fits in a cube; returns (volume, bool map of filled voxels).

    The known voxels are the cube's ball voxels outside ``mask`` within REACH steps of the region; a region is placed
    at the cube's centre (shifted inwards at the volume's faces), needs ``MARGIN`` known voxels towards each face and
    must lie inside the ball. Where the known voxels are clearly brighter or darker than the prior's mean (another
    contrast, a bias field; ``scale_of_mean``), the mean is rescaled first: ordinary kriging with an unknown scale. ``power``: the prior's (conditioning on intensities raised to it, the
    prediction taken back by the inverse power). Voxels not filled keep their value in ``data``.
    """
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
    for i, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        ext = [s.stop - s.start for s in sl]
        if max(ext) > p - 2 * MARGIN:
            continue
        lo = [min(max((s.start + s.stop - p) // 2, 0), n - p) for s, n in zip(sl, mask.shape, strict=True)]
        box = tuple(slice(a, a + p) for a in lo)
        hole = (lab[box] == i).ravel()
        if (hole & ~in_ball).any():
            continue
        known = ~mask[box].ravel() & in_ball
        if REACH:
            known &= ndi.binary_dilation(lab[box] == i, iterations=REACH).ravel()
        hole, known = hole[sup], known[sup]
        vals = out[box].ravel()[sup].astype(np.float64)
        if g != 1:
            vals = np.clip(vals, 0, None) ** g
        ckk = cov[np.ix_(known, known)]
        ckk[np.diag_indices_from(ckk)] += NUGGET * float(np.mean(np.diag(cov)))
        a = 1.0
        try:
            from scipy.linalg import cho_factor, cho_solve

            cf = cho_factor(ckk, check_finite=False)
            a = scale_of_mean(cho_solve(cf, mean[known], check_finite=False), mean[known], vals[known])
            w = cho_solve(cf, vals[known] - a * mean[known], check_finite=False)
        except np.linalg.LinAlgError:  # not positive definite after all: least squares, the prior's own mean
            w = np.linalg.lstsq(ckk, vals[known] - mean[known], rcond=None)[0]
        pred = a * mean[hole] + cov[np.ix_(hole, known)] @ w
        cube = out[box].ravel()
        cube[sup[hole]] = np.clip(pred, 0, None) if g == 1 else np.clip(pred, 0, None) ** (1 / g)
        out[box] = cube.reshape((p, p, p))
        done[box] |= lab[box] == i
    return out, done


def scale_of_mean(cinv_mean: np.ndarray, mean: np.ndarray, vals: np.ndarray) -> float:
    """The scale of the prior's mean for a region: the generalised-least-squares fit a of ``vals`` ~ a * ``mean`` (with
    ``cinv_mean`` = C^-1 mean over the known voxels) when a likelihood-ratio test rejects a = 1 (SCALE_TEST), else 1."""
    q = float(mean @ cinv_mean)
    if not q > 0:
        return 1.0
    a = float(cinv_mean @ vals) / q
    return max(a, 0.0) if (a - 1.0) ** 2 * q > SCALE_TEST else 1.0
