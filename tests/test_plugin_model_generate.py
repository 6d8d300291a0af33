"""Model widget (load, device label, card, fine-tune with Stop) and Generate widget."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import TIMEOUT_MS, dock, open_volume
from qtpy.QtCore import Qt

from napari_medvae.widgets import _common

pytestmark = pytest.mark.napari


def test_model_widget_shows_card_and_device(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    m.device.setCurrentText("cpu")
    m.load_btn.click()
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    assert "name:" in m.card.text() and "anomaly threshold" in m.card.text()
    assert m.device_label.text() == "device: cpu" and m.warning.text() == ""
    assert _common.current_model().device.type == "cpu"


def test_auto_device_without_gpu_warns_persistently(make_napari_viewer, qtbot):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: no CPU fallback warning")
    viewer = make_napari_viewer()
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    m.device.setCurrentText("auto")
    m.load_btn.click()
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    assert "CPU" in m.warning.text() and m.warning.isVisibleTo(m)
    assert "requested: auto" in m.device_label.text()


@pytest.mark.slow
def test_fine_tune_on_layers_saves_and_uses_new_model(make_napari_viewer, qtbot, sample_dir, tmp_path):
    viewer = make_napari_viewer()
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    for name in ("mni_t1_healthy.nii.gz", "mni_t1_lesion_truth.nii.gz"):
        open_volume(viewer, sample_dir / name)
    assert m.layers.count() == 2
    for i in range(2):
        m.layers.item(i).setCheckState(Qt.CheckState.Checked)
    m.steps.setValue(2)
    m.out.setText(str(tmp_path / "tuned"))
    m.train_btn.click()
    assert not m.load_btn.isEnabled()
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS * 2)
    assert (tmp_path / "tuned.safetensors").exists() and (tmp_path / "tuned.json").exists()
    assert m.path.text() == str(tmp_path / "tuned.safetensors")
    assert "fine-tuned on mni_t1_healthy, mni_t1_lesion_truth" in m.card.text()
    assert len(m.plot.train) >= 1
    assert str(_common.current_model().path) == str(tmp_path / "tuned.safetensors")
    _common.reset_model()  # the other tests use the shipped model


@pytest.mark.slow
def test_stop_during_training_keeps_and_loads_what_was_learnt(make_napari_viewer, qtbot, sample_dir, tmp_path):
    import json

    viewer = make_napari_viewer()
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    for name in ("mni_t1_healthy.nii.gz", "mni_t1_lesion_truth.nii.gz"):
        open_volume(viewer, sample_dir / name)
        m.layers.item(m.layers.count() - 1).setCheckState(Qt.CheckState.Checked)
    m.steps.setValue(10_000)
    m.out.setText(str(tmp_path / "stopped"))
    m.train_btn.click()
    qtbot.waitUntil(lambda: len(m.plot.train) >= 2, timeout=TIMEOUT_MS * 2)
    m.job.cancel_btn.click()  # "Stop"
    qtbot.waitUntil(lambda: not m.job.running, timeout=TIMEOUT_MS)
    cfg = json.loads((tmp_path / "stopped.json").read_text())
    assert cfg["training"]["stopped_early"] is True
    assert str(_common.current_model().path) == str(tmp_path / "stopped.safetensors")
    _common.reset_model()


def test_generate_adds_a_stack_of_volumes(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    g = dock(viewer, "Generate")
    g.n.setValue(2)
    g.seed.setValue(3)
    g.btn.click()
    qtbot.waitUntil(lambda: "medvae samples (seed 3)" in viewer.layers and not g.job.running, timeout=TIMEOUT_MS)
    layer = viewer.layers["medvae samples (seed 3)"]
    assert layer.data.ndim == 4 and layer.data.shape[0] == 2
    assert np.isfinite(layer.data).all() and layer.data.std() > 0
