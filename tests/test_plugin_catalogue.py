"""napari cases of the bad-input catalogue (tests/test_catalogue.py lists them in CASES and docs/safety.md).

Jobs are slowed down deterministically (a short sleep per batch of slices) so that the second job, the
layer deletion and the viewer closing happen while the network runs.
"""

from __future__ import annotations

import time

import pytest
from plugin_helpers import TIMEOUT_MS, Notifications, dock, open_volume

pytestmark = pytest.mark.napari


def _start_reconstruct(viewer, qtbot, sample_dir):
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    w.reconstruct_btn.click()
    qtbot.waitUntil(lambda: w.job.state[0] > 0, timeout=TIMEOUT_MS)  # the network is running
    return src, w


def test_second_job_is_refused_while_one_runs(make_napari_viewer, qtbot, sample_dir, slow_forward):
    viewer = make_napari_viewer()
    note = Notifications()
    try:
        src, w = _start_reconstruct(viewer, qtbot, sample_dir)
        assert not w.reconstruct_btn.isEnabled() and not w.denoise_btn.isEnabled()
        w.denoise_btn.click()  # disabled: nothing happens
        w.run("denoised")  # started anyway (e.g. from a script): refused with a notification
        assert any("already running" in m for m in note.messages)
        qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT_MS)
    finally:
        note.close()
    assert [layer.name for layer in viewer.layers] == [src.name, f"{src.name} reconstruction"]
    assert w.reconstruct_btn.isEnabled() and w.denoise_btn.isEnabled()


def test_deleting_the_source_layer_cancels_its_job(make_napari_viewer, qtbot, sample_dir, slow_forward):
    viewer = make_napari_viewer()
    note = Notifications()
    try:
        src, w = _start_reconstruct(viewer, qtbot, sample_dir)
        t0 = time.perf_counter()
        viewer.layers.remove(src)
        qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT_MS)
        stopped = time.perf_counter() - t0
        qtbot.wait(200)  # let queued notifications arrive
    finally:
        note.close()
    assert stopped < 5.0, f"the job ran on for {stopped:.1f} s"
    assert len(viewer.layers) == 0, "no orphan result layer"
    assert any("was removed" in m and src.name in m for m in note.messages), note.messages
    assert w.reconstruct_btn.isEnabled()


def test_closing_the_viewer_cancels_the_job(make_napari_viewer, qtbot, sample_dir, slow_forward):
    viewer = make_napari_viewer()
    note = Notifications()
    try:
        src, w = _start_reconstruct(viewer, qtbot, sample_dir)
        job = w.job
        t0 = time.perf_counter()
        viewer.close()
        qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT_MS)
        stopped = time.perf_counter() - t0
        qtbot.wait(200)
    finally:
        note.close()
    assert stopped < 5.0, f"the job ran on for {stopped:.1f} s after the viewer closed"
    assert job.cancelled
    assert not any("unexpected error" in m for m in note.messages), note.messages


def test_out_of_memory_warns_and_still_adds_the_layer(make_napari_viewer, qtbot, sample_dir, monkeypatch):
    import torch

    import napari_medvae.engine.ops.runner as runner

    real = runner._forward

    def forward(model, x, *args, **kw):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, x, *args, **kw)

    monkeypatch.setattr(runner, "_forward", forward)
    viewer = make_napari_viewer()
    note = Notifications()
    try:
        src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
        w = dock(viewer, "Reconstruct & Denoise")
        w.source.setCurrentText(src.name)
        w.reconstruct_btn.click()
        qtbot.waitUntil(lambda: f"{src.name} reconstruction" in viewer.layers and not w.job.running,
                        timeout=TIMEOUT_MS)
        qtbot.wait(200)
    finally:
        note.close()
    oom = [m for m in note.messages if "out of memory" in m]
    assert oom == ["medvae: out of memory on cpu; retrying with 4 slices per batch",
                   "medvae: out of memory on cpu; retrying with 2 slices per batch"], note.messages
