"""Speed benchmark: every figure of the performance issue, with its target and PASS/FAIL, medians of N runs.

    python benchmarks/speed.py [--model PATH] [--repeats 3] [--out benchmarks/results/speed.md] [--quick]
                               [--only GROUP[,GROUP...]]

Times are end to end from array in to array out (checks, normalisation, resampling, network,
post-processing), in this process on the CPU after one warm-up call; GPU rows are added when
torch sees a CUDA device. The CT-sized run and the start-up check run in child processes
(peak resident memory; a clean ``sys.modules``). The size sweep times its four sizes in interleaved
rounds (at least 5) so that the machine's drift falls on all of them, and compares each size's fastest round. ``--quick`` (CI) runs 1 repeat,
a 2 mm base for the size sweep, and skips BM4D and the CT-sized volume.

Group ``cli-memory`` runs every operation through the ``medvae`` command on a 512×512×400 float32 volume
written to a temporary folder, one child process per operation, and reads each child's own peak resident
memory (``os.wait4``'s ``ru_maxrss``) against 3 GB (10^9 bytes); ``cli-startup`` times ``medvae --help`` and a
refusal (an input file that does not exist) in child processes. ``--only`` runs just the named groups (see
``GROUPS``) and prints the table, writing it only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _data  # noqa: E402

BM4D_REFERENCE_S = 56.0  # DESIGN.md: BM4D on the 2 mm MNI T1 (5 % Rician) on this project's 2-core CPU
# the table's row groups, in order (``--only``)
GROUPS = ("real", "cpu", "bm4d", "size", "ct", "cli-memory", "napari", "cli-startup", "gpu")
CT_SHAPE = (400, 512, 512)  # (z, y, x): a 512×512×400 volume, the size of a CT or a fine MRI
RSS_LIMIT_GB = 3.0  # peak resident memory allowed for one operation on it (issue 33, item 10)
STARTUP_LIMIT_S = 1.0  # seconds for ``medvae --help`` and for a refusal (interpreter start included)


def interleaved_runs(fns: dict, repeats: int) -> dict:
    """Every time of each of ``fns`` over ``repeats`` rounds that call every function once in turn (one
    warm-up round first), so that the machine's drift is shared by all of them."""
    for fn in fns.values():
        fn()
    ts: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return ts


def interleaved_times(fns: dict, repeats: int) -> dict:
    """Median time of each of ``fns`` over ``repeats`` interleaved rounds (``interleaved_runs``)."""
    return {k: statistics.median(v) for k, v in interleaved_runs(fns, repeats).items()}


def median_time(fn, repeats: int) -> float:
    """Median time of ``fn`` over ``repeats`` calls after one warm-up call."""
    return interleaved_times({0: fn}, repeats)[0]


CT_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np
import _data
from napari_medvae.engine import {op}
from napari_medvae.service import get_model
model = get_model(sys.argv[1] if sys.argv[1] != "-" else None, "cpu")
vol = _data.ct_sized_volume((400, 512, 512))
tpl = _data.templates(1.0).t1.shape
spacing = tuple(s / n for s, n in zip(tpl, vol.shape))  # the same head, finer grid
_data.templates.cache_clear()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
t = time.perf_counter()
out = {call}
sec = time.perf_counter() - t
out = getattr(out, "heatmap", out)
assert out.shape == vol.shape
print(json.dumps({{"seconds": sec, "rss_before_gb": rss0,
                  "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}}))
"""

STARTUP_CHILD = r"""
import json, sys, time, importlib
pre = ("napari", "qtpy.QtWidgets", "magicgui", "magicgui.widgets")
for m in pre:
    importlib.import_module(m)
torch_before = "torch" in sys.modules
mods = sys.argv[1].split(",")
t = time.perf_counter()
err = None
try:
    for m in mods:
        importlib.import_module(m)
except Exception as e:  # widgets not written yet, or broken
    err = f"{type(e).__name__}: {e}"
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "torch_before": torch_before, "torch": "torch" in sys.modules, "error": err}))
"""


def medvae_command() -> list[str]:
    """The ``medvae`` command as users run it: the console script beside this interpreter, else the same entry point."""
    exe = Path(sys.executable).with_name("medvae")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from napari_medvae.cli import main; sys.exit(main())"]


# Runs the command given after the timeout, reaps it with os.wait4 (that child's own resource usage) and prints a JSON
# line after the child's own output. A lean parent on purpose: on Linux a child's ru_maxrss starts from its parent's RSS
# at the fork (vfork + exec keeps the high-water mark), so spawned straight from this process (model and volumes
# loaded, 1-2 GB) every child read at least that much.
SPAWN_CHILD = r"""
import json, os, subprocess, sys, threading, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
timer = threading.Timer(float(sys.argv[1]), p.kill)
timer.start()
_, status, usage = os.wait4(p.pid, 0)
timer.cancel()
p.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"rc": p.returncode, "seconds": time.perf_counter() - t, "maxrss": usage.ru_maxrss}), flush=True)
"""


def run_child(cmd: list[str], timeout: float) -> tuple[int, float, float, str, str]:
    """Run ``cmd``; return (exit code, seconds, its peak RSS in GB (10^9 bytes), its stdout, its stderr).

    ``cmd`` runs under a small Python parent (``SPAWN_CHILD``, about 10 MB, which the peak includes) that reads the
    child's own ``ru_maxrss`` with ``os.wait4``: neither this process's memory nor an earlier child's counts
    (``RUSAGE_CHILDREN`` would give the largest child so far). Killed after ``timeout`` seconds (exit code -9).
    """
    res = subprocess.run([sys.executable, "-c", SPAWN_CHILD, str(timeout), *cmd], capture_output=True, text=True,
                         timeout=timeout + 120)
    lines = res.stdout.splitlines()
    info = json.loads(lines[-1])
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return info["rc"], info["seconds"], info["maxrss"] * unit / 1e9, "\n".join(lines[:-1]), res.stderr


def write_ct_inputs(folder: Path) -> dict[str, Path]:
    """The 512×512×400 float32 test files (NIfTI, 0.47 mm head) for the ``medvae`` memory rows: the volume, a copy
    with 5 % Rician noise (denoising), one with every 10th slice blank (missing slices) and a painted 10×30×30 mm
    box (uint8 mask). Built slice by slice, so this process never holds more than one volume and a mask."""
    from napari_medvae.io import Geometry
    from napari_medvae.service import save  # the service writes every volume file

    vol = _data.ct_sized_volume(CT_SHAPE)
    tpl = _data.templates(1.0).t1.shape
    spacing = tuple(s / n for s, n in zip(tpl, vol.shape, strict=True))  # the same head, finer grid
    _data.templates.cache_clear()
    geo = Geometry(spacing=spacing)
    paths = {k: folder / f"{k}.nii" for k in ("volume", "noisy", "holed", "mask")}
    save(paths["volume"], vol, geo)
    rng = np.random.default_rng(_data.SEED_SPEED + 4)
    sigma = np.float32(0.05 * float(vol.max()))
    noisy = np.empty_like(vol)
    for k in range(vol.shape[0]):  # Rician: |x + n1 + i n2|
        a = vol[k] + sigma * rng.standard_normal(vol.shape[1:], dtype=np.float32)
        b = sigma * rng.standard_normal(vol.shape[1:], dtype=np.float32)
        noisy[k] = np.sqrt(a * a + b * b)
    save(paths["noisy"], noisy, geo)
    del noisy
    vol[5::10] = 0  # blank slices: found by --missing-slices auto
    save(paths["holed"], vol, geo)
    del vol
    mask = np.zeros(CT_SHAPE, np.uint8)
    c = np.array(CT_SHAPE) // 2
    half = [int(round(mm / 2 / s)) for mm, s in zip((10.0, 30.0, 30.0), spacing, strict=True)]
    mask[tuple(slice(ci - h, ci + h) for ci, h in zip(c, half, strict=True))] = 1
    save(paths["mask"], mask, geo)
    return paths


def cli_memory_rows(row, model_path: str | None) -> None:
    """One row per operation: ``medvae OP`` on the 512×512×400 files in a child process, its peak RSS ≤ 3 GB."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medvae-speed-") as tmp:
        folder = Path(tmp)
        f = write_ct_inputs(folder)
        out = str(folder / "out.nii")
        ops = [
            ("reconstruct", ["reconstruct", f["volume"]]),
            ("denoise (input with 5 % Rician noise)", ["denoise", f["noisy"]]),
            ("inpaint a painted 10×30×30 mm region (--mask)", ["inpaint", f["volume"], "--mask", f["mask"]]),
            ("inpaint missing slices (every 10th blank, --missing-slices auto)",
             ["inpaint", f["holed"], "--missing-slices", "auto"]),
            ("anomaly (heatmap, --labels and --report)",
             ["anomaly", f["volume"], "--labels", folder / "labels.nii", "--report", folder / "report.json"]),
            ("uncertainty (8 posterior samples)", ["uncertainty", f["volume"]]),
        ]
        note = ("a child process per operation, its own peak read with os.wait4 (ru_maxrss; GB = 10^9 bytes): the whole "
                "command, imports, reading the .nii, the model and writing the output; --force skips the "
                "out-of-distribution guard")
        for name, args in ops:
            cmd = [*medvae_command(), *map(str, args), "-o", out, "--force", "-q"]
            if model_path:
                cmd += ["--model", model_path]
            rc, sec, gb, _out, err = run_child(cmd, timeout=1800)
            fig = f"medvae CLI, 512×512×400 float32 (0.47 mm head), {name}: peak RSS"
            target = f"≤ {RSS_LIMIT_GB:g} GB"
            if rc != 0:
                last = (err.strip().splitlines() or ["?"])[-1][:160]
                row(fig, f"failed (exit {rc}) after {sec:.0f} s, peak RSS {gb:.2f} GB", target, False, last)
                continue
            row(fig, f"{gb:.2f} GB ({sec:.0f} s)", target, gb <= RSS_LIMIT_GB, note)
            note = "as above"


def cli_startup_rows(row, reps: int) -> None:
    """``medvae --help`` and a refusal (input file missing), each timed in ``reps`` child processes (median)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medvae-speed-") as tmp:
        missing = Path(tmp) / "does_not_exist.nii"
        cases = [("medvae --help", ["--help"], 0, ""),
                 ("medvae reconstruct with an input file that does not exist (refusal)",
                  ["reconstruct", str(missing), "-o", str(Path(tmp) / "out.nii")], 2, "medvae: error")]
        for fig, args, want_rc, want_err in cases:
            ts, bad = [], ""
            for _ in range(reps):
                rc, sec, _gb, _out, err = run_child([*medvae_command(), *args], timeout=120)
                if rc != want_rc or want_err not in err:
                    bad = f"exit {rc} (expected {want_rc}): {(err.strip().splitlines() or [''])[-1][:160]}"
                    break
                ts.append(sec)
            target = f"≤ {STARTUP_LIMIT_S:g} s, exit {want_rc}"
            if bad:
                row(f"start-up: {fig}", "wrong outcome", target, False, bad)
                continue
            t = statistics.median(ts)
            row(f"start-up: {fig}", f"{t:.2f} s", target, t <= STARTUP_LIMIT_S,
                f"median of {len(ts)} child process(es), interpreter start included: {' '.join(medvae_command())}")


def manifest_modules() -> list[str]:
    """The python modules napari imports for this plugin's contributions (from the npe2 manifest)."""
    import yaml

    for p in (ROOT / "src" / "napari_medvae" / "napari.yaml", ROOT / "napari.yaml"):
        if p.exists():
            man = yaml.safe_load(p.read_text())
            names = [c["python_name"].split(":")[0] for c in man["contributions"]["commands"] if "python_name" in c]
            return list(dict.fromkeys(names))
    return ["napari_medvae._reader", "napari_medvae._writer", "napari_medvae._sample_data", "napari_medvae.widgets"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model .safetensors (default: the shipped model)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median; at least 3 unless --quick)")
    ap.add_argument("--quick", action="store_true", help="CI mode: 1 repeat, 2 mm size sweep, no BM4D, no CT volume")
    ap.add_argument("--out", type=Path, help="markdown file (default benchmarks/results/speed[_quick].md; with --only: "
                                             "none, the table is printed)")
    ap.add_argument("--only", help=f"run only these row groups, comma-separated: {', '.join(GROUPS)}")
    a = ap.parse_args(argv)
    only = set(GROUPS) if a.only is None else {g.strip() for g in a.only.split(",") if g.strip()}
    if not only or only - set(GROUPS):
        ap.error(f"--only takes groups from {', '.join(GROUPS)}, not {a.only!r}")
    reps = 1 if a.quick else max(3, a.repeats)
    out_path = a.out or (None if a.only is not None else HERE / "results" / ("speed_quick.md" if a.quick else "speed.md"))
    t_start = time.perf_counter()

    import torch

    from napari_medvae.engine import anomaly, denoise, inpaint, reconstruct
    from napari_medvae.engine.training import synth
    from napari_medvae.service import get_model

    in_process = only & {"real", "cpu", "bm4d", "size", "gpu"}
    model = get_model(a.model, "cpu") if in_process else None
    rows: list[tuple] = []

    def row(fig, value, target, ok, note=""):
        rows.append((fig, value, target, ok if isinstance(ok, str) else ("PASS" if ok else "FAIL"), note))

    def ops(m, vol, sp, missing, mask, noisy):
        return {
            "reconstruct": lambda: reconstruct(m, vol, sp),
            "denoise": lambda: denoise(m, noisy, sp),
            "anomaly map": lambda: anomaly(m, vol, sp),
            "fill missing slices": lambda: inpaint(m, vol, sp, missing_slices=missing, axis=0),
            "painted region": lambda: inpaint(m, vol, sp, mask=mask),
        }

    if not in_process:
        return finish(a, argv, model, reps, rows, row, only, out_path, t_start)
    if "real" in only:
        real_rows(row, model, reps)

    # --- the 1 mm brain (the MNI152 T1 itself, 197×233×189) ---------------------------------------
    tpl1 = _data.templates(1.0)
    vol1 = tpl1.t1.astype(np.float32)
    sp1 = tuple(float(s) for s in tpl1.spacing)
    shape = "×".join(str(s) for s in vol1.shape[::-1])
    missing, holed, mask = holes(vol1, margin=5)
    # denoising is timed on a noisy copy: on the noise-free template the background holds no noise floor, so
    # the block-matching stage has far less to do than on a real magnitude image (4.3 vs 5.2 s when this was added)
    noisy1 = synth.rician(vol1, 0.05 * float(vol1.max()), np.random.default_rng(_data.SEED_SPEED + 3))
    cpu = ops(model, vol1, sp1, missing, mask, noisy1)
    cpu["fill missing slices"] = ops(model, holed, sp1, missing, mask, noisy1)["fill missing slices"]
    figures = [("reconstruct", f"reconstruct, 1 mm brain ({shape})", 5.0),
               ("denoise", f"denoise, 1 mm brain ({shape}) with 5 % Rician noise", 5.0),
               ("anomaly map", f"anomaly map, 1 mm brain ({shape})", 5.0),
               ("fill missing slices", f"fill all {len(missing)} missing slices (every 10th) of that volume", 5.0),
               ("painted region", "fill a painted 10-slice region (10×30×30 mm) of that volume", 2.0)]
    t_cpu = {}
    for key, fig, tgt in figures if "cpu" in only else ():
        t_cpu[key] = t = median_time(cpu[key], reps)
        row(f"CPU: {fig}", f"{t:.2f} s", f"≤ {tgt:g} s", t <= tgt,
            "" if t <= tgt else f"{t / tgt:.1f}× the target")

    # --- denoise vs BM4D on the 2 mm volume ------------------------------------------------------
    vol2, _, _, sp2 = _data.subject(_data.SEED_SPEED + 1)
    sigma = 0.05 * float(vol2.max())
    noisy2 = synth.rician(vol2, sigma, np.random.default_rng(_data.SEED_SPEED + 2))
    t_den = median_time(lambda: denoise(model, noisy2, sp2), reps) if "bm4d" in only else 0.0
    fig = "denoise ÷ BM4D, 2 mm volume, 5 % Rician"
    if "bm4d" not in only:
        pass
    elif not a.quick and importlib.util.find_spec("bm4d"):
        import bm4d

        t0 = time.perf_counter()
        bm4d.bm4d(noisy2.astype(np.float64), sigma)
        t_bm = time.perf_counter() - t0
        row(fig + ", same run", f"{t_den:.2f} s ÷ {t_bm:.1f} s = {t_den / t_bm:.3f}", "≤ 0.1", t_den / t_bm <= 0.1,
            "BM4D timed once (it is slow)")
    else:
        why = "skipped (--quick)" if a.quick else "not installed"
        row(fig, f"{t_den:.2f} s ÷ {BM4D_REFERENCE_S:.0f} s = {t_den / BM4D_REFERENCE_S:.3f}", "≤ 0.1",
            "n/a (reference)", f"BM4D {why}: divided by the 56 s DESIGN.md measured on this CPU, not a same-run figure")

    # --- cost vs volume size ---------------------------------------------------------------------
    if "size" in only:
        size_sweep(a, reps, model, reconstruct, row, (vol2, sp2) if a.quick else (vol1, sp1))

    # --- GPU -------------------------------------------------------------------------------------
    if "gpu" not in only:
        pass
    elif torch.cuda.is_available():
        g = get_model(a.model, "cuda")
        gops = ops(g, vol1, sp1, missing, mask, noisy1)
        gops["fill missing slices"] = ops(g, holed, sp1, missing, mask, noisy1)["fill missing slices"]
        for key, fig, _ in figures:
            t = median_time(gops[key], reps)
            row(f"GPU ({torch.cuda.get_device_name(0)}): {fig}", f"{t:.3f} s", "≤ 0.3 s", t <= 0.3)
    else:
        row("GPU: every operation on the 1 mm brain", "not measured (no GPU lent)", "≤ 0.3 s", "n/a",
            "torch.cuda.is_available() is False on this machine")
    return finish(a, argv, model, reps, rows, row, only, out_path, t_start)


def holes(vol: np.ndarray, margin: int):
    """(every 10th slice from ``margin`` on, the volume with them blanked, a central 10×30×30-voxel box mask)."""
    missing = list(range(margin, vol.shape[0] - margin, 10))
    holed = vol.copy()
    holed[missing] = 0
    mask = np.zeros(vol.shape, bool)
    c = np.array(vol.shape) // 2
    mask[c[0] - 5: c[0] + 5, c[1] - 15: c[1] + 15, c[2] - 15: c[2] + 15] = True
    return missing, holed, mask


def real_rows(row, model, reps: int) -> None:
    """Each operation on a real 1 mm scan at full size, brain extraction (deepbet) included, as the CLI runs it:
    through the service layer (``service.ops.run``) with skull stripping "always", which extracts the brain, runs
    the engine with that brain mask and puts the result back on the whole head (file reading and writing aside)."""
    import _real

    from napari_medvae.engine.prep import skullstrip
    from napari_medvae.engine.training import synth
    from napari_medvae.io import read_volume
    from napari_medvae.service import requests as rq
    from napari_medvae.service.ops import run

    if not _real.available():
        row("real 1 mm scan: every operation", "not measured", "≤ 10 s", "n/a",
            "real scans missing: run `python scripts/fetch_real_data.py CLONE`")
        return
    vol, geo = read_volume(_real.path_of(_real.TEST_SUBJECTS[0]))
    vol = vol.astype(np.float32)
    shape = "×".join(str(n) for n in vol.shape[::-1])
    noisy = synth.rician(vol, 0.05 * float(vol.max()), np.random.default_rng(_data.SEED_SPEED + 5))
    missing, holed, mask = holes(vol, margin=40)
    always = {"skull_strip": "always"}
    cases = (("reconstruct", rq.ReconstructRequest(**always), vol, None),
             ("denoise", rq.DenoiseRequest(**always), noisy, None),
             ("anomaly map", rq.AnomalyRequest(**always), vol, None),
             ("fill missing slices", rq.InpaintRequest(missing_slices=tuple(missing), axis=0, **always), holed, None),
             ("painted region", rq.InpaintRequest(**always), vol, mask))

    skullstrip.extract_brain(vol, geo.spacing, geo.direction, geo.origin)  # warm-up: deepbet's first call compiles
    for key, request, v, m in cases:
        def once(request=request, v=v, m=m):
            return run(request, v, geo.spacing, model=model, geometry=geo, mask=m)

        t = median_time(once, reps)
        row(f"real 1 mm scan ({shape}, ds002748 sub-{_real.TEST_SUBJECTS[0]}), brain extraction included: {key}",
            f"{t:.2f} s", "≤ 10 s", t <= 10, "" if t <= 10 else f"{t / 10:.1f}× the target")


def size_sweep(a, reps: int, model, reconstruct, row, base_sp) -> None:
    """The cost-vs-size row: reconstruct at 0.5×, 1×, 2×, 4× the voxels of ``base_sp`` (volume, spacing)."""
    base, bsp = base_sp
    # The engine skips slices without signal, so every size keeps the base's fraction of slices with brain:
    # 0.5x = every other slice (twice the slice spacing), 2x and 4x = mirrored copies stacked along z.
    sizes = {0.5: (np.ascontiguousarray(base[::2]), (2 * bsp[0], *bsp[1:]))}
    for f in (1.0, 2.0, 4.0):
        k = int(f)
        sizes[f] = (np.concatenate([base if i % 2 == 0 else base[::-1] for i in range(k)], axis=0), bsp)
    # Interleaved rounds (0.5x, 1x, 2x, 4x, then again) so that a slow spell of this shared machine lands on
    # every size alike instead of on one size's whole median; at least 5 rounds, since 1x takes only about 1 s.
    sweep_reps = reps if a.quick else max(5, reps)
    # The ratio uses each size's fastest round (timeit's convention: the run least disturbed by other work); the
    # medians are printed too. With medians, 3 of 8 runs of unchanged code failed this row in slow spells of the machine.
    sweep_runs = interleaved_runs({f: (lambda v=v, vsp=vsp: reconstruct(model, v, vsp)) for f, (v, vsp) in sizes.items()},
                                  sweep_reps)
    sweep_ts = {f: min(v) for f, v in sweep_runs.items()}

    def per_voxel_ratios(ts: dict) -> dict:  # time per voxel of each size over the 1x size's
        return {f: ts[f] / sizes[f][0].size / (ts[1.0] / sizes[1.0][0].size) for f in sizes}

    ratios = per_voxel_ratios(sweep_ts)
    median_ratios = per_voxel_ratios({f: statistics.median(v) for f, v in sweep_runs.items()})
    worst = max(abs(r - 1) for r in ratios.values())
    row(f"CPU: cost vs size, reconstruct ({'2' if a.quick else '1'} mm base, 0.5×, 1×, 2×, 4× voxels): "
        "time per voxel ÷ 1×", ", ".join(f"{r:.2f}" for r in ratios.values()), "each within 1 ± 0.2", worst <= 0.2,
        f"seconds (fastest of {sweep_reps} interleaved rounds): " + ", ".join(f"{t:.2f}" for t in sweep_ts.values())
        + "; ratios of the medians: " + ", ".join(f"{r:.2f}" for r in median_ratios.values())
        + "; 0.5×: every other slice; 2×, 4×: mirrored copies along z (same fraction of slices with brain)")


def ct_row(a, row, only) -> None:
    """The CT-sized reconstruct in a child process (engine call, no CLI): time and peak RSS."""
    if "ct" not in only:
        return
    if a.quick:
        row("512×512×400 float32 volume, reconstruct", "skipped (--quick)", "completes, peak RSS ≤ 3 GB", "n/a")
    else:
        call = "reconstruct(model, vol, spacing, force=True)"
        code = CT_CHILD.format(op="reconstruct", call=call)
        rc, _sec, _gb, out, err = run_child([sys.executable, "-c", code, a.model or "-", str(HERE)], timeout=1200)
        if rc == 0:
            info = json.loads(out.strip().splitlines()[-1])
            row("CPU: 512×512×400 float32 volume (0.47 mm head), reconstruct",
                f"{info['seconds']:.1f} s, peak RSS {info['maxrss_gb']:.2f} GB",
                "completes, peak RSS ≤ 3 GB", info["maxrss_gb"] <= 3,
                f"child process (engine call, no CLI); RSS {info['rss_before_gb']:.2f} GB before the call (model + "
                "input); GB = 10^9 bytes; force=True skips the out-of-distribution guard")
        else:
            err = (err.strip().splitlines() or ["?"])[-1][:160]
            row("CPU: 512×512×400 float32 volume, reconstruct", "failed", "completes, peak RSS ≤ 3 GB", False, err)


def finish(a, argv, model, reps: int, rows: list, row, only, out_path: Path | None, t_start: float) -> int:
    """The child-process groups (CT-sized reconstruct, CLI memory, napari and CLI start-up), then the table: printed,
    and written to ``out_path`` unless it is None."""
    ct_row(a, row, only)
    if "cli-memory" in only:
        if a.quick:
            row("medvae CLI, 512×512×400 float32: peak RSS of every operation", "skipped (--quick)",
                f"≤ {RSS_LIMIT_GB:g} GB each", "n/a")
        else:
            cli_memory_rows(row, a.model)
    if "napari" in only:
        napari_row(row, reps)
    if "cli-startup" in only:
        cli_startup_rows(row, reps)
    cmd = " ".join(["python benchmarks/speed.py", *argv])
    name = _data.model_id(model) if model is not None else "(the model the `medvae` children load: "
    name += "" if model is not None else (f"{a.model})" if a.model else "the shipped one)")
    md = [f"Command: `{cmd}`", "",
          f"Model {name}; {_data.machine()}; median of {reps} run(s) after a warm-up call (size sweep: fastest of its rounds); "
          f"total {time.perf_counter() - t_start:.0f} s.", "",
          "| figure | measured | target | result | note |", "|---|---|---|---|---|"]
    md += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
    print(text)
    return 0


def napari_row(row, reps: int) -> None:
    """napari start-up: import cost of the manifest's modules (child processes), and whether torch comes with them."""
    mods = manifest_modules()
    ts, info = [], {}
    for _ in range(reps):
        res = subprocess.run([sys.executable, "-c", STARTUP_CHILD, ",".join(mods)], capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:
            info = {"error": (res.stderr.strip().splitlines() or ["?"])[-1][:160]}
            break
        info = json.loads(res.stdout.strip().splitlines()[-1])
        if info["error"]:
            break
        ts.append(info["seconds"])
    fig = "napari start-up: importing every module the plugin's manifest names"
    if info.get("error") or not ts:
        row(fig, "not available yet", "≤ 0.3 s, torch not imported", "n/a", info.get("error", ""))
    else:
        t = statistics.median(ts)
        ok = t <= 0.3 and not info["torch"]
        row(fig, f"{t:.3f} s; torch imported: {'yes' if info['torch'] else 'no'}", "≤ 0.3 s, torch not imported", ok,
            f"{', '.join(mods)}; napari, Qt and magicgui imported first (not counted)"
            + ("; torch was already imported by napari itself" if info["torch_before"] else ""))


if __name__ == "__main__":
    sys.exit(main())
