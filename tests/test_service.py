"""The operations layer (``napari_medvae.service``): requests checked once, one model cache, one volume walk, results
that render themselves, and ``run`` / ``run_file`` agreeing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medvae import service
from napari_medvae.errors import InputError
from napari_medvae.io import Geometry, read_volume, write_volume


@pytest.mark.parametrize("make, msg", [
    (lambda: service.UncertaintyRequest(samples=1), "samples must be an integer from 2 to 64, not 1"),
    (lambda: service.UncertaintyRequest(samples=65), "from 2 to 64"),
    (lambda: service.AnomalyRequest(uncertainty_samples=1), "from 2 to 64"),
    (lambda: service.AnomalyRequest(threshold=0.0), "threshold must be a positive number"),
    (lambda: service.SampleRequest(n=0), "number of samples must be an integer from 1 to 64"),
    (lambda: service.ReconstructRequest(skull_strip="sometimes"), "auto, always, never"),
    (lambda: service.DenoiseRequest(axis=3), "0, 1 or 2"),
    (lambda: service.InpaintRequest(missing_slices="some"), "slice numbers or 'auto'"),
    (lambda: service.InpaintRequest(missing_slices=(3, 4), symmetry=False), "--no-symmetry applies to painted masks"),
])
def test_requests_refuse_bad_options_when_made(make, msg):
    with pytest.raises(InputError, match=msg):
        make()


def test_requests_are_frozen_and_typed():
    req = service.InpaintRequest(missing_slices=[5, 4])
    assert req.missing_slices == (5, 4) and req.operation == "inpaint"
    with pytest.raises(AttributeError):
        req.symmetry = False  # type: ignore[misc]


def test_skull_modes_match_the_engine():
    from napari_medvae.engine.prep.skullstrip import SKULL_MODES

    assert service.SKULL_MODES == SKULL_MODES


def test_batch_refuses_one_uncertainty_sample_before_writing(tmp_path, sample_dir):
    """One rule for --samples (2-64) in the CLI, batch and the engine; batch used to accept 1."""
    from napari_medvae.cli import main

    (tmp_path / "in").mkdir()
    write_volume(tmp_path / "in" / "a.nii.gz", np.ones((8, 8, 8), np.float32), Geometry.identity())
    assert main(["batch", "uncertainty", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--samples", "1"]) == 2
    assert not (tmp_path / "out").exists()


def test_model_cache_loads_once_per_file_and_device(tmp_path):
    from napari_medvae.engine.model.checkpoint import load_checkpoint, save_checkpoint
    from napari_medvae.engine.model.loader import default_model_path

    service.clear_models()
    a = service.get_model(None, "cpu")
    assert service.get_model(None, "cpu") is a
    assert service.get_model(default_model_path(), "cpu") is a  # the same file, however it is named
    cfg, state = load_checkpoint(default_model_path())
    copy = save_checkpoint(tmp_path / "m", cfg, state)
    b = service.get_model(copy, "cpu")
    assert b is not a and service.get_model(copy, "cpu") is b
    save_checkpoint(tmp_path / "m", cfg, state)  # retrained to the same path: loaded again
    assert service.get_model(copy, "cpu") is not b
    service.clear_models()
    assert service.get_model(None, "cpu") is not a


def test_one_volume_walk_for_batch_training_and_the_model_widget():
    from napari_medvae import batch, cli

    assert batch.find_volumes is service.find_volumes and cli.volume_paths is service.volume_paths
    src = Path(service.__file__).resolve().parents[1]
    for rel in ("cli.py", "batch.py", "widgets/_model.py"):
        text = (src / rel).read_text(encoding="utf-8")
        assert "rglob(" not in text and "os.walk(" not in text, rel


def test_volume_paths_takes_files_and_folders(tmp_path):
    geo = Geometry.identity()
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for p in ("d/b.nii.gz", "d/sub/a.mha", "d/.hidden.nii.gz", "c.nrrd"):
        write_volume(tmp_path / p, np.zeros((4, 4, 4), np.float32), geo)
    got = service.volume_paths([tmp_path / "d", tmp_path / "c.nrrd"])
    assert got == [str(tmp_path / "d" / "b.nii.gz"), str(tmp_path / "d" / "sub" / "a.mha"), str(tmp_path / "c.nrrd")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no volumes"):
        service.volume_paths([tmp_path / "empty"])


def _anomaly_result(healthy_peak: float | None = 2.0) -> service.AnomalyResult:
    heat = np.zeros((4, 4, 4), np.float32)
    heat[1, 1, 1] = 3.0
    cand = {"label": 1, "voxels": 2, "volume_mm3": 16.4, "peak": 3.0, "centroid_voxel_zyx": [1.0, 2.0, 3.0],
            "above_healthy": None if healthy_peak is None else True}
    return service.AnomalyResult(heat, (heat > 1).astype(np.int32), [cand], 1.0, healthy_peak, 1.5, ["w"])


def test_anomaly_result_renders_report_manifest_summary_and_table():
    res = _anomaly_result()
    doc = res.to_json(input="/in.nii.gz", model="m")
    assert doc["candidates"][0]["centroid_voxel_ijk"] == [3.0, 2.0, 1.0] and "centroid_voxel_zyx" not in doc["candidates"][0]
    assert (doc["input"], doc["model"], doc["max_score"], doc["n_candidates"], doc["n_above_healthy"]) == (
        "/in.nii.gz", "m", 3.0, 1, 1)
    assert res.manifest_fields() == {"max_score": 3.0, "n_candidates": 1, "largest_candidate_mm3": 16.4,
                                     "n_above_healthy": 1, "residual_ratio": 1.5, "warnings": ["w"]}
    assert res.summary() == "1 candidate(s) (1 peaking above 2.00, the highest in healthy brains), max score 3.00"
    assert res.table() == [(1, 16, 3.0, 2, "yes")]
    assert res.labels_out().dtype == np.int16
    plain = _anomaly_result(healthy_peak=None)
    assert "n_above_healthy" not in plain.manifest_fields() and plain.table()[0][-1] == "n/a"
    assert plain.summary() == "1 candidate(s), max score 3.00"


def test_inpaint_auto_without_blank_slices_writes_nothing_or_a_copy(tmp_path):
    """Nothing to fill: batch skips (no file), the CLI copies the input; neither loads a model."""
    src = tmp_path / "full.nii.gz"
    vol = np.arange(6 * 8 * 8, dtype=np.int16).reshape(6, 8, 8) + 1
    write_volume(src, vol, Geometry.identity())
    skip = service.run_file(service.InpaintRequest(missing_slices="auto", if_none_blank="skip"), src,
                            tmp_path / "skip.nii.gz")
    assert skip.nothing_to_fill and skip.outputs == () and not (tmp_path / "skip.nii.gz").exists()
    assert skip.where.startswith("axial") or "axis" in skip.where
    copy = service.run_file(service.InpaintRequest(missing_slices="auto"), src, tmp_path / "copy.nii.gz")
    back, _ = read_volume(copy.outputs[0])
    np.testing.assert_array_equal(back, vol)


def test_run_file_is_run_plus_the_input_dtype(tmp_path, sample_dir):
    """run_file reads, runs the same engine call as run, casts to the input's dtype and writes."""
    from napari_medvae.output_dtype import cast_like

    src = sample_dir / "mni_t1_noisy.nii.gz"
    vol, geo = read_volume(src)
    model = service.get_model(None, "cpu")
    request = service.DenoiseRequest(skull_strip="never")
    on_arrays = service.run(request, vol, geo.spacing, model=model)
    on_file = service.run_file(request, src, tmp_path / "d.nii.gz", model=model)
    assert on_file.volume.dtype == vol.dtype == np.int16
    np.testing.assert_array_equal(on_file.volume, cast_like(on_arrays.volume, vol.dtype))
    np.testing.assert_array_equal(read_volume(on_file.outputs[0])[0], on_file.volume)


def test_run_file_keeps_the_nifti_header_of_its_input(tmp_path, monkeypatch):
    """Every file run_file writes from a NIfTI input keeps its header: sform code 4 (MNI space) stays 4, a
    single-volume 4D file stays 4D with its TR, and derived maps say what they are."""
    import nibabel as nib

    from napari_medvae import engine

    aff = np.diag([-1.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(np.random.default_rng(0).integers(1, 200, (8, 9, 10, 1)).astype(np.int16), aff)
    img.header.set_sform(aff, 4)
    img.header["descrip"] = b"T1 in MNI space"
    img.header["pixdim"][4] = 2.0
    src = tmp_path / "mni.nii.gz"
    img.to_filename(str(src))

    copy = service.run_file(service.InpaintRequest(missing_slices="auto"), src, tmp_path / "copy.nii.gz")
    h = nib.load(str(copy.outputs[0])).header
    assert int(h["sform_code"]) == 4 and h.get_data_shape() == (8, 9, 10, 1) and float(h["pixdim"][4]) == 2.0
    # an engine run (reconstruct, stubbed: no model is loaded) writes its image with the input's header too
    monkeypatch.setattr(engine, "reconstruct", lambda model, v, sp, **kw: v.astype(np.float32) + 1)
    res = service.run_file(service.ReconstructRequest(skull_strip="never"), src, tmp_path / "rec.nii.gz", model=object())
    out = nib.load(str(res.outputs[0]))
    assert int(out.header["sform_code"]) == 4 and out.header["descrip"].tobytes().rstrip(b"\0") == b"T1 in MNI space"
    assert out.get_data_dtype() == np.int16  # the input's dtype
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(img.dataobj) + 1)


@pytest.mark.parametrize("shift, words", [(None, "no positive intensities"), (-50.0, "out-of-distribution score 1.00")])
def test_signed_volume_is_refused_without_brain_extraction(monkeypatch, shift, words):
    """A negated T1 head (or CT in HU) is no magnitude MRI: no 'brain extracted' message, no deepbet run, just the
    engine's refusal."""
    from napari_medvae.engine.prep import skullstrip
    from napari_medvae.errors import InputError

    def no_bet(*a, **k):
        raise AssertionError("brain extraction ran on a signed volume")

    monkeypatch.setattr(skullstrip, "extract_brain", no_bet)
    vol = np.zeros((40, 48, 48), np.float32)
    vol[4:36, 6:42, 6:42] = 100.0  # a head-sized box: negated, or shifted like CT's air at -1000
    signed = -vol if shift is None else vol + np.float32(shift)
    said: list[str] = []
    with pytest.raises(InputError, match=words):
        service.run(service.ReconstructRequest(skull_strip="always"), signed, (4.0, 4.0, 4.0),
                    model=service.get_model(None, "cpu"), say=said.append)
    assert said == []
