"""The operations layer: one typed request, one ``run`` on arrays and one ``run_file`` on files per operation.

``medvae`` (cli), ``medvae batch``, ``medvae demo``, the napari widgets and the benchmarks all go through here, so
each concern lives in one place: loading a model (:func:`get_model`, cached by file and device), finding volumes
(:func:`find_volumes`), checking options (the requests), casting and writing results (:func:`save`), and
rendering anomaly results (:class:`AnomalyResult`). Imports no Qt, napari or torch at module level (torch comes
with the first model or engine call).

Example::

    from napari_medvae import service

    res = service.run_file(service.AnomalyRequest(threshold=1.5), "t1.nii.gz", "heat.nii.gz",
                           report_path="heat.json")
    print(res.summary())
"""

from .models import clear_models, get_model
from .ops import resolve_axis, run, run_file, save, save_json, save_png, symmetry_note
from .requests import (
    SKULL_MODES,
    AnomalyRequest,
    DenoiseRequest,
    InpaintRequest,
    ReconstructRequest,
    Request,
    SampleRequest,
    UncertaintyRequest,
    VolumeRequest,
)
from .results import (
    AnomalyResult,
    InpaintResult,
    SampleResult,
    VolumeResult,
    candidate_row,
    candidate_rows,
    label_volume,
    table_row,
)
from .volumes import DICOM_OUTPUT_EXT, Item, find_volumes, split_ext, volume_paths

__all__ = [
    "DICOM_OUTPUT_EXT",
    "SKULL_MODES",
    "AnomalyRequest",
    "AnomalyResult",
    "DenoiseRequest",
    "InpaintRequest",
    "InpaintResult",
    "Item",
    "ReconstructRequest",
    "Request",
    "SampleRequest",
    "SampleResult",
    "UncertaintyRequest",
    "VolumeRequest",
    "VolumeResult",
    "candidate_row",
    "candidate_rows",
    "clear_models",
    "find_volumes",
    "get_model",
    "label_volume",
    "resolve_axis",
    "run",
    "run_file",
    "save",
    "save_json",
    "save_png",
    "split_ext",
    "symmetry_note",
    "table_row",
    "volume_paths",
]
