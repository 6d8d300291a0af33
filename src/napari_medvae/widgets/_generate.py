"""Generate dock widget: new volumes decoded from the model's prior, as one stacked layer placed in view."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFormLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ._common import JobBar, LayerCombo, get_model


class GenerateWidget(QWidget):
    """Draw N synthetic volumes from the prior into a layer `medvae samples (seed S)` (N, z, y, x).

    The volumes keep the model's voxel spacing (mm) and are centred on the world centre of the chosen
    reference image, or, with no reference, on the centre of the current view; the sliders and the camera
    then move to their middle slice, so they are on screen (not at the world origin, off view).
    """

    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self.n = QSpinBox()
        self.n.setRange(1, 16)
        self.n.setValue(2)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.reference = LayerCombo(napari_viewer, Image, allow_none=True)
        self.reference.setToolTip("centre the new volumes on this 3D image; (none) = on the centre of the current view")
        self.btn = QPushButton("Generate")
        self.job = JobBar()
        self.job.lock(self.btn)
        form = QFormLayout()
        form.addRow("Volumes", self.n)
        form.addRow("Seed", self.seed)
        form.addRow("Place on", self.reference)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.btn)
        lay.addWidget(self.job)
        lay.addStretch()
        self.btn.clicked.connect(self.run)

    def run(self) -> None:
        """Generate with the settings chosen now; the reference's centre is recorded at start."""
        from napari.utils.notifications import show_error

        n, seed = self.n.value(), self.seed.value()
        ref = self.reference.layer()
        centre = None
        if ref is not None:
            if ref.ndim < 3:
                show_error(f"medvae: '{ref.name}' is {ref.ndim}D; choose a 3D image to place the volumes on, "
                           "or (none) for the centre of the view")
                return
            centre = layer_centre(ref)

        def job(progress, cancel):
            from ..service import SampleRequest, run

            res = run(SampleRequest(n=n, seed=seed), model=get_model(), progress=progress, cancel=cancel)
            return res.volumes, res.spacing

        def done(res) -> None:
            vols, spacing = res
            at = centre if centre is not None else view_centre(self.viewer)
            translate = np.asarray(at) - (np.asarray(vols.shape[1:]) - 1) / 2 * np.asarray(spacing)
            layer = self.viewer.add_image(vols, name=f"medvae samples (seed {seed})", scale=(1.0, *spacing),
                                          translate=(0.0, *translate), colormap="gray")
            show_middle(self.viewer, layer)

        self.job.start("generate", job, done, viewer=self.viewer)


def layer_centre(layer) -> np.ndarray:
    """World (z, y, x) mm of the centre of a layer's last three array axes (scale, translate and affine)."""
    shape = np.asarray(layer.data.shape[-3:], dtype=float)
    index = np.zeros(layer.ndim)
    index[-3:] = (shape - 1) / 2
    return np.asarray(layer.data_to_world(index), dtype=float)[-3:]


def view_centre(viewer) -> np.ndarray:
    """World (z, y, x) mm the viewer looks at: the slider position, and the camera centre on displayed axes."""
    point = np.asarray(viewer.dims.point, dtype=float)
    if point.size < 3:
        return np.zeros(3)
    displayed = list(viewer.dims.displayed)
    point[displayed] = np.asarray(viewer.camera.center, dtype=float)[-len(displayed):]
    return point[-3:]


def show_middle(viewer, layer) -> None:
    """Fit the view to every layer, then put the sliders and camera on ``layer``'s middle (first volume)."""
    viewer.reset_view()
    centre = np.asarray(layer.data_to_world([0.0, *((np.asarray(layer.data.shape[1:]) - 1) / 2)]), dtype=float)
    offset = viewer.dims.ndim - layer.ndim  # world axes before the layer's own
    for axis in range(layer.ndim):
        viewer.dims.set_point(offset + axis, centre[axis])
    displayed = [d - offset for d in viewer.dims.displayed if d >= offset]
    viewer.camera.center = tuple(centre[displayed])
