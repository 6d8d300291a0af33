"""``medvae batch``: a cohort in, one output per volume at the same relative path, a manifest that
survives kills, re-runs that skip finished files, one bad file that never stops the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_medvae.batch import find_volumes, labels_rel, read_manifest, run_batch
from napari_medvae.cli import main
from napari_medvae.io import read_volume, write_volume


def _cohort(root: Path, read, n_good: int = 3, bad: bool = True, depth: int = 16) -> list[str]:
    """Small crops of the healthy sample in several formats and a subfolder (+ a corrupt file)."""
    vol, geo = read("mni_t1_healthy.nii.gz")
    names = ["a.nii.gz", "sub/b.nrrd", "sub/deeper/c.mha", "d.nii", "sub/e.nii.gz", "f.nii.gz"][:n_good]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        z0 = 30 + 4 * i
        write_volume(root / name, vol[z0 : z0 + depth, 20:100, 15:85], geo)
    if bad:
        (root / "bad.nii.gz").write_bytes(np.random.default_rng(0).bytes(3000))
        names.append("bad.nii.gz")
    return sorted(names)


def _tree(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def _stray(d: Path) -> list[str]:
    return [p for p in _tree(d) if any(part.startswith(".") for part in p.split("/")) or ".tmp" in p]


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]  # every line complete


def test_batch_cohort_writes_same_relative_paths_records_errors_and_reruns_skip(tmp_path, read, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    names = _cohort(src, read)
    good = [n for n in names if n != "bad.nii.gz"]
    assert main(["batch", "denoise", str(src), "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "1 of 4 file(s) failed" in err and "bad.nii.gz" in err
    assert _tree(out) == sorted(good + ["manifest.jsonl"])
    for n in good:  # same grid and dtype as the input
        a, ga = read_volume(src / n)
        b, gb = read_volume(out / n)
        assert b.shape == a.shape and b.dtype == a.dtype and np.allclose(gb.spacing, ga.spacing)
    rows = {r["input"]: r for r in _lines(out)}
    assert sorted(rows) == names
    assert all(rows[n]["status"] == "ok" and rows[n]["output"] == n and rows[n]["error"] is None for n in good)
    assert rows["bad.nii.gz"]["status"] == "error" and "bad.nii.gz" in rows["bad.nii.gz"]["error"]
    assert all(r["seconds"] >= 0 and r["operation"] == "denoise" for r in rows.values())

    mtimes = {n: (out / n).stat().st_mtime_ns for n in good}
    assert main(["batch", "denoise", str(src), "-o", str(out), "--device", "cpu", "-q"]) == 1  # bad file retried
    assert {n: (out / n).stat().st_mtime_ns for n in good} == mtimes
    second = _lines(out)[len(names):]
    assert {r["input"]: r["status"] for r in second} == {**{n: "skipped" for n in good}, "bad.nii.gz": "error"}
    assert not _stray(out)

    (src / "bad.nii.gz").unlink()  # the cohort fixed: all done, exit 0
    assert main(["batch", "denoise", str(src), "-o", str(out), "--device", "cpu", "-q"]) == 0


def test_batch_anomaly_writes_labels_and_summary(tmp_path, read):
    src, out = tmp_path / "in", tmp_path / "out"
    vol, geo = read("mni_t1_lesion.nii.gz")
    (src / "s").mkdir(parents=True)
    write_volume(src / "s" / "lesion.nii.gz", vol[30:62, 10:110, 10:90], geo)
    summary = run_batch("anomaly", src, out, device="cpu", options={"labels": True})
    assert summary["ok"] == 1 and summary["error"] == 0
    assert _tree(out) == ["manifest.jsonl", "s/lesion.nii.gz", "s/lesion_labels.nii.gz"]
    (row,) = read_manifest(out)
    assert row["labels"] == "s/lesion_labels.nii.gz" == labels_rel("s/lesion.nii.gz")
    heat, _ = read_volume(out / "s" / "lesion.nii.gz")
    labels, _ = read_volume(out / "s" / "lesion_labels.nii.gz")
    assert row["max_score"] == pytest.approx(float(heat.max()), abs=1e-3)
    assert row["n_candidates"] == len(np.unique(labels[labels > 0]))
    assert (row["largest_candidate_mm3"] > 0) == (row["n_candidates"] > 0)
    assert 1 <= row["n_above_healthy"] <= row["n_candidates"]  # the lesion peaks above the healthy maximum
    assert 0.5 < row["residual_ratio"] < 2.0 and "warnings" not in row  # a (cropped) T1 brain: no warning


def test_batch_inpaint_auto_fills_blank_slices_and_skips_complete_volumes(tmp_path, read):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    gap, geo = read("mni_t1_missing.nii.gz")
    healthy, _ = read("mni_t1_healthy.nii.gz")
    write_volume(src / "gap.nii.gz", gap[30:62, 10:110, 10:90], geo)
    write_volume(src / "full.nii.gz", healthy[30:46, 20:100, 15:85], geo)
    s = run_batch("inpaint", src, out, device="cpu", options={"missing_slices": "auto"})
    assert s["ok"] + s["skipped"] == 2 and s["error"] == 0
    rows = {r["input"]: r for r in read_manifest(out)}
    assert rows["full.nii.gz"]["status"] == "skipped" and "nothing to inpaint" in rows["full.nii.gz"]["reason"]
    gap_rows = rows["gap.nii.gz"]
    assert gap_rows["status"] == "ok" and gap_rows["missing_slices"] == [14, 15, 16, 30]  # the sample's blank slices
    filled, _ = read_volume(out / "gap.nii.gz")
    assert all(filled[k].max() > 0 for k in gap_rows["missing_slices"]) and not (out / "full.nii.gz").exists()
    # a mask folder without this volume's mask: recorded, not fatal
    masks = tmp_path / "masks"
    masks.mkdir()
    s = run_batch("inpaint", src, tmp_path / "out2", device="cpu", options={"mask_dir": str(masks)})
    assert s["error"] == 2 and all("no mask" in r["error"] for r in read_manifest(tmp_path / "out2"))


def test_batch_inpaint_masks_with_and_without_the_mirror_image(tmp_path, read, monkeypatch):
    from napari_medvae.engine.classical import kriging

    calls = []
    real = kriging.mirror_image
    monkeypatch.setattr(kriging, "mirror_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    src, masks = tmp_path / "in", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    vol, geo = read("mni_t1_healthy.nii.gz")
    write_volume(src / "a.nii.gz", vol, geo)
    mask = np.zeros(vol.shape, np.uint8)
    mask[40:44, 50:56, 40:46] = 1
    write_volume(masks / "a.nii.gz", mask, geo)
    assert run_batch("inpaint", src, tmp_path / "o1", device="cpu", options={"mask_dir": str(masks)})["ok"] == 1
    assert len(calls) == 1
    s = run_batch("inpaint", src, tmp_path / "o2", device="cpu", options={"mask_dir": str(masks), "no_symmetry": True})
    assert s["ok"] == 1 and len(calls) == 1
    filled, _ = read_volume(tmp_path / "o2" / "a.nii.gz")
    keep = mask == 0
    np.testing.assert_array_equal(filled[keep], vol[keep])


@pytest.mark.parametrize("argv", [
    ["inpaint"],  # neither --missing-slices auto nor --mask-dir
    ["inpaint", "--missing-slices", "3,4"],
    ["inpaint", "--missing-slices", "auto", "--no-symmetry"],  # the mirror option is for painted masks only
    ["anomaly", "--samples", "3"],
    ["denoise", "--labels"],
    ["reconstruct", "--axis", "5"],
    ["reconstruct", "--axis", "sideways"],
])
def test_batch_bad_arguments_exit_2_and_write_nothing(tmp_path, read, capsys, argv):
    src, out = tmp_path / "in", tmp_path / "out"
    _cohort(src, read, n_good=1, bad=False)
    assert main(["batch", argv[0], str(src), "-o", str(out), *argv[1:]]) == 2
    assert capsys.readouterr().err.startswith("medvae: error: ")
    assert not out.exists()


def test_batch_bad_folders_exit_2(tmp_path, read, capsys):
    src = tmp_path / "in"
    _cohort(src, read, n_good=1, bad=False)
    (tmp_path / "empty").mkdir()
    assert main(["batch", "denoise", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert main(["batch", "denoise", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert main(["batch", "denoise", str(src), "-o", str(src)]) == 2
    assert main(["batch", "denoise", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no.safetensors")]) == 2
    assert not (tmp_path / "o").exists()
    assert capsys.readouterr().err.count("medvae: error: ") == 4


def test_find_volumes_walks_subfolders_dicom_folders_and_skips_hidden_and_output(tmp_path):
    (tmp_path / "p1" / "series").mkdir(parents=True)
    (tmp_path / "p1" / "t1.nrrd").write_bytes(b"x")
    (tmp_path / "p1" / ".t1.tmp-1234.nrrd").write_bytes(b"x")
    (tmp_path / "p1" / "notes.txt").write_text("x")
    for i in range(3):  # DICOM files without extension: recognised by the 'DICM' preamble
        (tmp_path / "p1" / "series" / f"IM{i}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.nii.gz").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.nii.gz").write_bytes(b"x")
    (tmp_path / "a.MHA").write_bytes(b"x")
    items = find_volumes(tmp_path, exclude=tmp_path / "out")
    assert [(it.rel, it.out_rel) for it in items] == [
        ("a.MHA", "a.MHA"), ("p1/series", "p1/series.nii.gz"), ("p1/t1.nrrd", "p1/t1.nrrd")]


def test_batch_ranks_split_the_cohort_and_a_rerun_reads_every_part(tmp_path, read, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    names = _cohort(src, read, n_good=3, bad=False)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        s = run_batch("reconstruct", src, out, device="cpu")
        assert s["manifest"].endswith(f"manifest.rank{rank}.jsonl") and s["error"] == 0
        part = [json.loads(x) for x in (out / f"manifest.rank{rank}.jsonl").read_text().splitlines()]
        assert [r["input"] for r in part] == names[rank::2] and {r["rank"] for r in part} == {rank}
        seen += [r["input"] for r in part]
    assert sorted(seen) == names
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    s = run_batch("reconstruct", src, out, device="cpu")  # one process now: everything already done
    assert s["skipped"] == len(names) and s["ok"] == 0


@pytest.mark.slow
def test_batch_killed_midway_resumes_without_recomputing(tmp_path, read):
    src, out = tmp_path / "in", tmp_path / "out"
    names = _cohort(src, read, n_good=6, bad=False, depth=40)
    cmd = [sys.executable, "-m", "napari_medvae.cli", "batch", "reconstruct", str(src), "-o", str(out),
           "--device", "cpu", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:  # wait for the first finished file
            if manifest.exists() and '"ok"' in manifest.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"batch ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    done = {r["input"] for r in read_manifest(out) if r["status"] == "ok"}
    assert done and len(done) < len(names), "the kill should land midway"
    mtimes = {n: (out / n).stat().st_mtime_ns for n in done}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in done} == mtimes  # finished outputs not recomputed
    assert not _stray(out)  # no temporary or half-written files
    assert _tree(out) == sorted(names + ["manifest.jsonl"])
    rows = _lines(out)  # every line parses: nothing half-written there either
    for n in names:
        mine = [r for r in rows if r["input"] == n]
        assert [r["status"] for r in mine].count("ok") == 1
        assert mine[-1]["status"] in ("ok", "skipped")
        assert (mine[-1]["status"] == "skipped") == (n in done)
        read_volume(out / n)


def test_batch_axis_by_anatomical_name_equals_the_file_axis(tmp_path, read):
    src = tmp_path / "in"
    _cohort(src, read, n_good=1, bad=False)
    a = run_batch("reconstruct", src, tmp_path / "a", device="cpu", options={"axis": "axial"})
    b = run_batch("reconstruct", src, tmp_path / "b", device="cpu", options={"axis": 2})
    assert a["ok"] == b["ok"] == 1
    np.testing.assert_array_equal(read_volume(tmp_path / "a" / "a.nii.gz")[0], read_volume(tmp_path / "b" / "a.nii.gz")[0])


def test_batch_does_not_import_the_cli():
    """cli -> batch only (medvae batch): batch's shared helpers live in output_dtype, results and slices."""
    import ast

    import napari_medvae.batch as batch_module

    tree = ast.parse(Path(batch_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and (m == "cli" or m.endswith(".cli"))}, imported
    res = subprocess.run([sys.executable, "-c", "import sys, napari_medvae.batch; print('napari_medvae.cli' in sys.modules)"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-2000:]
