"""Real held-out scans for the benchmarks: OpenNeuro ds002748 (CC0), test split sub-59..sub-72 only.

Get them with ``python scripts/fetch_real_data.py PATH_TO_CLONE`` (writes data_cache/ds002748/). The volumes are
skull-stripped T1 (0.87x0.87x1 mm). For the benchmark each is read through the package's own reader, cropped to
the brain's bounding box plus a margin (the background outside carries no score) and scaled so that the 99.5th
percentile of the brain is 200 (the synthetic subjects' units: the lesion model clips at 1.8 x 255). The brain
mask is the filled non-zero region (the data are skull-stripped); the white-matter map, used only to place
synthetic lesions, is the brightest of three Otsu classes inside the eroded brain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT / "data_cache" / "ds002748"
TEST_SUBJECTS = tuple(range(59, 73))  # held out: never trained, tuned or calibrated on
MARGIN = 4


def available() -> bool:
    return (REAL_DIR / "test").is_dir() and any((REAL_DIR / "test").glob("sub-*_T1w.nii.gz"))


def path_of(n: int) -> Path:
    assert n in TEST_SUBJECTS, "benchmarks score the held-out test subjects (sub-59..sub-72) only"
    return REAL_DIR / "test" / f"sub-{n:02d}_T1w.nii.gz"


def brain_of(img: np.ndarray) -> np.ndarray:
    """The filled, largest non-zero region of a skull-stripped volume."""
    m = img > 0
    lab, n = ndi.label(m)
    if n > 1:
        sizes = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
        m = lab == (int(np.argmax(sizes)) + 1)
    return ndi.binary_fill_holes(m)


def subject(n: int):
    """(image float32 in 0..~255 units, brain mask, white-matter map, spacing zyx) of held-out subject ``n``."""
    from skimage.filters import threshold_multiotsu

    from napari_medvae.io import read_volume

    vol, geom = read_volume(path_of(n))
    vol = vol.astype(np.float32)
    brain = brain_of(vol)
    box = tuple(slice(max(0, s.start - MARGIN), s.stop + MARGIN) for s in ndi.find_objects(brain.astype(np.uint8))[0])
    vol, brain = np.ascontiguousarray(vol[box]), np.ascontiguousarray(brain[box])
    vol *= np.float32(200.0 / np.percentile(vol[brain], 99.5))
    vol[~brain] = 0.0
    inner = ndi.binary_erosion(brain, iterations=3)
    t = threshold_multiotsu(ndi.gaussian_filter(vol, 1.0)[inner], classes=3)
    wm = (ndi.gaussian_filter(vol, 1.0) > t[1]) & inner
    return vol, brain, wm.astype(np.float32), tuple(float(s) for s in geom.spacing)


def subjects(count: int):
    """The first ``count`` held-out subjects as (number, subject tuple)."""
    if count > len(TEST_SUBJECTS):
        raise SystemExit(f"--real-subjects must be at most {len(TEST_SUBJECTS)} (the held-out test split)")
    return [(n, subject(n)) for n in TEST_SUBJECTS[:count]]
