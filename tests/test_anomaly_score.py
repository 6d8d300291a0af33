"""The heal, combined and healed anomaly scores: calibrated scales, older models, bad settings refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_medvae.engine import anomaly, load_model
from napari_medvae.engine.model.checkpoint import AnomalySettings, load_checkpoint
from napari_medvae.engine.model.loader import default_model_path
from napari_medvae.engine.ops.anomaly import RESIDUAL_RATIO_LIMIT, combined_score, ratio_warning
from napari_medvae.engine.prep.preprocess import prepare
from napari_medvae.engine.training.calibrate import calibrate
from napari_medvae.errors import InputError, ModelError


def _copy_model(tmp_path, edit) -> str:
    src = default_model_path()
    dst = tmp_path / "m.safetensors"
    shutil.copy(src, dst)
    cfg = json.loads(src.with_suffix(".json").read_text())
    edit(cfg["anomaly"])
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    return str(dst)


def test_shipped_model_uses_the_calibrated_heal_score(model):
    a = model.config.anomaly
    assert a.score == "heal" and model.net.heal_head is not None
    assert a.heal_scale > 0 and a.threshold > 0 and a.heal_flip is True  # calibrated mirror-averaged
    assert a.skip_scale is None and a.latent_scale is None  # scales the score does not use are not kept


def test_models_calibrated_with_the_healed_score_still_work(tmp_path, read, model):
    """Models of the previous release (the VAE's residuals and the healing residual joined) keep their score."""
    vol, geo = read("mni_t1_lesion.nii.gz")
    lesion, _ = read("mni_t1_lesion_mask.nii.gz")
    v = prepare(vol, geo.spacing, model.config, None).data
    m = load_model(None, device="cpu")
    thr = calibrate(m, [(v, 1)], 0.999, score="healed")
    assert m.config.anomaly.skip_scale > 0 and m.config.anomaly.latent_scale > 0
    m.config.anomaly.threshold = thr
    heal_only = anomaly(model, vol, geo.spacing).heatmap
    both = anomaly(m, vol, geo.spacing).heatmap
    assert both.shape == vol.shape and both[lesion > 0].max() > 1.0
    assert not np.allclose(both, heal_only)  # another score, not the shipped one relabelled


def test_heal_score_is_the_healing_residual_over_its_scale(model, read, monkeypatch):
    from napari_medvae.engine.ops import anomaly as anom

    vol, geo = read("mni_t1_lesion.nii.gz")
    prep = prepare(vol, geo.spacing, model.config, None)
    brain = anom.auto_brain_mask(prep.data)
    skip, lat, h, _ = anom.raw_scores(model, prep.data, brain, anom.Progress(1), "heal")
    assert skip is None and lat is None and h.shape == prep.data.shape
    expect = anom.residual_score(prep.data, anom.heal(model, prep.data), brain, model.config.anomaly.median_size)
    np.testing.assert_allclose(h, expect)
    out = anom.final_score(None, None, h, model.config.anomaly)
    np.testing.assert_allclose(out, h / model.config.anomaly.heal_scale, rtol=1e-6)


def test_combined_score_needs_both_residuals():
    s = AnomalySettings(score="combined", skip_scale=0.1, latent_scale=0.2)
    skip = np.array([0.0, 0.1, 0.1, 0.4], np.float32)
    lat = np.array([0.2, 0.0, 0.2, 0.8], np.float32)
    out = combined_score(skip, lat, s)
    assert out[0] == 0 and out[1] == 0  # unusual in one residual only
    assert np.isclose(out[2], 1.0) and np.isclose(out[3], 4.0)


def test_models_calibrated_with_the_residual_score_still_work(tmp_path, read):
    def old(a):
        a["score"] = "residual"
        for k in ("skip_scale", "latent_scale", "heal_flip", "heal_invert", "brain_quantiles", "heal_margin",
                  "ratio_every"):  # later models
            a.pop(k, None)
        a["threshold"] = 0.14

    m = load_model(_copy_model(tmp_path, old), device="cpu")
    vol, geo = read("mni_t1_lesion.nii.gz")
    lesion, _ = read("mni_t1_lesion_mask.nii.gz")
    heat = anomaly(m, vol, geo.spacing).heatmap
    assert heat.shape == vol.shape and heat[lesion > 0].max() > 1.0


@pytest.mark.parametrize("edit, msg", [
    (lambda a: a.update(score="fancy"), "anomaly.score"),
    (lambda a: a.pop("heal_scale"), "anomaly.heal_scale"),
    (lambda a: a.update(score="combined"), "anomaly.skip_scale"),
    (lambda a: a.update(score="healed", skip_scale=-1.0, latent_scale=0.1), "anomaly.skip_scale"),
    (lambda a: a.update(score="healed", skip_scale=0.1), "anomaly.latent_scale"),
    (lambda a: a.update(healthy_peak=0), "anomaly.healthy_peak"),
    (lambda a: a.update(healthy_peak="high"), "anomaly.healthy_peak"),
    (lambda a: a.update(residual_median=-0.01), "anomaly.residual_median"),
    (lambda a: a.update(heal_margin=-1), "anomaly.heal_margin"),
    (lambda a: a.update(heal_margin=8.5), "anomaly.heal_margin"),
    (lambda a: a.update(ratio_every=0), "anomaly.ratio_every"),
    (lambda a: a.update(ratio_every=True), "anomaly.ratio_every"),
    (lambda a: [a.pop(k, None) for k in ("heal_flip", "heal_invert", "brain_quantiles")]
     and a.update(score="residual", ratio_every=4), "anomaly.ratio_every"),
    (lambda a: a.update(grid_mm=0), "anomaly.grid_mm"),
    (lambda a: a.update(grid_mm=-2.0), "anomaly.grid_mm"),
    (lambda a: a.update(grid_mm="2"), "anomaly.grid_mm"),
    (lambda a: a.update(grid_mm=True), "anomaly.grid_mm"),
    (lambda a: a.update(grid_mm=50.0), "anomaly.grid_mm"),
])
def test_bad_anomaly_settings_are_refused(tmp_path, edit, msg):
    with pytest.raises(ModelError, match=msg):
        load_checkpoint(_copy_model(tmp_path, edit))


def test_calibration_sets_the_scales_and_refuses_unknown_scores(read):
    m = load_model(None, device="cpu")
    vol, geo = read("mni_t1_healthy.nii.gz")
    v = prepare(vol, geo.spacing, m.config, None).data  # as the engine sees it (2 mm: the model's grid)
    thr = calibrate(m, [(v, 1)], 0.999)
    assert thr > 0 and m.config.anomaly.skip_scale > 0 and m.config.anomaly.score == "combined"
    assert m.config.anomaly.heal_scale is None  # the combined score does not use it
    m.config.anomaly.healthy_peak = None
    thr = calibrate(m, [(v, 1)], 0.999, score="heal")
    assert thr > 0 and m.config.anomaly.heal_scale > 0 and m.config.anomaly.skip_scale is None
    # the healthy peak: the highest candidate peak of the calibration volume itself (at least 1)
    m.config.anomaly.threshold = thr
    res = anomaly(m, vol, geo.spacing)
    assert m.config.anomaly.healthy_peak >= 1.0
    assert not any(c["above_healthy"] for c in res.candidates)  # no candidate of the healthy volume is above it
    assert m.config.anomaly.healthy_peak == pytest.approx(max([1.0, *(c["peak"] for c in res.candidates)]), rel=1e-3)
    # the residual median: this volume, scored against its own calibration, has a residual ratio of 1
    assert m.config.anomaly.residual_median > 0 and res.residual_ratio == pytest.approx(1.0, abs=1e-3)
    assert res.warnings == []
    with pytest.raises(InputError, match="anomaly score"):
        calibrate(m, [(v, 1)], 0.999, score="fancy")


def test_thin_slices_are_scored_at_the_model_spacing_and_interpolated(model, read):
    """1 mm slices (stride 2): every other slice is scored and the rest interpolated; the lesion still peaks."""
    vol, geo = read("mni_t1_lesion.nii.gz")
    lesion, _ = read("mni_t1_lesion_mask.nii.gz")
    thin = np.repeat(vol, 2, axis=0)
    les = np.repeat(lesion, 2, axis=0) > 0
    sp = (geo.spacing[0] / 2, *geo.spacing[1:])
    heat = anomaly(model, thin, sp, axis=0).heatmap
    assert heat.shape == thin.shape and np.isfinite(heat).all()
    assert heat[les].max() > 1.0 and heat[les].mean() > 3 * heat[~les].mean()
    # odd slices hold interpolated values between their scored neighbours (inside the brain)
    z = int(np.argwhere(les)[:, 0].mean()) | 1
    inside = heat[z] > 0
    assert inside.any()
    assert np.allclose(heat[z][inside], 0.5 * (heat[z - 1] + heat[z + 1])[inside], rtol=1e-4, atol=1e-5)


def test_automatic_brain_mask_reaches_the_brain_edge():
    """Lesions near the brain's surface must be scored: the automatic mask keeps the boundary rim."""
    from napari_medvae.engine.ops.anomaly import auto_brain_mask

    z, y, x = np.ogrid[:40, :48, :48]
    r = np.sqrt((z - 20.0) ** 2 + (y - 24.0) ** 2 + (x - 24.0) ** 2)
    vol = (r < 15).astype(np.float32)
    vol[(r < 5)] = 0.05  # a dark "ventricle" inside: filled in
    mask = auto_brain_mask(vol)
    assert mask[(r >= 13) & (r < 14.5)].all()  # the outer 2 voxels of the brain
    assert mask[r < 5].all()
    assert not mask[r > 17].any()  # background stays out


def _t2_like():
    from napari_medvae.engine.training import synth

    tpl = synth.load_templates(2.0)
    img, _, _ = synth.make_subject(tpl, 9001, contrast="t2")  # the healthy sample's subject, in a T2-like contrast
    return img, tpl.spacing


def test_volumes_reconstructed_much_worse_than_healthy_ones_get_a_warning(model, read):
    for name in ("mni_t1_lesion.nii.gz", "mni_t1_noisy.nii.gz"):  # lesions and 5 % noise do not move it much
        vol, geo = read(name)
        res = anomaly(model, vol, geo.spacing)
        assert 0.7 < res.residual_ratio < RESIDUAL_RATIO_LIMIT and res.warnings == [], name
    t2, spacing = _t2_like()  # a contrast the VAE never saw
    res = anomaly(model, t2, spacing, force=True)
    assert res.residual_ratio > 2.5
    (w,) = [w for w in res.warnings if "worse" in w]  # the ratio's warning (the intensity check adds "T1 only")
    assert f"{res.residual_ratio:.1f}x worse" in w and "not calibrated" in w
    assert res.heatmap.shape == t2.shape  # the map is still made


def test_ratio_warning_limits_and_models_without_a_residual_median(tmp_path, read):
    assert ratio_warning(None) is None and ratio_warning(RESIDUAL_RATIO_LIMIT) is None
    assert "2.5x worse" in ratio_warning(2.5)
    m = load_model(_copy_model(tmp_path, lambda a: a.pop("residual_median")), device="cpu")
    vol, spacing = _t2_like()
    res = anomaly(m, vol, spacing, force=True)
    assert res.residual_ratio is None and not any("worse" in w for w in res.warnings)  # older calibrations: no ratio


def test_recalibrate_refuses_an_unknown_score_before_reading_anything(tmp_path):
    from napari_medvae.engine.training.calibrate import recalibrate

    with pytest.raises(InputError, match="anomaly score must be one of"):
        recalibrate(str(default_model_path()), [str(tmp_path / "missing.nii.gz")], str(tmp_path / "out"), score="fancy")
    assert not (tmp_path / "out.safetensors").exists()


def test_smooth_residual_on_the_brain_box_equals_filtering_the_whole_volume():
    """smooth_residual filters only the brain's box plus the Gaussian's reach: same values at the brain's voxels."""
    from scipy import ndimage as ndi

    from napari_medvae.engine.ops.anomaly import smooth_residual

    rng = np.random.default_rng(3)
    data = rng.random((30, 40, 50), dtype=np.float32)
    rec = rng.random((30, 40, 50), dtype=np.float32)
    brain = np.zeros(data.shape, bool)
    brain[8:20, 0:15, 20:45] = True  # touches the volume's edge on one side (reflect there, as before)
    whole = np.abs(ndi.gaussian_filter(data, 1.0) - ndi.gaussian_filter(rec, 1.0))[brain]
    np.testing.assert_allclose(smooth_residual(data, rec, brain), whole, rtol=0, atol=1e-6)
    assert smooth_residual(data, rec, np.zeros(data.shape, bool)).size == 0


def test_run_network_every_predicts_only_those_slices(model):
    """every=k: slices whose index is a multiple of k are predicted (as with every=1), the others keep the input."""
    from napari_medvae.engine.ops.runner import Progress, run_network

    rng = np.random.default_rng(4)
    data = np.zeros((9, 48, 48), np.float32)
    data[:, 8:40, 8:40] = 0.3 + 0.4 * rng.random((9, 32, 32), dtype=np.float32)
    full = run_network(model, data, None, 1, Progress(9))
    p = Progress(9)
    part = run_network(model, data, None, 1, p, every=4)
    for z in range(9):
        if z % 4 == 0:
            np.testing.assert_allclose(part[z], full[z], rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(part[z], data[z])
    assert p.done == 9  # skipped slices count as done


def test_calibration_stores_how_the_heal_maps_are_made(read):
    """Calibration writes the healing head's box margin and the residual ratio's slice step into the model, so that
    later maps are scored as the calibration volumes were; older models (neither stored) keep 16 voxels, every slice."""
    from napari_medvae.engine.ops.anomaly import HEAL_MARGIN, RATIO_EVERY

    m = load_model(None, device="cpu")
    if m.net.heal_head is None:
        pytest.skip("the test model has no healing head")
    assert m.config.anomaly.heal_margin is None and m.config.anomaly.ratio_every is None  # synthetic_mni: older
    vol, geo = read("mni_t1_healthy.nii.gz")
    v = prepare(vol, geo.spacing, m.config, None).data
    calibrate(m, [(v, 1)], 0.999, score="heal")
    assert m.config.anomaly.heal_margin == HEAL_MARGIN and m.config.anomaly.ratio_every == RATIO_EVERY
    calibrate(m, [(v, 1)], 0.999, score="combined")
    assert m.config.anomaly.heal_margin is None and m.config.anomaly.ratio_every is None


def test_the_residual_ratio_falls_back_to_every_slice_when_the_subset_misses_the_brain(tmp_path):
    """ratio_every skips slices; a slab whose brain lies only on skipped slices still gets a residual ratio."""
    from napari_medvae.engine.ops import anomaly as anom
    from napari_medvae.engine.ops.runner import Progress

    def heal4(a):
        a["ratio_every"] = 4

    m = load_model(_copy_model(tmp_path, heal4), device="cpu")
    if m.net.heal_head is None:
        pytest.skip("the test model has no healing head")
    rng = np.random.default_rng(5)
    data = np.zeros((8, 64, 64), np.float32)
    data[1:4, 12:52, 12:52] = 0.4 + 0.3 * rng.random((3, 40, 40), dtype=np.float32)
    brain = data > 0.1  # on slices 1-3 only: every 4th slice (0, 4) holds none of it
    *_, smooth = anom.raw_scores(m, data, brain, Progress(8), "heal")
    assert smooth.size == int(brain.sum())


def test_maps_are_made_and_calibrated_on_the_anomaly_grid(tmp_path, read, monkeypatch):
    """anomaly.grid_mm: the map is prepared on that grid (and brought back to the input's), calibration scores its
    volumes' candidates on it; without it, the model's own grid."""
    from napari_medvae.engine.ops import anomaly as anom

    m = load_model(None, device="cpu")
    assert anom.anomaly_config(m.config) is m.config
    m4 = load_model(_copy_model(tmp_path, lambda a: a.update(grid_mm=4.0)), device="cpu")
    cfg4 = anom.anomaly_config(m4.config)
    assert (cfg4.spacing_mm, cfg4.slice_spacing_mm) == (4.0, 4.0) and m4.config.spacing_mm == m.config.spacing_mm
    seen = []
    real_prepare = anom.prepare
    monkeypatch.setattr(anom, "prepare", lambda v, sp, cfg, *a, **k: seen.append(cfg.spacing_mm) or real_prepare(v, sp, cfg, *a, **k))
    vol, geo = read("mni_t1_lesion.nii.gz")
    lesion, _ = read("mni_t1_lesion_mask.nii.gz")
    heat = anomaly(m4, vol, geo.spacing).heatmap
    assert seen == [4.0] and heat.shape == vol.shape
    assert heat[lesion > 0].mean() > heat[(lesion == 0) & (heat > 0)].mean()  # still a lesion map, at 4 mm
    # calibration on the 4 mm grid: its healthy volume, scored against itself, peaks at its own healthy maximum
    h, hg = read("mni_t1_healthy.nii.gz")
    v4 = real_prepare(h, hg.spacing, cfg4, None)
    m4.config.anomaly.threshold = calibrate(m4, [(v4.data, v4.stride)], 0.999, score="heal")
    res = anomaly(m4, h, hg.spacing)
    assert not any(c["above_healthy"] for c in res.candidates)
    assert res.residual_ratio == pytest.approx(1.0, abs=1e-3)


def test_the_healing_head_trains_on_the_anomaly_grid(tmp_path):
    """Training volumes of the healing head are prepared on anomaly.grid_mm's grid (the one its maps are made on)."""
    from conftest import SAMPLE

    from napari_medvae.engine.ops.anomaly import anomaly_config
    from napari_medvae.engine.training.heads import grid_volumes

    m4 = load_model(_copy_model(tmp_path, lambda a: a.update(grid_mm=4.0)), device="cpu")
    path = SAMPLE / "mni_t1_healthy.nii.gz"
    own = grid_volumes(m4, [path])
    coarse = grid_volumes(m4, [path], anomaly_config(m4.config))
    assert len(coarse) == 2 * len(own)  # slices 4 mm apart: two interleaved sub-volumes of the 2 mm volume
    assert coarse[0].shape[1] * 2 == pytest.approx(own[0].shape[1], abs=1)  # half as many rows in-plane


def test_calibration_reads_volumes_on_the_anomaly_grid_and_on_the_models_own(tmp_path):
    """Scores are calibrated on the anomaly grid, the intensity profile on the model's grid (every operation checks it)."""
    from conftest import SAMPLE

    from napari_medvae.engine.training.calibrate import calibration_volumes

    path = [str(SAMPLE / "mni_t1_healthy.nii.gz")]
    m = load_model(None, device="cpu")
    grid, own = calibration_volumes(m, path)
    assert grid is own
    m4 = load_model(_copy_model(tmp_path, lambda a: a.update(grid_mm=4.0)), device="cpu")
    grid4, own4 = calibration_volumes(m4, path)
    assert [v.shape for v, _ in own4] == [v.shape for v, _ in own]
    assert grid4[0][0].shape[1] * 2 == pytest.approx(own4[0][0].shape[1], abs=1) and grid4[0][1] == 2  # 4 mm, stride 2
