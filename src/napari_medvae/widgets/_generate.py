"""Generate dock widget: new volumes decoded from the model's prior, as one stacked layer."""

from __future__ import annotations

from qtpy.QtWidgets import QFormLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ._common import JobBar, get_model


class GenerateWidget(QWidget):
    """Draw N synthetic volumes from the prior (model grid spacing) into a layer `medvae samples` (N, z, y, x)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.n = QSpinBox()
        self.n.setRange(1, 16)
        self.n.setValue(2)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.btn = QPushButton("Generate")
        self.job = JobBar()
        self.job.lock(self.btn)
        form = QFormLayout()
        form.addRow("Volumes", self.n)
        form.addRow("Seed", self.seed)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.btn)
        lay.addWidget(self.job)
        lay.addStretch()
        self.btn.clicked.connect(self.run)

    def run(self) -> None:
        n, seed = self.n.value(), self.seed.value()

        def job(progress, cancel):
            from ..engine import sample

            model = get_model()
            sp = model.config.spacing_mm
            return sample(model, n, seed=seed, progress=progress, cancel=cancel), (model.config.slice_spacing_mm, sp, sp)

        def done(res):
            vols, spacing = res
            self.viewer.add_image(vols, name=f"medvae samples (seed {seed})", scale=(1.0, *spacing), colormap="gray")

        self.job.start("generate", job, done)
