"""napari-medvae: VAE-based reconstruction, denoising, inpainting and anomaly maps for 3D medical volumes.

Importing the package is cheap: torch, napari and Qt are only imported by the modules that need them.
"""

__version__ = "0.1.0"
