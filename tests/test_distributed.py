"""``torchrun --nproc_per_node 2 ... medvae train`` on CPU (gloo): DDP training on tiny data writes a
loadable model, each rank draws its own samples, and ``--resume`` continues from the saved state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from napari_medvae.engine import load_model
from napari_medvae.io import Geometry, write_volume

TIMEOUT_S = 300


def _torchrun(args: list[str], cwd, command: str = "train", rc: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_medvae.cli", command, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == rc, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _drawn(prefix, rank: int) -> list[dict]:
    return [json.loads(x) for x in open(f"{prefix}.rank{rank}.jsonl", encoding="utf-8").read().splitlines()]


@pytest.mark.slow
def test_torchrun_two_ranks_train_on_cpu_and_resume(tmp_path, read):
    data = tmp_path / "data"
    data.mkdir()
    vol, _ = read("mni_t1_healthy.nii.gz")
    vol = vol[20:44, 20:84, 20:84]  # ~24 x 64 x 64
    for i in range(3):
        write_volume(data / f"v{i}.nii.gz", np.roll(vol, i * 3, axis=2), Geometry.identity((2.0, 2.0, 2.0)))
    out, drawn = tmp_path / "m", tmp_path / "drawn"
    args = [str(data), "-o", str(out), "--steps", "4", "--batch-size", "2", "--crop", "32", "--val-every", "2",
            "--channels", "8", "16", "16", "--latent-channels", "4", "--device", "cpu", "--sample-log", str(drawn)]
    res = _torchrun(args, tmp_path)
    assert res.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes) the model

    m = load_model(str(out) + ".safetensors", device="cpu")
    assert m.config.training["world_size"] == 2 and m.config.training["steps"] == 4
    assert m.config.training["batch_size"] == 4 and m.config.anomaly.threshold > 0
    logs = [_drawn(drawn, r) for r in (0, 1)]
    for r, rows in enumerate(logs):
        assert [x["step"] for x in rows] == [1, 2, 3, 4] and {x["rank"] for x in rows} == {r}
        assert all(len(x["drawn"]) == 2 for x in rows)
    assert [x["drawn"] for x in logs[0]] != [x["drawn"] for x in logs[1]]  # each rank sees its own samples

    res = _torchrun([*args[:4], "6", *args[5:], "--resume"], tmp_path)  # --steps 6, from the saved step 4
    for r in (0, 1):
        assert [x["step"] for x in _drawn(drawn, r)] == [1, 2, 3, 4, 5, 6]
    assert load_model(str(out) + ".safetensors", device="cpu").config.training["steps"] == 6


@pytest.mark.slow
def test_torchrun_batch_splits_the_cohort_and_reports_failures_after_all_ranks(tmp_path, read):
    src, out = tmp_path / "in", tmp_path / "out"
    vol, geo = read("mni_t1_healthy.nii.gz")
    names = ["a.nii.gz", "b.nii.gz", "sub/c.nrrd", "sub/d.nii.gz"]
    for i, n in enumerate(names):
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        write_volume(src / n, vol[30 + 4 * i : 46 + 4 * i, 20:100, 15:85], geo)
    (src / "bad.nii.gz").write_bytes(b"not a volume" * 100)  # sorted: a, b, bad, sub/c, sub/d -> rank 0 has bad
    args = ["reconstruct", str(src), "-o", str(out), "--device", "cpu"]
    res = _torchrun(args, tmp_path, command="batch", rc=1)
    assert "1 of 5 file(s) failed over 2 processes" in res.stderr
    rows = [json.loads(x) for r in (0, 1) for x in (out / f"manifest.rank{r}.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(names + ["bad.nii.gz"])  # the failure stopped no rank
    assert {r["input"]: r["rank"] for r in rows} == {"a.nii.gz": 0, "b.nii.gz": 1, "bad.nii.gz": 0, "sub/c.nrrd": 1,
                                                    "sub/d.nii.gz": 0}
    assert all((out / n).is_file() for n in names)
    (src / "bad.nii.gz").unlink()
    _torchrun(args, tmp_path, command="batch", rc=0)  # the rest was done: every rank skips its files
