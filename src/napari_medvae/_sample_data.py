"""npe2 sample data (File > Open Sample > MedVAE): two real T1 scans, then the synthetic MNI152-derived volumes."""

from __future__ import annotations


def _load(name: str, layer_name: str) -> list[tuple]:
    from .demo import sample_data_dir
    from .io import read_volume

    arr, geo = read_volume(sample_data_dir() / name)
    kwargs = geo.napari_kwargs()
    kwargs["name"] = layer_name
    return [(arr, kwargs, "image")]


def healthy() -> list[tuple]:
    """A healthy synthetic T1 subject (2 mm)."""
    return _load("mni_t1_healthy.nii.gz", "mni_t1_healthy")


def lesion() -> list[tuple]:
    """A T1 subject with a hyper- and a hypo-intense synthetic lesion, plus the lesion labels."""
    img = _load("mni_t1_lesion.nii.gz", "mni_t1_lesion")
    from .demo import sample_data_dir
    from .io import read_volume

    lab, geo = read_volume(sample_data_dir() / "mni_t1_lesion_mask.nii.gz")
    kwargs = geo.napari_kwargs()
    kwargs.update(name="mni_t1_lesion truth", visible=False)
    return img + [(lab.astype("int32"), kwargs, "labels")]


def missing() -> list[tuple]:
    """A T1 subject with blank axial slices (30, 44-46, 60)."""
    return _load("mni_t1_missing.nii.gz", "mni_t1_missing")


def noisy() -> list[tuple]:
    """A T1 subject with 5 % Rician noise."""
    return _load("mni_t1_noisy.nii.gz", "mni_t1_noisy")


def real_brain() -> list[tuple]:
    """40 axial slices of a real skull-stripped T1 (ds002748 sub-51, a validation subject), native 0.87 mm."""
    return _load("real_t1_ds002748_sub-51_slab.nii.gz", "real_t1_ds002748_sub-51_slab")


def real_head() -> list[tuple]:
    """A real T1 head with skull (ds011 sub-01, defaced), resampled to 2 mm: for the skull-stripping path."""
    return _load("real_t1_head_ds011_sub-01_2mm.nii.gz", "real_t1_head_ds011_sub-01_2mm")
