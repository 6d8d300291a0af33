"""Brain extraction for heads with skull: decide whether a volume still has its skull, and mask the brain.

The mask comes from deepbet (Fisch et al. 2024, MIT licence; a 3D UNet whose TorchScript weights ship inside
its PyPI package, so nothing is downloaded). It was chosen over an atlas registered with SimpleITK because the
atlas we may ship (MNI152 2009c from nilearn) is itself skull-stripped, which makes registering it to a head with
skull fragile, and because deepbet takes about 3 s per 1 mm head on a 2-core CPU once loaded.

Whether a volume has a skull is judged from the size of its foreground: a skull-stripped adult brain fills
about 1.0-1.9 l, a head with skull (even defaced) 2.5 l or more (2.5-3.0 l on the four OpenfMRI ds011 heads
measured this way; 0.5-1.8 l on the skull-stripped volumes here). The foreground is the filled region above
an Otsu threshold of the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError

STRIPPED_MAX_ML = 2200.0  # foreground above this (ml) = a head with skull; adult brains are 1.0-1.9 l
MIN_SIDE = 16  # voxels: smaller volumes are left to the engine's own checks (and its clear refusal)


def foreground_ml(volume: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume (ml) of the filled Otsu foreground, on a 2x-subsampled copy for speed.

    0.0 for anything that is not a finite, non-constant 3D volume of at least ``MIN_SIDE`` voxels a side: such
    input is refused later by the engine's checks, with their specific message.
    """
    from skimage.filters import threshold_otsu

    if volume.ndim != 3 or min(volume.shape) < MIN_SIDE or not np.issubdtype(volume.dtype, np.number):
        return 0.0
    sub = np.asarray(volume[::2, ::2, ::2], dtype=np.float32)
    if not np.isfinite(sub).all() or sub.min() == sub.max():
        return 0.0
    fg = ndi.binary_fill_holes(ndi.binary_closing(sub > threshold_otsu(sub), iterations=2))
    return float(fg.sum()) * 8.0 * float(np.prod(spacing)) / 1000.0


def has_skull(volume: np.ndarray, spacing: Sequence[float]) -> bool:
    """True when the volume looks like a whole head (skull, scalp) rather than an extracted brain."""
    return foreground_ml(volume, spacing) > STRIPPED_MAX_ML


def nifti_affine(direction: Sequence[float], origin: Sequence[float], spacing_zyx: Sequence[float]) -> np.ndarray:
    """The RAS affine nibabel uses for an array indexed (x, y, z), from SimpleITK-style LPS geometry."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    sp = np.asarray(spacing_zyx, dtype=np.float64)[::-1]
    aff = np.eye(4)
    aff[:3, :3] = d * sp[None, :]
    aff[:3, 3] = np.asarray(origin, dtype=np.float64)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


@lru_cache(maxsize=2)
def _extractor(device: str):
    import warnings

    try:
        from deepbet import BrainExtraction
    except ImportError as exc:  # deepbet is a dependency; a broken install lands here
        raise InputError(
            "brain extraction needs the 'deepbet' package (pip install deepbet); it is missing or broken: "
            f"{exc}"
        ) from None
    with warnings.catch_warnings():  # deepbet's TorchScript load warns of torch.jit's deprecation: not the user's concern
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return BrainExtraction(no_gpu=device == "cpu")


def extract_brain(volume: np.ndarray, spacing: Sequence[float], direction: Sequence[float] | None = None,
                  origin: Sequence[float] = (0.0, 0.0, 0.0), *, device: str = "cpu") -> np.ndarray:
    """Bool brain mask (z, y, x) of a T1 head with deepbet; orientation from ``direction`` (SimpleITK order).

    deepbet expects a roughly canonical (RAS-like) head; the volume is handed over with its true affine and
    deepbet reorients it itself, so any acquisition orientation works.
    """
    import nibabel as nib

    if volume.ndim != 3:
        raise InputError(f"brain extraction needs a 3D volume, not shape {volume.shape}")
    if direction is None:
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    data = np.ascontiguousarray(np.transpose(np.asarray(volume, dtype=np.float32), (2, 1, 0)))
    img = nib.Nifti1Image(data, nifti_affine(direction, origin, spacing))
    bet = _extractor("cpu" if device == "cpu" else "gpu")
    _, mask_img, _ = bet.run(img)
    mask = np.asarray(mask_img.dataobj) > 0
    mask = np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))
    if mask.shape != volume.shape:  # deepbet hands the mask back on the input's grid; anything else is a bug
        raise RuntimeError(f"brain mask shape {mask.shape} differs from the volume's {volume.shape}")
    if not mask.any():
        raise InputError("brain extraction found no brain in this volume; is it a T1-weighted head MRI?")
    return mask


SKULL_MODES = ("auto", "always", "never")


def brain_for(volume: np.ndarray, spacing: Sequence[float], direction: Sequence[float] | None = None,
              origin: Sequence[float] = (0.0, 0.0, 0.0), mode: str = "auto", *, device: str = "cpu") -> np.ndarray | None:
    """The brain mask an operation should be restricted to, or None to process the volume as it is.

    ``mode``: "auto" extracts the brain of heads with skull (``has_skull``) and leaves skull-stripped volumes
    alone; "always" extracts it in any case; "never" never does. The models were trained on brains without
    skull, so on a head the network sees the extracted brain only (see ``strip`` and ``restore_outside``).
    """
    if mode not in SKULL_MODES:
        raise InputError(f"skull stripping must be one of {', '.join(SKULL_MODES)}, not {mode!r}")
    if mode == "never" or (mode == "auto" and not has_skull(volume, spacing)):
        return None
    return extract_brain(volume, spacing, direction, origin, device=device)


def prepare_head(volume: np.ndarray, spacing: Sequence[float], direction: Sequence[float] | None = None,
                 origin: Sequence[float] = (0.0, 0.0, 0.0), mode: str = "auto",
                 given: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(volume the network should see, brain mask or None): the CLI's and the widgets' one entry point.

    ``given``: a brain mask the user supplied (used as it is, no extraction). Without a mask the volume is
    returned unchanged.
    """
    mask = given if given is not None else brain_for(volume, spacing, direction, origin, mode)
    return (volume if mask is None else strip(volume, mask)), mask


def strip(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The volume with every voxel outside the brain set to its minimum (the background of a stripped brain)."""
    return np.where(mask, volume, volume.min()).astype(volume.dtype, copy=False)


def restore_outside(result: np.ndarray, volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``result`` inside the brain, the input's own voxels outside it (scalp, skull and neck are left as they were)."""
    return np.where(mask, result, volume.astype(result.dtype, copy=False))
