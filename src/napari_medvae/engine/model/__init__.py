"""A model: its networks (``networks``), safetensors + JSON checkpoints (``checkpoint``), a loaded model on a device
(``loader``) and its model card (``card``). Inference and training build on this package; it imports neither."""
