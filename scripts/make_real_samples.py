"""Make the two small real volumes in sample_data/ that the tests use to exercise the real-scan path.

    python scripts/make_real_samples.py     # needs data_cache/ds002748 (scripts/fetch_real_data.py) and
                                            # data_cache/openfmri_ds011_foerde (see sample_data/README.md)

- real_t1_ds002748_sub-51_slab.nii.gz: the central 40 axial slices of ds002748 sub-51 (validation split, CC0),
  cropped to the brain's bounding box, native 0.87x0.87x1 mm, int16 (the values rounded).
- real_t1_head_ds011_sub-01_2mm.nii.gz: ds011 sub-01's whole head with skull (PDDL), resampled to 2 mm, int16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data_cache"
OUT = ROOT / "sample_data"


def slab() -> Path:
    img = sitk.ReadImage(str(CACHE / "ds002748" / "val" / "sub-51_T1w.nii.gz"))
    arr = sitk.GetArrayFromImage(img)  # z, y, x
    nz = np.nonzero(arr > 0)
    z0 = int(np.mean(nz[0])) - 20
    lo = [int(nz[2].min()) - 2, int(nz[1].min()) - 2, z0]
    hi = [int(nz[2].max()) + 3, int(nz[1].max()) + 3, z0 + 40]
    roi = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]  # SimpleITK slicing keeps origin/spacing/direction right
    roi = sitk.Cast(sitk.Round(roi), sitk.sitkInt16)
    path = OUT / "real_t1_ds002748_sub-51_slab.nii.gz"
    sitk.WriteImage(roi, str(path), useCompression=True)
    return path


def head() -> Path:
    img = sitk.ReadImage(str(CACHE / "openfmri_ds011_foerde" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    size = [int(round(n * s / 2.0)) for n, s in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    res = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        (2.0, 2.0, 2.0), img.GetDirection(), 0.0, sitk.sitkFloat32)
    res = sitk.Cast(sitk.Round(res), sitk.sitkInt16)
    path = OUT / "real_t1_head_ds011_sub-01_2mm.nii.gz"
    sitk.WriteImage(res, str(path), useCompression=True)
    return path


if __name__ == "__main__":
    for p in (slab(), head()):
        im = sitk.ReadImage(str(p))
        print(p.name, im.GetSize(), [round(s, 3) for s in im.GetSpacing()], f"{p.stat().st_size / 1e3:.0f} kB")
