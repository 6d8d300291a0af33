"""Widgets on a real head with skull (sample_data/real_t1_head_ds011_sub-01_2mm.nii.gz, PDDL): skull stripping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import assert_same_grid, dock, open_volume, wait_layer

pytestmark = [pytest.mark.napari, pytest.mark.slow]
HEAD = Path(__file__).resolve().parents[1] / "sample_data" / "real_t1_head_ds011_sub-01_2mm.nii.gz"


def test_reconstruct_on_a_head_runs_on_the_brain_and_shows_the_mask(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    src = open_volume(viewer, HEAD)
    before = np.array(src.data, copy=True)
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    assert w.skull.currentText() == "auto"
    w.reconstruct_btn.click()
    rec = wait_layer(qtbot, viewer, f"{src.name} reconstruction", w.job)
    brain = viewer.layers[f"{src.name} brain"]
    assert_same_grid(rec, src)
    mask = np.asarray(brain.data) > 0
    assert 1000 < mask.sum() * 8 / 1000 < 1900  # ml at 2 mm: an adult brain, not the ~3 l head
    np.testing.assert_array_equal(np.asarray(rec.data)[~mask], before[~mask])  # scalp and skull as they were
    assert not np.array_equal(np.asarray(rec.data)[mask], before[mask])
    np.testing.assert_array_equal(src.data, before)


def test_skull_stripping_never_leaves_the_head_whole(make_napari_viewer, qtbot):
    from napari_medvae.widgets import _common

    viewer = make_napari_viewer()
    src = open_volume(viewer, HEAD)
    w = dock(viewer, "Reconstruct & Denoise")
    w.source.setCurrentText(src.name)
    w.skull.setCurrentText("never")
    _common.set_force(True)  # a whole head is unlike the skull-stripped training brains: 'Run on unusual volumes'
    try:
        w.reconstruct_btn.click()
        wait_layer(qtbot, viewer, f"{src.name} reconstruction", w.job)
    finally:
        _common.set_force(False)
    assert f"{src.name} brain" not in viewer.layers


def test_anomaly_on_a_head_scores_the_brain_only(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    src = open_volume(viewer, HEAD)
    w = dock(viewer, "Anomaly review")
    w.source.setCurrentText(src.name)
    w.run_btn.click()
    heat = wait_layer(qtbot, viewer, f"{src.name} anomaly", w.job)
    mask = np.asarray(viewer.layers[f"{src.name} brain"].data) > 0
    cand = viewer.layers[f"{src.name} candidates"]
    assert not (np.asarray(heat.data)[~mask] > 0).any()  # scalp, muscle, orbits, neck: no score
    assert not (np.asarray(cand.data)[~mask] > 0).any()
