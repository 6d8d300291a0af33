"""napari dock widgets (Qt). Thin: collect inputs, run the engine in a worker, add result layers."""

from ._anomaly import AnomalyWidget
from ._generate import GenerateWidget
from ._inpaint import InpaintWidget
from ._model import ModelWidget
from ._reconstruct import ReconstructWidget

__all__ = ["AnomalyWidget", "GenerateWidget", "InpaintWidget", "ModelWidget", "ReconstructWidget"]
