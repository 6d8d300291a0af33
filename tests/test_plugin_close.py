"""Closing napari while jobs run exits cleanly (issue: 'WorkerBaseSignals has been deleted', then 'Aborted')."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plugin_helpers import TIMEOUT_MS, Notifications, dock, open_volume

pytestmark = pytest.mark.napari

SCRIPT = Path(__file__).with_name("close_mid_jobs.py")


@pytest.mark.slow
def test_closing_the_viewer_during_every_widgets_job_exits_cleanly(tmp_path):
    # a subprocess, because the crash happened at interpreter exit; it uses pytest-xvfb's display
    env = {**os.environ, "NAPARI_CONFIG": str(tmp_path / "settings.yaml")}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    ended = time.time()
    out, err = proc.stdout, proc.stderr
    print(out)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{out}\n{err[-3000:]}"
    for bad in ("Aborted", "has been deleted", "Traceback", "Implicitly cleaning up"):
        assert bad not in err, f"{bad!r} in stderr:\n{err[-3000:]}"
    assert "phase 1: viewer closed while the model loaded" in out
    running = next(line for line in out.splitlines() if line.startswith("running at close:"))
    for job in ("train", "reconstruct", "denoise", "inpaint", "anomaly+uncertainty", "generate"):
        assert job in running, f"the {job} job had ended before the viewer closed: {running}"
    # exit waited for training to stop and save the model learnt so far
    trained = Path(next(line for line in out.splitlines() if line.startswith("train output:")).split(": ", 1)[1])
    assert trained.with_suffix(".safetensors").exists() and trained.with_suffix(".json").exists()
    closed = float(next(line for line in out.splitlines() if line.startswith("closed at")).split()[2].rstrip(";"))
    print(f"exit took {ended - closed:.1f} s after the close")


def _start_anomaly(viewer, qtbot, sample_dir):
    src = open_volume(viewer, sample_dir / "mni_t1_healthy.nii.gz")
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.run_btn.click()
    qtbot.waitUntil(lambda: w.job.state[0] > 0, timeout=TIMEOUT_MS)  # the network is running
    return w


def test_closing_the_viewer_mid_job_is_quiet(make_napari_viewer, qtbot, sample_dir, slow_forward):
    viewer = make_napari_viewer()
    job = _start_anomaly(viewer, qtbot, sample_dir).job
    note = Notifications()
    try:
        viewer.close()  # removes every layer, then closes the window
        qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT_MS)
        qtbot.wait(200)  # let queued notifications arrive
    finally:
        note.close()
    assert job.cancelled and job.outcome == "cancelled"
    assert note.messages == [], "closing napari is not an error: no 'layer removed' or 'cancelled' pop-ups"


def test_stop_jobs_cancels_and_waits_for_every_running_job(make_napari_viewer, qtbot, sample_dir, slow_forward):
    from napari_medvae.widgets import _common

    viewer = make_napari_viewer()
    w = _start_anomaly(viewer, qtbot, sample_dir)
    assert len(_common._RUNNING) == 1
    t0 = time.perf_counter()
    assert _common.stop_jobs(timeout_s=60)  # what interpreter exit runs
    print(f"stop_jobs returned after {time.perf_counter() - t0:.2f} s")
    assert not _common._RUNNING and w.job.cancelled
    qtbot.waitUntil(lambda: not w.job.running, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["mni_t1_healthy"]
