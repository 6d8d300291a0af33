"""The engine: pure torch/numpy, never imports Qt or napari. CLI and widgets call these functions.

Arrays are (z, y, x); spacing is in mm in the same order; ``axis`` is the array axis slices are
taken along (None = the one with the largest spacing, ties -> 0).
"""

from ..errors import Cancelled, InputError, ModelError
from .model.loader import Model, default_model_path, load_model, resolve_device
from .ops.anomaly import AnomalyResult, anomaly, threshold_candidates
from .ops.denoise import denoise
from .ops.inpaint import detect_blank_slices, inpaint
from .ops.reconstruct import reconstruct
from .ops.sample import sample, uncertainty

__all__ = [
    "AnomalyResult",
    "Cancelled",
    "InputError",
    "Model",
    "ModelError",
    "anomaly",
    "default_model_path",
    "denoise",
    "detect_blank_slices",
    "inpaint",
    "load_model",
    "reconstruct",
    "resolve_device",
    "sample",
    "threshold_candidates",
    "uncertainty",
]
