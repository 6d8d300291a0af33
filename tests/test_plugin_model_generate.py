"""Model widget (load, device label, card, fine-tune with Stop) and Generate widget."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_helpers import TIMEOUT_MS, Notifications, dock, open_volume
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
    history = json.loads((tmp_path / "stopped.provenance.json").read_text())  # the training history file
    assert history["training"]["stopped_early"] is True
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


def _generate(viewer, qtbot, g, seed: int = 3):
    g.seed.setValue(seed)
    g.btn.click()
    name = f"medvae samples (seed {seed})"
    qtbot.waitUntil(lambda: name in viewer.layers and not g.job.running, timeout=TIMEOUT_MS)
    return viewer.layers[name]


def _world_box(layer) -> tuple[np.ndarray, np.ndarray]:
    """World (z, y, x) mm of a layer's first and last voxel centres (last three axes, no affine)."""
    shape = np.asarray(layer.data.shape[-3:])
    lo = np.asarray(layer.translate[-3:])
    return lo, lo + (shape - 1) * np.asarray(layer.scale[-3:])


def test_generated_volumes_are_centred_on_the_reference_and_on_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)  # screenshots have pixels only on a shown window
    # an all-black reference far from the world origin (MNI-like translate): any bright pixel is a sample
    ref = viewer.add_image(np.zeros((40, 50, 45), np.float32), name="ref", scale=(2.0, 2.0, 2.0),
                           translate=(-72.0, -134.0, -98.0), contrast_limits=(0, 1))
    g = dock(viewer, "Generate")
    g.reference.setCurrentText("ref")
    g.n.setValue(1)
    layer = _generate(viewer, qtbot, g)
    lo, hi = _world_box(layer)
    ref_lo, ref_hi = _world_box(ref)
    np.testing.assert_allclose((lo + hi) / 2, (ref_lo + ref_hi) / 2, atol=max(layer.scale[1:]))
    point = np.asarray(viewer.dims.point[-3:])
    assert np.all(point[0] >= lo[0]) and np.all(point[0] <= hi[0]), "the slider is off the generated volumes"
    centre = np.asarray(viewer.camera.center[-2:])
    assert np.all(centre >= lo[1:]) and np.all(centre <= hi[1:]), "the camera looks away from them"
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].max() > 50, "the canvas is black"


def test_without_reference_volumes_are_centred_on_the_view(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50, 45), np.float32), name="far", scale=(2.0, 2.0, 2.0),
                     translate=(300.0, -400.0, 500.0))
    viewer.reset_view()
    looked_at = np.asarray([viewer.dims.point[0], *viewer.camera.center[-2:]])
    g = dock(viewer, "Generate")
    assert g.reference.currentText() == "(none)"
    g.n.setValue(1)
    layer = _generate(viewer, qtbot, g)
    lo, hi = _world_box(layer)
    np.testing.assert_allclose((lo + hi) / 2, looked_at, atol=max(layer.scale[1:]))


def test_2d_reference_is_refused_with_a_notification(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((50, 45), np.float32), name="flat")
    g = dock(viewer, "Generate")
    g.reference.setCurrentText("flat")
    note = Notifications()
    try:
        g.btn.click()
    finally:
        note.close()
    assert not g.job.running and len(viewer.layers) == 1
    assert len(note.messages) == 1 and "'flat' is 2D" in note.messages[0] and "3D image" in note.messages[0]
