"""The napari plugin under Xvfb: widgets run each operation, layers keep geometry, sources stay untouched."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.napari

PLUGIN = "napari-medvae"
TIMEOUT = 120_000  # ms


def _open(viewer, sample_dir, name):
    layers = viewer.open(str(sample_dir / name), plugin=PLUGIN)
    return layers[0]


def _dock(viewer, title):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    return widget


def test_manifest_imports_and_validates():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution(PLUGIN)
    for cmd in pm.contributions.commands:
        mod, attr = cmd.python_name.split(":")
        obj = __import__(mod, fromlist=[attr])
        assert hasattr(obj, attr), cmd.python_name
    subprocess.run([sys.executable, "-m", "npe2", "validate", PLUGIN, "--imports"], check=True, timeout=120)


def test_plugin_modules_do_not_import_torch():
    code = ("import sys, napari_medvae._reader, napari_medvae._writer, napari_medvae._sample_data, "
            "napari_medvae.widgets; sys.exit(1 if 'torch' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_reader_keeps_geometry_and_writer_round_trips(make_napari_viewer, sample_dir, tmp_path):
    from napari_medvae.io import read_volume

    viewer = make_napari_viewer()
    layer = _open(viewer, sample_dir, "mni_t1_lesion.nii.gz")
    arr, geo = read_volume(sample_dir / "mni_t1_lesion.nii.gz")
    assert layer.name == "mni_t1_lesion"
    np.testing.assert_allclose(layer.scale, geo.spacing)
    for ext in (".nii.gz", ".nrrd", ".mha"):
        out = tmp_path / f"copy{ext}"
        layer.save(str(out), plugin=PLUGIN)
        arr2, geo2 = read_volume(out)
        np.testing.assert_array_equal(arr2, arr)
        np.testing.assert_allclose(geo2.direction, geo.direction, atol=1e-6)
        np.testing.assert_allclose(geo2.origin, geo.origin, atol=1e-4)
    lab = viewer.add_labels(np.asarray(layer.data > 200, dtype=np.uint8), **{k: v for k, v in geo.napari_kwargs().items()})
    lab.save(str(tmp_path / "lab.nii.gz"), plugin=PLUGIN)
    lab2, _ = read_volume(tmp_path / "lab.nii.gz")
    np.testing.assert_array_equal(lab2, lab.data)


def test_open_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    for key in ("healthy", "lesion", "missing", "noisy"):
        viewer.open_sample(PLUGIN, key)
    assert "mni_t1_lesion" in viewer.layers and "mni_t1_lesion truth" in viewer.layers


def _wait_layer(qtbot, viewer, name):
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=TIMEOUT)
    return viewer.layers[name]


def test_reconstruct_and_denoise_widgets(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = _open(viewer, sample_dir, "mni_t1_noisy.nii.gz")
    before = np.array(src.data, copy=True)
    w = _dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    w.denoise_btn.click()
    assert not w.denoise_btn.isEnabled()  # locked while running
    out = _wait_layer(qtbot, viewer, "mni_t1_noisy denoised")
    qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT)
    w.reconstruct_btn.click()
    rec = _wait_layer(qtbot, viewer, "mni_t1_noisy reconstruction")
    for layer in (out, rec):
        np.testing.assert_allclose(layer.scale, src.scale)
        np.testing.assert_allclose(layer.translate, src.translate)
        np.testing.assert_allclose(layer.affine.affine_matrix, src.affine.affine_matrix)
        assert layer.data.shape == src.data.shape
    np.testing.assert_array_equal(src.data, before)


def test_inpaint_widget_missing_slices_and_mask(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = _open(viewer, sample_dir, "mni_t1_missing.nii.gz")
    before = np.array(src.data, copy=True)
    w = _dock(viewer, "Inpaint")
    w.source.setCurrentText(src.name)
    w.slice_mode.setChecked(True)
    w.slices.setText("auto")
    w.only_filled.setChecked(True)
    w.run_btn.click()
    out = _wait_layer(qtbot, viewer, "mni_t1_missing inpainted")
    assert out.data[30].any() and not out.data[31].any()  # only the filled slices are shown
    np.testing.assert_allclose(out.scale, src.scale)
    qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT)
    viewer.layers.remove(out)
    w.new_mask_btn.click()
    mask = viewer.layers["mni_t1_missing mask"]
    mask.data[40:44, 50:60, 40:50] = 1
    w.mask_mode.setChecked(True)
    w.only_filled.setChecked(False)
    w.run_btn.click()
    out = _wait_layer(qtbot, viewer, "mni_t1_missing inpainted")
    m = mask.data == 0
    np.testing.assert_array_equal(out.data[m], before[m].astype(np.float32))
    np.testing.assert_array_equal(src.data, before)


def test_anomaly_widget_table_threshold_and_jump(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = _open(viewer, sample_dir, "mni_t1_lesion.nii.gz")
    w = _dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.run_btn.click()
    heat = _wait_layer(qtbot, viewer, "mni_t1_lesion anomaly")
    labels = _wait_layer(qtbot, viewer, "mni_t1_lesion candidates")
    assert heat.colormap.name == "inferno" and heat.blending == "additive"
    assert w.table.rowCount() >= 1
    n = w.table.rowCount()
    w.threshold.setValue(5.0)
    assert w.table.rowCount() <= n and labels.data.max() == w.table.rowCount()
    w.threshold.setValue(1.0)
    w.jump_to(0)
    c = w.candidates[0]["centroid_voxel_zyx"]
    world = heat.data_to_world(c)
    np.testing.assert_allclose(viewer.dims.point[0], world[0], atol=heat.scale[0])


def test_generate_and_model_widgets(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    m = _dock(viewer, "Model")
    m.device.setCurrentText("cpu")
    m.load_btn.click()
    qtbot.waitUntil(lambda: "medvae-default" in m.card.text(), timeout=TIMEOUT)
    assert "cpu" in m.device_label.text()
    g = _dock(viewer, "Generate")
    g.n.setValue(1)
    g.btn.click()
    qtbot.waitUntil(lambda: any(layer.name.startswith("medvae samples") for layer in viewer.layers), timeout=TIMEOUT)


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, sample_dir):
    viewer = make_napari_viewer()
    src = _open(viewer, sample_dir, "mni_t1_healthy.nii.gz")
    w = _dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.uncertainty.setChecked(True)  # long job: anomaly + 8 posterior passes
    w.run_btn.click()
    w.job.cancel()
    qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["mni_t1_healthy"]
    assert w.run_btn.isEnabled()


def test_bad_input_gives_notification_not_layer(make_napari_viewer, qtbot, monkeypatch):
    import napari_medvae.widgets._common as common

    shown = []
    monkeypatch.setattr(common, "notify_error", lambda exc: shown.append(str(exc)))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="flat")
    w = _dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText("flat")
    w.reconstruct_btn.click()
    qtbot.waitUntil(lambda: bool(shown), timeout=TIMEOUT)
    assert "2D" in shown[0] and [layer.name for layer in viewer.layers] == ["flat"]
