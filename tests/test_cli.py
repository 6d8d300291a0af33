"""The ``medvae`` CLI, in process: real files out, same grid as the input, one-line errors, no partial files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_medvae.cli import main, parse_slices
from napari_medvae.io import read_volume

S = "sample_data"


def _same_grid(a, b):
    va, ga = read_volume(a)
    vb, gb = read_volume(b)
    assert va.shape == vb.shape
    np.testing.assert_allclose(ga.spacing, gb.spacing, rtol=1e-6)
    np.testing.assert_allclose(ga.origin, gb.origin, atol=1e-4)
    np.testing.assert_allclose(ga.direction, gb.direction, atol=1e-6)
    return va, vb


@pytest.mark.parametrize("cmd, src, ext", [
    ("reconstruct", "mni_t1_lesion.nii.gz", ".nii.gz"),
    ("denoise", "mni_t1_noisy.nii.gz", ".mha"),
])
def test_volume_commands_write_same_grid(tmp_path, sample_dir, cmd, src, ext):
    out = tmp_path / f"out{ext}"
    assert main([cmd, str(sample_dir / src), "-o", str(out), "-q"]) == 0
    vin, vout = _same_grid(sample_dir / src, out)
    assert vout.dtype == vin.dtype  # integer input -> same integer type


def test_inpaint_missing_slices_auto_and_list(tmp_path, sample_dir, capsys):
    src = sample_dir / "mni_t1_missing.nii.gz"
    out = tmp_path / "auto.nrrd"
    assert main(["inpaint", str(src), "-o", str(out), "--missing-slices", "auto"]) == 0
    assert "30, 44, 45, 46, 60" in capsys.readouterr().out
    vin, vout = _same_grid(src, out)
    assert vout[30].any() and np.array_equal(vout[31], vin[31])
    out2 = tmp_path / "list.nii.gz"
    assert main(["inpaint", str(src), "-o", str(out2), "--missing-slices", "30,44-46,60", "--axis", "2", "-q"]) == 0
    np.testing.assert_array_equal(read_volume(out)[0], read_volume(out2)[0])
    # the same slices written as a user would say them, the axis by its anatomical name
    out3 = tmp_path / "words.nii.gz"
    assert main(["inpaint", str(src), "-o", str(out3), "--missing-slices", "30, 44 to 46, 60", "--axis", "axial",
                 "-q"]) == 0
    np.testing.assert_array_equal(read_volume(out)[0], read_volume(out3)[0])


def test_inpaint_auto_without_blank_slices_copies_the_input(tmp_path, sample_dir, capsys):
    src = sample_dir / "mni_t1_healthy.nii.gz"
    out = tmp_path / "same.nii.gz"
    assert main(["inpaint", str(src), "-o", str(out), "--missing-slices", "auto"]) == 0
    captured = capsys.readouterr()
    assert "no blank slices along axial (file axis 2, napari axis 0): nothing to fill" in captured.out
    assert captured.err == ""
    vin, vout = _same_grid(src, out)
    assert vout.dtype == vin.dtype
    np.testing.assert_array_equal(vout, vin)


def test_inpaint_with_mask(tmp_path, sample_dir):
    src = sample_dir / "mni_t1_lesion.nii.gz"
    mask = sample_dir / "mni_t1_lesion_mask.nii.gz"
    out = tmp_path / "filled.nii.gz"
    assert main(["inpaint", str(src), "-o", str(out), "--mask", str(mask), "-q"]) == 0
    vin, vout = _same_grid(src, out)
    m = read_volume(mask)[0] > 0
    np.testing.assert_array_equal(vin[~m], vout[~m])


def test_inpaint_no_symmetry_skips_the_mirror_image(tmp_path, sample_dir, monkeypatch, capsys):
    from napari_medvae.engine.classical import kriging

    calls = []
    real = kriging.mirror_image
    monkeypatch.setattr(kriging, "mirror_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    src = sample_dir / "mni_t1_lesion.nii.gz"
    mask = sample_dir / "mni_t1_lesion_mask.nii.gz"
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert main(["inpaint", str(src), "-o", str(a), "--mask", str(mask), "-q"]) == 0
    assert len(calls) == 1  # the sample is on the model's 2 mm grid: the region prior and its mirror are used
    assert main(["inpaint", str(src), "-o", str(b), "--mask", str(mask), "--no-symmetry", "-q"]) == 0
    assert len(calls) == 1
    m = read_volume(mask)[0] > 0
    np.testing.assert_array_equal(read_volume(a)[0][~m], read_volume(b)[0][~m])
    # missing slices have no mirror option: refused, nothing written
    c = tmp_path / "c.nii.gz"
    assert main(["inpaint", str(sample_dir / "mni_t1_missing.nii.gz"), "-o", str(c), "--missing-slices", "auto",
                 "--no-symmetry"]) == 2
    assert "--no-symmetry applies to painted masks" in capsys.readouterr().err and not c.exists()


def test_anomaly_writes_heatmap_labels_and_report(tmp_path, sample_dir):
    src = sample_dir / "mni_t1_lesion.nii.gz"
    heat, lab, rep = tmp_path / "h.nii.gz", tmp_path / "l.nii.gz", tmp_path / "r.json"
    assert main(["anomaly", str(src), "-o", str(heat), "--labels", str(lab), "--report", str(rep), "-q"]) == 0
    _, h = _same_grid(src, heat)
    _, labels = _same_grid(src, lab)
    assert h.dtype == np.float32 and labels.max() >= 1
    report = json.loads(rep.read_text())
    c = report["candidates"][0]
    assert {"voxels", "volume_mm3", "peak", "above_healthy", "centroid_voxel_ijk", "centroid_world_xyz_mm"} <= set(c)
    assert c["above_healthy"] and report["healthy_peak"] > 1.0  # the sample's strongest lesion: above any healthy brain
    assert report["n_above_healthy"] == sum(x["above_healthy"] for x in report["candidates"])
    assert report["warnings"] == [] and 0.7 < report["residual_ratio"] < 2.0
    truth = read_volume(sample_dir / "mni_t1_lesion_mask.nii.gz")[0]
    i, j, k = (int(round(v)) for v in c["centroid_voxel_ijk"])
    assert truth[k, j, i] > 0


def test_anomaly_on_another_contrast_warns_but_writes(tmp_path, capsys):
    from napari_medvae.engine.training import synth
    from napari_medvae.io import Geometry, write_volume

    tpl = synth.load_templates(2.0)
    img, _, _ = synth.make_subject(tpl, 9001, contrast="t2")  # a contrast the model never saw
    src, heat, rep = tmp_path / "t2.nii.gz", tmp_path / "h.nii.gz", tmp_path / "r.json"
    write_volume(src, img, Geometry.identity(tpl.spacing))
    assert main(["anomaly", str(src), "-o", str(heat), "--report", str(rep), "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medvae: warning: the model reconstructs this volume")
    report = json.loads(rep.read_text())
    assert report["residual_ratio"] > 2.0 and len(report["warnings"]) == 1 and heat.exists()


def test_anomaly_with_brain_mask(tmp_path, sample_dir):
    out = tmp_path / "h.nii.gz"
    src = sample_dir / "mni_t1_healthy.nii.gz"
    assert main(["anomaly", str(src), "-o", str(out), "--brain-mask", str(sample_dir / "mni_t1_brainmask.nii.gz"), "-q"]) == 0
    h = read_volume(out)[0]
    bm = read_volume(sample_dir / "mni_t1_brainmask.nii.gz")[0]
    assert (h[bm == 0] == 0).all()


def test_uncertainty_sample_info(tmp_path, sample_dir, capsys):
    src = sample_dir / "mni_t1_healthy.nii.gz"
    out = tmp_path / "u.nii.gz"
    assert main(["uncertainty", str(src), "-o", str(out), "--samples", "2", "-q"]) == 0
    _same_grid(src, out)
    assert main(["sample", "-n", "2", "-o", str(tmp_path / "gen"), "-q"]) == 0
    assert len(list((tmp_path / "gen").glob("sample_*.nii.gz"))) == 2
    assert main(["info"]) == 0
    assert "anomaly threshold" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "-q"]) == 0
    names = {p.name for p in out.iterdir()}
    for n in ("lesion_reconstruction.nii.gz", "lesion_anomaly.nii.gz", "noisy_denoised.nii.gz", "missing_inpainted.nii.gz",
              "healthy_inpainted.nii.gz", "healthy_uncertainty.nii.gz", "sample_000.nii.gz", "montage.png", "summary.json"):
        assert n in names
    cands = json.loads((out / "lesion_candidates.json").read_text())  # the rows of medvae anomaly --report
    assert cands and all("centroid_voxel_ijk" in c and "centroid_voxel_zyx" not in c for c in cands)
    m = json.loads((out / "summary.json").read_text())["metrics"]
    # the sample's two lesions peak above every healthy calibration brain; its weaker candidates do not
    assert m["anomaly_candidates_above_healthy_peak"] == 2 <= m["anomaly_candidates"]
    # the painted hole (9 voxels across) is filled by the region prior, better than biharmonic inpainting
    assert m["painted_region_psnr_db"] > m["painted_region_psnr_biharmonic_db"] + 1.0


@pytest.mark.slow
def test_demo_with_the_default_model_runs_on_the_real_slab(tmp_path, default_model):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "real_t1_ds002748_sub-51_slab" in summary["inputs"]
    for n in ("input_lesion", "input_noisy", "input_missing", "input_healthy"):  # what the model was given
        assert (out / f"{n}.nii.gz").exists()
    m = summary["metrics"]
    assert m["reconstruction_psnr_healthy_tissue_db"] > 30
    assert m["denoise_psnr_denoised_db"] > m["denoise_psnr_noisy_db"] + 5
    assert m["missing_slices_psnr_db"] > m["missing_slices_psnr_linear_interpolation_db"] + 2
    assert m["anomaly_peak_in_lesion"] and m["anomaly_residual_ratio"] < 2  # calibrated for this scan


# ---- bad input: one line, exit 2, nothing written -------------------------------------------


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medvae: error: ")
    return err[0]


@pytest.mark.parametrize("args, msg", [
    (["reconstruct", "missing.nii.gz"], "no such file"),
    (["reconstruct", f"{S}/mni_t1_healthy.nii.gz", "--axis", "5"], "axis"),
    (["inpaint", f"{S}/mni_t1_missing.nii.gz", "--missing-slices", "1,x"], "missing-slices"),
    (["inpaint", f"{S}/mni_t1_missing.nii.gz", "--missing-slices", "5,500", "--axis", "2"], "out of range"),
    (["inpaint", f"{S}/mni_t1_missing.nii.gz"], "exactly one"),
    (["inpaint", f"{S}/mni_t1_missing.nii.gz", "--missing-slices", "40 to 30"], "--missing-slices: .*ends before"),
    (["inpaint", f"{S}/mni_t1_missing.nii.gz", "--missing-slices", "5,500", "--axis", "axial"],
     r"500 out of range: axial \(file axis 2, napari axis 0\) has 94 slices"),
    (["reconstruct", f"{S}/mni_t1_healthy.nii.gz", "--axis", "sideways"], "--axis: .*not 'sideways'"),
    (["reconstruct", f"{S}/mni_t1_healthy.nii.gz", "--model", "evil.pt"], "pickle"),
    (["reconstruct", f"{S}/mni_t1_healthy.nii.gz", "--device", "tpu"], "device"),
])
def test_bad_input_one_line_no_output(tmp_path, capsys, args, msg, monkeypatch, sample_dir):
    monkeypatch.chdir(sample_dir.parent)
    out = tmp_path / "o.nii.gz"
    assert main([*args[:2], "-o", str(out), *args[2:]]) == 2
    import re

    assert re.search(msg, _err(capsys))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_input(tmp_path, capsys, sample_dir):
    src = tmp_path / "in.nii.gz"
    shutil.copy(sample_dir / "mni_t1_healthy.nii.gz", src)
    before = src.read_bytes()
    assert main(["denoise", str(src), "-o", str(src)]) == 2
    assert "overwrite" in _err(capsys)
    assert src.read_bytes() == before


def test_mask_on_other_grid(tmp_path, capsys, sample_dir):
    from napari_medvae.io import Geometry, write_volume

    m = tmp_path / "m.nii.gz"
    write_volume(m, np.ones((5, 5, 5), np.uint8), Geometry.identity())
    out = tmp_path / "o.nii.gz"
    assert main(["inpaint", str(sample_dir / "mni_t1_healthy.nii.gz"), "-o", str(out), "--mask", str(m)]) == 2
    assert "shape" in _err(capsys) and not out.exists()


def test_missing_output_dir(tmp_path, capsys, sample_dir):
    assert main(["reconstruct", str(sample_dir / "mni_t1_healthy.nii.gz"), "-o", str(tmp_path / "no" / "o.nii.gz")]) == 2
    _err(capsys)


def test_parse_slices():
    assert parse_slices("40,41, 57") == [40, 41, 57]
    assert parse_slices("3-5,9") == [3, 4, 5, 9]
    assert parse_slices("AUTO") == "auto"


def test_out_of_distribution_needs_force(tmp_path, capsys, sample_dir):
    from napari_medvae.io import write_volume

    vol, geo = read_volume(sample_dir / "mni_t1_healthy.nii.gz")
    src = tmp_path / "ct.nii.gz"
    write_volume(src, vol.astype(np.int16) * 4 - 1000, geo)
    out = tmp_path / "o.nii.gz"
    assert main(["reconstruct", str(src), "-o", str(out)]) == 2
    assert "out-of-distribution" in _err(capsys) and not out.exists()
    assert main(["reconstruct", str(src), "-o", str(out), "--force", "-q"]) == 0 and out.exists()


def test_calibrate_writes_a_new_model(tmp_path, sample_dir, capsys):
    from napari_medvae.engine import load_model

    out = tmp_path / "recal"
    assert main(["calibrate", "--healthy", str(sample_dir / "mni_t1_healthy.nii.gz"), "-o", str(out), "-q"]) == 0
    m = load_model(out.with_suffix(".safetensors"), device="cpu")
    assert m.config.anomaly.threshold > 0 and m.config.intensity_profile["histogram"]
    assert main(["calibrate", "--healthy", str(sample_dir / "mni_t1_noisy_truth.nii.gz"), "-o", str(tmp_path / "x"),
                 "--model", str(out.with_suffix(".safetensors")), "-q"]) == 0
    assert main(["calibrate", str(out.with_suffix(".json")), "--healthy", str(sample_dir / "mni_t1_healthy.nii.gz"),
                 "-o", str(out)]) == 2
    assert "overwrite" in _err(capsys)


def test_calibrate_score_option(tmp_path, sample_dir, capsys):
    from napari_medvae.engine import load_model

    healthy = str(sample_dir / "mni_t1_healthy.nii.gz")
    assert main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "a"), "--score", "healed", "-q"]) == 0
    a = load_model(tmp_path / "a.safetensors", device="cpu").config.anomaly
    assert a.score == "healed" and a.skip_scale > 0 and a.heal_scale > 0
    assert main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "b"), "-q"]) == 0
    assert load_model(tmp_path / "b.safetensors", device="cpu").config.anomaly.score == "heal"  # the default
    with pytest.raises(SystemExit):
        main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "c"), "--score", "fancy"])
    err = capsys.readouterr().err
    assert "invalid choice: 'fancy'" in err and not (tmp_path / "c.safetensors").exists()
    from napari_medvae.engine.model.checkpoint import ANOMALY_SCORES

    listed = err.split("choose from ")[1].split(")")[0].replace("'", "").split(", ")
    assert sorted(listed) == sorted(ANOMALY_SCORES)  # the CLI offers exactly the scores the engine knows


def test_calibrate_heal_flip_option(tmp_path, sample_dir, capsys):
    from napari_medvae.engine import load_model

    healthy = str(sample_dir / "mni_t1_healthy.nii.gz")
    assert main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "on"), "--heal-flip", "-q"]) == 0
    on = tmp_path / "on.safetensors"
    assert load_model(on, device="cpu").config.anomaly.heal_flip is True
    assert main(["calibrate", str(on), "--healthy", healthy, "-o", str(tmp_path / "kept"), "-q"]) == 0
    assert load_model(tmp_path / "kept.safetensors", device="cpu").config.anomaly.heal_flip is True
    assert main(["calibrate", str(on), "--healthy", healthy, "-o", str(tmp_path / "off"), "--no-heal-flip", "-q"]) == 0
    assert load_model(tmp_path / "off.safetensors", device="cpu").config.anomaly.heal_flip is False
    assert main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "x"), "--score", "combined",
                 "--heal-flip"]) == 2
    assert "heal-flip applies" in _err(capsys) and not (tmp_path / "x.safetensors").exists()


def test_calibrate_heal_invert_option(tmp_path, sample_dir, capsys):
    from napari_medvae.engine import load_model

    healthy = str(sample_dir / "mni_t1_healthy.nii.gz")
    assert main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "inv"), "--heal-invert", "0.2", "-q"]) == 0
    assert load_model(tmp_path / "inv.safetensors", device="cpu").config.anomaly.heal_invert == 0.2
    assert main(["calibrate", "--healthy", healthy, "-o", str(tmp_path / "x"), "--heal-invert", "1.5"]) == 2
    assert "at least 0 and below 1, not 1.5" in _err(capsys) and not (tmp_path / "x.safetensors").exists()


def _upsampled_1mm(tmp_path, sample_dir):
    """A crop of the healthy sample on a 1 mm grid (finer than the model's 2 mm) and a small painted mask."""
    from napari_medvae.io import Geometry, write_volume

    vol, geo = read_volume(sample_dir / "mni_t1_healthy.nii.gz")
    crop = vol[30:54, 20:100, 15:85]
    fine = crop.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    g = Geometry(spacing=(1.0, 1.0, 1.0), origin=geo.origin, direction=geo.direction)
    src, mask = tmp_path / "fine.nii.gz", tmp_path / "fine_mask.nii.gz"
    write_volume(src, fine, g)
    m = np.zeros(fine.shape, np.uint8)
    m[20:26, 70:80, 60:70] = 1
    write_volume(mask, m, g)
    return src, mask


def test_no_symmetry_on_a_finer_grid_says_it_changes_nothing(tmp_path, sample_dir, capsys):
    """--no-symmetry only matters where the region prior fills (the model's grid); elsewhere the CLI says so."""
    src, mask = _upsampled_1mm(tmp_path, sample_dir)
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert main(["inpaint", str(src), "-o", str(a), "--mask", str(mask), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["inpaint", str(src), "-o", str(b), "--mask", str(mask), "--no-symmetry", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medvae: note: --no-symmetry changes nothing for this volume")
    assert "not on the model's grid" in err[0]
    np.testing.assert_array_equal(read_volume(a)[0], read_volume(b)[0])  # as the note says


def test_no_symmetry_note_follows_the_engine_rule(model):
    """The CLI's note agrees with the engine: the region prior (and so the mirror image) serves exactly the
    volumes that engine.prep.preprocess.prepare keeps on their grid, with slices at the model's spacing."""
    from napari_medvae.engine.prep.preprocess import prepare
    from napari_medvae.service import symmetry_note as _symmetry_note

    rng = np.random.default_rng(0)
    cfg = model.config
    g, ss = cfg.spacing_mm, cfg.slice_spacing_mm
    # the model's own grid and near it (a real 0.87 mm scan on a 1 mm model keeps its grid), then clearly off it
    near = [(ss, f * g, f * g) for f in (0.87, 1.19, 0.75, 1.25)] + [(ss, 0.87 * g, 1.3 * g)]
    for spacing in [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (2.0, 2.06, 2.06), (2.0, 1.96, 1.96), (3.0, 2.0, 2.0),
                    (1.0, 2.0, 2.0), (2.0, 2.0, 1.0), (2.1, 2.0, 2.0), *near]:
        shape = (36, 40, 38)
        vol = (rng.random(shape) * 100).astype(np.float32)
        prep = prepare(vol, spacing, cfg, None, force=True)
        prior_used = (not prep.resampled and prep.stride == 1
                      and abs(prep.spacing[prep.axis] / cfg.slice_spacing_mm - 1) <= 0.1)
        assert (_symmetry_note(model, shape, spacing, None) is None) == prior_used, spacing


def test_candidate_rows_give_the_file_voxel_order():
    from napari_medvae.service import candidate_rows, label_volume

    rows = candidate_rows([{"label": 1, "voxels": 3, "centroid_voxel_zyx": [4.0, 5.5, 6.25]}])
    assert rows == [{"label": 1, "voxels": 3, "centroid_voxel_ijk": [6.25, 5.5, 4.0]}]
    assert label_volume(np.array([0, 7])).dtype == np.int16
    assert label_volume(np.array([0, 40000])).dtype == np.int32


def test_empty_folder_is_refused_in_one_line(tmp_path, capfd):
    """A folder without DICOM files: one line of our own, no ITK warning printed from C++ before it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reconstruct", str(empty), "-o", str(tmp_path / "o.nii.gz"), "-q"]) != 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medvae: error: no DICOM series found"), err


def test_info_piped_into_a_reader_that_stops_early(tmp_path):
    """`medvae info | head -1`: no BrokenPipe traceback, exit 0."""
    import subprocess
    import sys

    code = "import sys; from napari_medvae.cli import main; sys.exit(main(['info']))"
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.startswith("# Model card") and "Traceback" not in proc.stderr, proc.stderr
