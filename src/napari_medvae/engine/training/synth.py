"""Synthetic subjects from the MNI152 2009 templates: the data we train, test and demo on.

Healthy "subjects" are made from the template by a random affine + smooth elastic deformation,
a multiplicative bias field and a gamma contrast change. Lesions, Rician noise and missing slices
are added on top. Every function takes an explicit ``numpy.random.Generator`` so every volume is
reproducible from its seed (training seeds and test seeds are kept in separate ranges by callers).

Arrays are (z, y, x); spacing in mm in the same order.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni_template_dir() -> Path:
    """Folder of the MNI152 2009 templates inside the installed ``nilearn`` wheel (no import, no download)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The MNI152 templates come from the nilearn wheel: `pip install nilearn` "
            "(needed only to make sample/training data, not to run models)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [f for f in MNI_FILES.values() if not (folder / f).exists()]
    if missing:
        raise RuntimeError(f"nilearn is installed but lacks the MNI152 templates {missing} in {folder}")
    return folder


@dataclass
class Templates:
    """MNI152 T1 and tissue maps resampled to one grid. t1 in 0..255, gm/wm in 0..1."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # SimpleITK (x, y, z) world position of voxel 0
    direction: tuple[float, ...]  # SimpleITK direction (LPS), 9 values

    @property
    def brain(self) -> np.ndarray:
        return (self.t1 > 5) | ((self.gm + self.wm) > 0.2)


def load_templates(spacing_mm: float = 2.0) -> Templates:
    """Read the 1 mm MNI templates and resample (anti-aliased, linear) to an isotropic grid."""
    import SimpleITK as sitk

    folder = mni_template_dir()
    out = {}
    ref = None
    for key, fname in MNI_FILES.items():
        img = sitk.Cast(sitk.ReadImage(str(folder / fname)), sitk.sitkFloat32)
        if ref is None:
            size = [int(round(s * sp / spacing_mm)) for s, sp in zip(img.GetSize(), img.GetSpacing(), strict=True)]
            ref = sitk.Image(size, sitk.sitkFloat32)
            ref.SetSpacing([spacing_mm] * 3)
            ref.SetOrigin(img.GetOrigin())
            ref.SetDirection(img.GetDirection())
        factor = spacing_mm / img.GetSpacing()[0]
        if factor > 1:
            img = sitk.SmoothingRecursiveGaussian(img, 0.4 * factor * img.GetSpacing()[0])
        res = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
        out[key] = sitk.GetArrayFromImage(res).astype(np.float32)
    t1 = np.clip(out["t1"], 0, 255)
    gm = np.clip(out["gm"] / max(out["gm"].max(), 1e-6), 0, 1)
    wm = np.clip(out["wm"] / max(out["wm"].max(), 1e-6), 0, 1)
    return Templates(t1, gm, wm, (spacing_mm,) * 3, tuple(ref.GetOrigin()), tuple(ref.GetDirection()))


def _smooth_field(shape, rng: np.random.Generator, sigma: float, amplitude: float) -> np.ndarray:
    """A smooth random field: white noise low-pass filtered and scaled to ``amplitude`` std."""
    coarse_shape = [max(2, int(np.ceil(s / sigma))) for s in shape]
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    field = ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse_shape, strict=True)], order=3)
    field = field[tuple(slice(0, s) for s in shape)]
    std = float(field.std()) or 1.0
    return (field / std * amplitude).astype(np.float32)


def deform(arrays: list[np.ndarray], rng: np.random.Generator, *, max_rot_deg: float = 6.0,
           max_scale: float = 0.06, elastic_mm: float = 2.5, spacing: float = 2.0) -> list[np.ndarray]:
    """Apply one random affine + elastic deformation (same for every array; linear interpolation)."""
    shape = arrays[0].shape
    centre = (np.array(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    scale = np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    mat = rz @ ry @ rx @ scale
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = mat @ (grid - centre[:, None]) + centre[:, None]
    coords = coords.reshape((3, *shape))
    sigma_vox = 12.0 / spacing * 2.0
    for d in range(3):
        coords[d] += _smooth_field(shape, rng, sigma_vox, elastic_mm / spacing)
    return [ndi.map_coordinates(a, coords, order=1, mode="constant", cval=0.0).astype(np.float32) for a in arrays]


def bias_field(shape, rng: np.random.Generator, strength: float = 0.25) -> np.ndarray:
    """A smooth multiplicative bias field around 1 (MRI receive-coil inhomogeneity)."""
    return np.exp(_smooth_field(shape, rng, sigma=max(shape) / 2.5, amplitude=strength / 2)).astype(np.float32)


def t2_like(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """A second contrast from tissue maps: CSF bright, GM mid, WM dark (0..255)."""
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    img = 255.0 * (0.95 * csf + 0.55 * gm + 0.32 * wm)
    return ndi.gaussian_filter(img, 0.6).astype(np.float32) * brain


def make_subject(tpl: Templates, seed: int, *, contrast: str = "t1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One healthy synthetic subject: returns (image 0..~255 float32, brain mask, white-matter map)."""
    rng = np.random.default_rng(seed)
    brain = tpl.brain.astype(np.float32)
    if contrast == "t1":
        src = tpl.t1
    elif contrast == "t2":
        src = t2_like(tpl.gm, tpl.wm, tpl.brain)
    else:
        raise ValueError(f"contrast must be 't1' or 't2', not {contrast!r}")
    img, brain_d, wm = deform([src, brain, tpl.wm], rng, spacing=tpl.spacing[0])
    img = np.clip(img, 0, None)
    gamma = rng.uniform(0.8, 1.25)
    img = 255.0 * (img / 255.0) ** gamma
    img *= bias_field(img.shape, rng) * rng.uniform(0.85, 1.1)
    return np.clip(img, 0, 255).astype(np.float32), brain_d > 0.5, wm


def add_lesion(img: np.ndarray, brain: np.ndarray, wm: np.ndarray, rng: np.random.Generator, *,
               kind: str = "hyper", radius_vox: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Paint one irregular blob lesion centred in white matter; returns (new image, lesion mask).

    ``kind`` "hyper" raises intensity to 1.5-1.8x the local value, "hypo" lowers it to 0.25-0.5x.
    """
    if kind not in ("hyper", "hypo"):
        raise ValueError(f"kind must be 'hyper' or 'hypo', not {kind!r}")
    candidates = np.argwhere((wm > 0.6) & ndi.binary_erosion(brain, iterations=int(radius_vox) + 2))
    if len(candidates) == 0:
        candidates = np.argwhere(brain)
    centre = candidates[rng.integers(len(candidates))]
    r = radius_vox * rng.uniform(0.8, 1.2, 3)
    zz, yy, xx = np.indices(img.shape, dtype=np.float32)
    d = ((zz - centre[0]) / r[0]) ** 2 + ((yy - centre[1]) / r[1]) ** 2 + ((xx - centre[2]) / r[2]) ** 2
    wobble = _smooth_field(img.shape, rng, sigma=max(2.0, radius_vox / 1.5), amplitude=0.25)
    mask = ((d + wobble) < 1.0) & brain
    soft = ndi.gaussian_filter(mask.astype(np.float32), 0.7)
    factor = rng.uniform(1.5, 1.8) if kind == "hyper" else rng.uniform(0.25, 0.5)
    out = img * (1.0 + soft * (factor - 1.0))
    return np.clip(out, 0, 255 * 1.8).astype(np.float32), mask


def rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise of std ``sigma`` (same units as img): |img + n1 + i n2| (magnitude MRI)."""
    n1 = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)
