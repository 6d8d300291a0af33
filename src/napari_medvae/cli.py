"""``medvae``: the command-line face of the engine (the same calls the napari widgets make).

Every command exits 0 on success and, on bad input, prints one line ``medvae: error: ...`` and exits
2 without writing any output (all writes are atomic); ``medvae batch`` exits 1 when some files of the
cohort failed (the manifest says which). A progress bar is shown on a terminal.
Start-up time: torch, MONAI and the engine are imported only inside the commands, after the inputs are
read and checked (``medvae --help`` and refusals of bad input take well under a second;
tests/test_cli_startup.py checks that importing this module and refusing a missing file import no torch).
Slice numbers and axes follow ``napari_medvae.slices`` (one convention with the napari widgets).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from . import slices as sl
from .errors import Cancelled, InputError, MedVAEError
from .service import volume_paths

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1  # medvae batch: some files failed (see the manifest)
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------------------------------------
# helpers


class _Bar:
    """tqdm progress bar on a terminal (stderr), silent otherwise; usable as progress(done, total)."""

    def __init__(self, desc: str, enabled: bool):
        self.desc = desc
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="slice", leave=False, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _out(path: str, *inputs: str | None) -> Path:
    from .io import check_output_path

    return check_output_path(path, [p for p in inputs if p])


def _check_mask_out(args, out: Path, *inputs: str | None) -> Path | None:
    """Check ``--brain-mask-out`` before any work: a writable new file, not the output or an input."""
    if not args.brain_mask_out:
        return None
    path = _out(args.brain_mask_out, args.input, *inputs)
    if path == out:
        raise InputError("--brain-mask-out must differ from the output file")
    return path


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg)


def _note(msg: str) -> None:
    """A note on stderr (even with -q): an option that changes nothing for this input."""
    print(f"medvae: note: {msg}", file=sys.stderr)


def _options(args) -> dict:
    """The request options every volume command shares: ``--axis``, ``--force``, ``--skull-strip``."""
    return {"axis": args.axis, "force": args.force, "skull_strip": args.skull_strip}


def _run_file(desc: str, args, request, out: Path, **kw):
    """``service.run_file`` on ``args.input`` with the shared flags and a progress bar."""
    from .service import run_file

    bar = _Bar(desc, not args.quiet)
    try:
        return run_file(request, args.input, out, model_path=args.model, device=args.device,
                        volume_index=args.volume_index, series_uid=args.series_uid, brain_mask_out=args.brain_mask_out,
                        progress=bar, say=lambda msg: _say(args, msg), note=_note, **kw)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# commands


def cmd_volume_op(args) -> int:
    """reconstruct / denoise: IN -> OUT on the same grid and dtype."""
    from .service import DenoiseRequest, ReconstructRequest

    request = (ReconstructRequest if args.command == "reconstruct" else DenoiseRequest)(**_options(args))
    out = _out(args.output, args.input)
    _check_mask_out(args, out)
    _run_file(args.command, args, request, out)
    _say(args, f"wrote {out}")
    return 0


def parse_slices(text: str) -> list[int] | str:
    """``--missing-slices`` text -> sorted slice numbers or 'auto' (``slices.parse_slices``, flag named in errors)."""
    try:
        return sl.parse_slices(text)
    except InputError as exc:
        raise InputError(f"--missing-slices: {exc}") from None


def cmd_inpaint(args) -> int:
    from .service import InpaintRequest

    if (args.mask is None) == (args.missing_slices is None):
        raise InputError("give exactly one of --mask MASK or --missing-slices LIST|auto")
    requested = parse_slices(args.missing_slices) if args.missing_slices is not None else None
    request = InpaintRequest(missing_slices=requested, symmetry=not args.no_symmetry, **_options(args))
    out = _out(args.output, args.input, args.mask)
    _check_mask_out(args, out, args.mask)
    res = _run_file("inpaint", args, request, out, mask_path=args.mask)
    if res.nothing_to_fill:
        _say(args, f"no blank slices along {res.where}: nothing to fill; wrote {out} (a copy of the input)")
    else:
        _say(args, f"wrote {out}")
    return 0


def cmd_anomaly(args) -> int:
    from .service import AnomalyRequest

    request = AnomalyRequest(threshold=args.threshold, **_options(args))
    out = _out(args.output, args.input, args.brain_mask)
    labels_out = _out(args.labels, args.input, args.brain_mask) if args.labels else None
    report_out = Path(args.report).resolve() if args.report else None
    if report_out is not None:
        if not report_out.parent.is_dir():
            raise InputError(f"report directory {report_out.parent} does not exist")
        if report_out.suffix.lower() != ".json":
            raise InputError(f"--report must be a .json path, not {args.report}")
    mask_out = _check_mask_out(args, out, args.brain_mask)
    outs = [p for p in (out, labels_out, report_out, mask_out) if p is not None]
    if len(set(outs)) != len(outs):
        raise InputError("heatmap, labels, report and brain mask must be different files")
    res = _run_file("anomaly", args, request, out, brain_mask_path=args.brain_mask, labels_path=labels_out,
                    report_path=report_out)
    for w in res.warnings:  # even with -q: the map is written, but its calibration does not hold
        print(f"medvae: warning: {w}", file=sys.stderr)
    _say(args, f"wrote {out}" + (f", {labels_out}" if labels_out else "") + (f", {report_out}" if report_out else "")
         + f"; {res.summary()}")
    return 0


def cmd_uncertainty(args) -> int:
    from .service import UncertaintyRequest

    request = UncertaintyRequest(samples=args.samples, seed=args.seed, **_options(args))
    out = _out(args.output, args.input)
    _check_mask_out(args, out)
    _run_file("uncertainty", args, request, out)
    _say(args, f"wrote {out}")
    return 0


def cmd_sample(args) -> int:
    from .service import SampleRequest, run_file

    request = SampleRequest(n=args.n, seed=args.seed)
    bar = _Bar("sample", not args.quiet)
    try:
        res = run_file(request, None, args.output, model_path=args.model, device=args.device, progress=bar)
    finally:
        bar.close()
    _say(args, f"wrote {len(res.outputs)} volume(s) to {Path(args.output)}")
    return 0


def _run_training(args, name: str, run: Callable, val_key: str, val_fmt: str, loss_fmt: str):
    """Run ``run(callback)`` with a progress bar (or, without a terminal, a line per validation / 30 s)."""
    bar = _Bar(name, not args.quiet)
    last = {"t": 0.0}

    def cb(info: dict) -> None:
        bar(info["step"], info["steps"])
        if not bar.enabled and not args.quiet and (val_key in info or time.time() - last["t"] > 30):
            last["t"] = time.time()
            msg = f"step {info['step']}/{info['steps']} loss {loss_fmt.format(info['loss'])}"
            if val_key in info:
                msg += " " + val_fmt.format(info[val_key])
            print(msg, flush=True)

    try:
        return run(cb)
    finally:
        bar.close()


def cmd_train(args) -> int:
    from .engine.training.vae import TrainConfig, train

    tc = TrainConfig(
        train=volume_paths(args.data), val=volume_paths(args.val) if args.val else [], out=args.output, steps=args.steps,
        batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed, device=args.device,
        val_every=args.val_every, init=args.init, resume=args.resume, data_description=args.description or "",
        name=args.name or Path(args.output).stem, channels=tuple(args.channels), latent_channels=args.latent_channels, context=args.context,
        kl_weight=args.kl_weight, sample_log=args.sample_log,
    )
    if not Path(args.output).resolve().parent.is_dir():
        raise InputError(f"output directory {Path(args.output).resolve().parent} does not exist")
    path = _run_training(args, "train", lambda cb: train(tc, callback=cb), "val_loss", "val {:.4f}", "{:.4f}")
    if int(os.environ.get("RANK", "0")) == 0:
        _say(args, f"wrote {path} and {Path(path).with_suffix('.json')}")
    return 0


def _head_base(args) -> tuple[str | None, Path]:
    """The model a head is added to, refusing to overwrite it or to write into a missing folder."""
    from .engine.model.loader import model_path

    src = args.model_path or args.model
    base = model_path(src)
    if Path(args.output).with_suffix("").resolve() == base.with_suffix("").resolve():
        raise InputError("refusing to overwrite the model the head is added to; choose another -o")
    if not Path(args.output).resolve().parent.is_dir():
        raise InputError(f"output directory {Path(args.output).resolve().parent} does not exist")
    return src, base


def _head_options(args, src: str | None) -> dict:
    """The training options both 3D heads share, from the command line."""
    return dict(train=volume_paths(args.data), val=volume_paths(args.val) if args.val else [], out=args.output, model=src,
                steps=args.steps, batch_size=args.batch_size, lr=args.lr, channels=tuple(args.channels),
                strides=tuple(args.strides) if args.strides else (2,) * (len(args.channels) - 1),
                num_res_units=args.res_units, seed=args.seed, device=args.device)


def _train_head(args, name: str, fn: Callable, tc) -> int:
    path = _run_training(args, name, lambda cb: fn(tc, callback=cb), "val_psnr", "val PSNR {:.2f} dB", "{:.2e}")
    _say(args, f"wrote {path} and {Path(path).with_suffix('.json')}")
    return 0


def cmd_train_slice_head(args) -> int:
    from .engine.training.slice_head import SliceHeadTrainConfig, train_slice_head

    src, _ = _head_base(args)
    return _train_head(args, "train-slice-head", train_slice_head,
                       SliceHeadTrainConfig(**_head_options(args, src), patch=tuple(args.patch),
                                            runs=tuple(args.runs or ([1] if args.single else [1, 2, 3, 3])),
                                            single=args.single))


def cmd_train_heal_head(args) -> int:
    from .engine.training.heal_head import HealHeadTrainConfig, train_heal_head

    src, _ = _head_base(args)
    return _train_head(args, "train-heal-head", train_heal_head,
                       HealHeadTrainConfig(**_head_options(args, src), patch=tuple(args.patch),
                                           calibration_quantile=args.quantile, contrast_prob=args.contrast_prob,
                                           mimic_prob=args.mimic_prob, wm_prob=args.wm_prob,
                                           small_prob=args.small_prob))


def cmd_fit_region_prior(args) -> int:
    from .engine.training.region_prior import fit_region_prior

    src, _ = _head_base(args)
    path = fit_region_prior(volume_paths(args.data), args.output, src, patch=args.patch, per_volume=args.per_volume,
                            seed=args.seed, power=args.power)
    _say(args, f"wrote {path} and {Path(path).with_suffix('.json')}")
    return 0


def cmd_train_denoiser(args) -> int:
    from .engine.training.denoiser import DenoiserTrainConfig, train_denoiser

    src, _ = _head_base(args)
    return _train_head(args, "train-denoiser", train_denoiser,
                       DenoiserTrainConfig(**_head_options(args, src), patch=args.patch, copies=args.copies))


def cmd_batch(args) -> int:
    """OPERATION over every volume of INPUT_DIR -> OUTPUT_DIR (same relative paths) + manifest.jsonl."""
    from .batch import run_batch

    options = {
        "axis": args.axis, "force": args.force, "skull_strip": args.skull_strip, "missing_slices": args.missing_slices,
        "mask_dir": args.mask_dir,
        "no_symmetry": args.no_symmetry,
        "brain_mask_dir": args.brain_mask_dir, "labels": args.labels, "threshold": args.threshold,
        "samples": args.samples, "seed": args.seed,
    }
    rank = int(os.environ.get("RANK", "0"))
    show = not args.quiet and rank == 0
    tty = show and sys.stderr.isatty()
    bar = None

    def progress(done: int, total: int) -> None:  # tqdm: files done, rate and ETA
        nonlocal bar
        if tty and bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"batch {args.operation}", unit="file", file=sys.stderr)
        if bar is not None:
            bar.update(done - bar.n)

    def on_file(row: dict) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{row['status']} {row['input']}", refresh=False)
        elif show:
            msg = f"{row['status']:7s} {row['input']} ({row['seconds']:.1f}s)"
            print(msg + (f": {row['error']}" if row.get("error") else ""), flush=True)

    try:
        s = run_batch(args.operation, args.input_dir, args.output, model_path=args.model, device=args.device,
                      options=options, progress=progress, on_file=on_file)
    finally:
        if bar is not None:
            bar.close()
    where = f" (rank {s['rank']} of {s['world_size']})" if s["world_size"] > 1 else ""
    if s["error"]:
        print(f"medvae: {s['error']} of {s['total']} file(s) failed{where}: {', '.join(s['failed'][:5])}"
              f"{' ...' if len(s['failed']) > 5 else ''}; see {s['manifest']}", file=sys.stderr)
    elif not args.quiet:
        print(f"{s['ok']} done, {s['skipped']} skipped, 0 failed of {s['total']}{where}; manifest {s['manifest']}")
    if s["world_size"] > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun stops every process as soon as one exits non-zero: all ranks wait for the slowest, then
        # rank 0 alone reports the cohort's failures through its exit status.
        failed, total = _sum_over_ranks(s["error"], s["total"])
        if s["rank"] != 0:
            return 0
        if failed:
            print(f"medvae: {failed} of {total} file(s) failed over {s['world_size']} processes; "
                  f"see {Path(args.output) / 'manifest.rank*.jsonl'}", file=sys.stderr)
            return EXIT_SOME_FAILED
        return 0
    return EXIT_SOME_FAILED if s["error"] else 0


def _sum_over_ranks(*values: int) -> list[int]:
    """Sum integers over the torchrun processes (gloo over TCP; waits as long as the slowest rank needs)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t)
        return [int(v) for v in t]
    finally:
        dist.destroy_process_group()


def cmd_calibrate(args) -> int:
    from .engine.model.loader import model_path
    from .engine.training.calibrate import recalibrate

    src = model_path(args.model_path or args.model)
    out = Path(args.output)
    if out.with_suffix("").resolve() == src.with_suffix("").resolve():
        raise InputError("refusing to overwrite the model being calibrated; choose another -o")
    if not out.resolve().parent.is_dir():
        raise InputError(f"output directory {out.resolve().parent} does not exist")
    path = recalibrate(str(src), volume_paths(args.healthy), str(out), args.quantile, args.score, args.heal_flip,
                       args.heal_invert)
    _say(args, f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_info(args) -> int:
    from .service import get_model

    model = get_model(args.model_path or args.model, args.device)
    print(model.card())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), model_path=args.model, device=args.device, quiet=args.quiet)
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def _head_parser(sub, common, name: str, what: str, head: str, val: str, *, steps: int, batch_size: int, lr: float):
    """The sub-command that trains one of the 3D heads, with the options both share."""
    p = sub.add_parser(name, parents=[common], help=f"add {what} to a model",
                       description=f"Train {head} of a model on healthy volumes, with the model's VAE frozen; "
                                   "writes a new model.")
    p.add_argument("model_path", nargs="?", help="model to add the head to (default: --model or the shipped model)")
    p.add_argument("--data", nargs="+", required=True, help="healthy training volumes or folders of them")
    p.add_argument("-o", "--output", required=True, help="new model path stem")
    p.add_argument("--val", nargs="*", help=f"held-out healthy volumes/folders ({val})")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="UNet channels per level")
    p.add_argument("--strides", type=int, nargs="+", help="UNet strides between levels, 1 or 2 (default: all 2)")
    p.add_argument("--res-units", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="model .safetensors (with its .json beside it) or a shipped model's name "
                        "(real_t1, synthetic_mni); default: $MEDVAE_MODEL, else real_t1")
    common.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    vol = argparse.ArgumentParser(add_help=False)
    vol.add_argument("input", help="volume file (.nii, .nii.gz, .nrrd, .mha, .mhd, .mgz, .mgh) or DICOM series folder")
    vol.add_argument("-o", "--output", required=True, help="output volume (same grid as the input)")
    vol.add_argument("--axis", help="slice axis: axial, coronal or sagittal (from the file's orientation), or the file's "
                                    "voxel axis 0, 1 or 2 (i, j, k; napari shows it as axis 2, 1, 0); default: the "
                                    "largest voxel spacing, ties -> the last file axis")
    vol.add_argument("--volume-index", type=int, help="for 4D files: which 3D volume to use")
    vol.add_argument("--series-uid", help="for DICOM folders with several series: which one to read")
    vol.add_argument("--force", action="store_true", help="run even if the volume looks unlike the model's training data")
    vol.add_argument("--skull-strip", choices=("auto", "always", "never"), default="auto",
                     help="heads with skull: extract the brain (deepbet) and run the model on it only, leaving the "
                          "scalp, skull and neck as they were; auto (default) does so when the volume is larger than "
                          "an extracted brain (over 2.2 l)")
    vol.add_argument("--brain-mask-out", help="also write the brain mask used (1 = brain) to this file")

    p = argparse.ArgumentParser(prog="medvae", description="VAE reconstruction, denoising, inpainting and anomaly maps for 3D MRI.")
    p.add_argument("--version", action="version", version=f"napari-medvae {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("reconstruct", parents=[common, vol], help="healthy reconstruction").set_defaults(fn=cmd_volume_op)
    sub.add_parser("denoise", parents=[common, vol], help="remove noise, keep structure").set_defaults(fn=cmd_volume_op)
    ip = sub.add_parser("inpaint", parents=[common, vol], help="fill a masked region or missing slices")
    ip.add_argument("--mask", help="mask volume on the same grid; its non-zero voxels are filled")
    ip.add_argument("--missing-slices", help="slice numbers along --axis (the numbers napari shows for that axis), e.g. "
                                             "40,41,57 or 40-45 or '40 to 45', or 'auto': the blank slices (none "
                                             "found: nothing to fill, the input is copied to OUTPUT and the exit "
                                             "status is 0)")
    ip.add_argument("--no-symmetry", action="store_true",
                    help="painted masks: do not use the mirror image across the brain's plane of symmetry (the other "
                         "hemisphere) for the fill, e.g. when the other side is abnormal there. It changes the output "
                         "only where the region prior fills: volumes whose in-plane voxels are within 20 %% of the "
                         "model's grid, with slices at its spacing (about 1 mm for the default real_t1, 2 mm for "
                         "synthetic_mni; see medvae info), and where a mirror plane is found (mirror correlation at "
                         "least 0.3). Other volumes get the classical fill, which does not use the other hemisphere: "
                         "the output is then the same, and a note says so")
    ip.set_defaults(fn=cmd_inpaint)
    an = sub.add_parser("anomaly", parents=[common, vol], help="anomaly heatmap (1.0 = calibrated threshold)")
    an.add_argument("--brain-mask", help="your own brain mask (same grid; 1 = brain), used instead of skull "
                                         "stripping: the model sees the voxels inside it only (as a skull-stripped "
                                         "brain) and the heatmap is limited to it. Give a whole brain: a mask that "
                                         "cuts through tissue makes its cut edges look abnormal")
    an.add_argument("--labels", help="write connected candidates above the threshold as a label volume")
    an.add_argument("--report", help="write the candidates as JSON (voxels, mm3, peak, centroid)")
    an.add_argument("--threshold", type=float, default=1.0, help="candidate threshold in heatmap units (default 1.0)")
    an.set_defaults(fn=cmd_anomaly)
    un = sub.add_parser("uncertainty", parents=[common, vol], help="std over posterior samples")
    un.add_argument("--samples", type=int, default=8, help="posterior samples whose spread is mapped (default 8)")
    un.add_argument("--seed", type=int, default=0, help="random seed of the samples (default 0): same seed, same map")
    un.set_defaults(fn=cmd_uncertainty)
    sp = sub.add_parser("sample", parents=[common], help="generate new volumes from the prior")
    sp.add_argument("-n", type=int, default=1, help="number of volumes (default 1)")
    sp.add_argument("-o", "--output", required=True, help="output folder")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.set_defaults(fn=cmd_sample)
    tr = sub.add_parser("train", parents=[common], help="train or fine-tune a model on healthy volumes")
    tr.add_argument("data", nargs="+", help="healthy volumes or folders of them")
    tr.add_argument("-o", "--output", required=True, help="model path stem, e.g. models/my_model")
    tr.add_argument("--val", nargs="*", help="held-out healthy volumes/folders (validation + anomaly calibration)")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--batch-size", type=int, default=24)
    tr.add_argument("--crop", type=int, default=80, help="training crop (pixels at the model grid, multiple of 4)")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--kl-weight", type=float, default=1e-3)
    tr.add_argument("--channels", type=int, nargs=3, default=[16, 32, 64])
    tr.add_argument("--latent-channels", type=int, default=8)
    tr.add_argument("--context", type=int, default=3, help="neighbouring slices on each side given as context")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--val-every", type=int, default=250)
    tr.add_argument("--init", help="fine-tune from this model instead of starting from scratch")
    tr.add_argument("--resume", action="store_true", help="continue from the last saved training state")
    tr.add_argument("--name", help="model name stored in its config")
    tr.add_argument("--description", help="training-data description stored in the model card")
    tr.add_argument("--sample-log", help="append each rank's drawn (volume, slice) pairs to SAMPLE_LOG.rankN.jsonl")
    tr.set_defaults(fn=cmd_train)
    td = _head_parser(sub, common, "train-denoiser", "a trained 3D denoising head",
                      "the denoising head (a 3D UNet that corrects the Wiener stage)", "PSNR at 3, 5, 9 %% noise",
                      steps=1500, batch_size=2, lr=3e-4)
    td.add_argument("--patch", type=int, default=64, help="training patch side (voxels, multiple of 2**(levels-1))")
    td.add_argument("--copies", type=int, default=3, help="noisy copies of each training volume")
    td.set_defaults(fn=cmd_train_denoiser)
    ts = _head_parser(sub, common, "train-slice-head", "a trained 3D missing-slice head",
                      "the missing-slice head (a 3D UNet that corrects the cubic fill of missing slices)",
                      "PSNR in single missing slices and 3-slice gaps", steps=3000, batch_size=6, lr=1e-3)
    ts.add_argument("--patch", type=int, nargs=3, default=[24, 48, 48], metavar=("SLICES", "ROWS", "COLS"),
                    help="training patch (voxels, multiples of 2**(levels-1))")
    ts.add_argument("--runs", type=int, nargs="+", metavar="N",
                    help="lengths of the runs of missing slices in training patches, drawn uniformly from this list "
                         "(default 1 2 3 3: 3-slice gaps twice as often; with --single: 1)")
    ts.add_argument("--single", action="store_true",
                    help="train the single-slice head instead (single missing slices only; it starts from the "
                         "missing-slice head's weights and fills the slices with known neighbours on both sides)")
    ts.set_defaults(fn=cmd_train_slice_head)
    th = _head_parser(sub, common, "train-heal-head", "a trained 3D healing head (anomaly scoring)",
                      "the healing head (a 3D UNet that removes synthetic blobs; its residual joins the anomaly score)",
                      "required: PSNR inside synthetic blobs, then the anomaly calibration", steps=2000, batch_size=4, lr=1e-3)
    th.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64], metavar=("SLICES", "ROWS", "COLS"),
                    help="training patch (voxels, multiples of 2**(levels-1))")
    th.add_argument("--quantile", type=float, default=0.999, help="healthy quantile that becomes heatmap value 1.0")
    th.add_argument("--contrast-prob", type=float, default=0.5,
                    help="share of training patches given a random contrast (tissue order can change, as in T2), "
                         "so that the head also heals contrasts the training volumes lack; 0 = their own contrast "
                         "only (default: %(default)s, as for the shipped head)")
    th.add_argument("--mimic-prob", type=float, default=0.0,
                    help="share of the synthetic blobs given the intensity of another tissue voxel of the patch "
                         "(lesions that look like grey matter or fluid); 0 = random factors only (default: %(default)s)")
    th.add_argument("--wm-prob", type=float, default=0.0,
                    help="share of the synthetic blobs centred in white matter (the brightest tissue of T1-weighted "
                         "training volumes), where most lesions lie; 0 = anywhere in tissue (default: %(default)s)")
    th.add_argument("--small-prob", type=float, default=0.0,
                    help="share of the synthetic blobs that are small (mean radius 1.5-3 voxels instead of 1.5-8), "
                         "as small lesions are the ones most often left unhealed (default: %(default)s)")
    th.set_defaults(fn=cmd_train_heal_head)
    fr = sub.add_parser("fit-region-prior", parents=[common], help="add a region prior (painted-region inpainting) to a model",
                        description="Fit the region prior of a model on healthy volumes: the mean and covariance of "
                                    "the voxels of a ball PATCH voxels across (in PATCH^3 cubes of the model grid) inside the "
                                    "brain. Inpainting fills painted regions that fit in such a ball with their conditional "
                                    "mean under it. Writes a new model; "
                                    "every other weight is copied.")
    fr.add_argument("model_path", nargs="?", help="model to add the prior to (default: --model or the shipped model)")
    fr.add_argument("--data", nargs="+", required=True, help="healthy training volumes or folders of them")
    fr.add_argument("-o", "--output", required=True, help="new model path stem")
    fr.add_argument("--patch", type=int, default=15, help="ball diameter (cube side) in voxels of the model grid, odd, 5-21 "
                                                           "(default: %(default)s; regions up to PATCH - 4 voxels across "
                                                           "that fit in the ball are filled in one cube, larger ones "
                                                           "by cubes along their edge)")
    fr.add_argument("--per-volume", type=int, default=3000, help="cubes drawn per training volume (default: %(default)s)")
    fr.add_argument("--power", type=float, default=2.0, help="model the intensities raised to this power, 0.25-4 "
                                                             "(default: %(default)s; 1 = the intensities themselves)")
    fr.add_argument("--seed", type=int, default=0)
    fr.set_defaults(fn=cmd_fit_region_prior)
    ba = sub.add_parser("batch", parents=[common], help="run an operation on every volume of a folder (resumable)",
                        description="Apply OPERATION to every volume under INPUT_DIR (recursively); outputs keep their "
                                    "relative paths under OUTPUT_DIR, each file's status goes to OUTPUT_DIR/manifest.jsonl, "
                                    "re-running skips finished files. Exit 0: all ok, 1: some files failed, 2: bad arguments.")
    ba.add_argument("operation", choices=["reconstruct", "denoise", "inpaint", "anomaly", "uncertainty"])
    ba.add_argument("input_dir", help="folder of volumes (searched recursively; a folder of DICOM files is one volume)")
    ba.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    ba.add_argument("--axis", help="slice axis of every file: axial, coronal or sagittal (from each file's orientation) "
                                   "or the file's voxel axis 0, 1 or 2; default per file")
    ba.add_argument("--force", action="store_true", help="run even on volumes that look unlike the training data")
    ba.add_argument("--skull-strip", choices=("auto", "always", "never"), default="auto",
                    help="heads with skull, per file: as for the single-volume commands (auto, the default: extract "
                         "the brain of volumes larger than a brain; the scalp, skull and neck are left as they were)")
    ba.add_argument("--missing-slices", help="inpaint: 'auto' (fill the blank slices of each volume; volumes without "
                                             "any are recorded as skipped)")
    ba.add_argument("--mask-dir", help="inpaint: folder of masks with the same relative paths as the inputs")
    ba.add_argument("--no-symmetry", action="store_true",
                    help="inpaint with --mask-dir: do not use the other hemisphere's mirror image for the fill (as "
                         "for inpaint: it changes only volumes on the model's grid, see medvae inpaint --help)")
    ba.add_argument("--brain-mask-dir", help="anomaly: folder of brain masks with the same relative paths")
    ba.add_argument("--labels", action="store_true", help="anomaly: also write candidates as <name>_labels.<ext>")
    ba.add_argument("--threshold", type=float, help="anomaly: candidate threshold in heatmap units (default 1.0)")
    ba.add_argument("--samples", type=int, help="uncertainty: posterior samples (default 8)")
    ba.add_argument("--seed", type=int, help="uncertainty: random seed (default 0)")
    ba.set_defaults(fn=cmd_batch)
    ca = sub.add_parser("calibrate", parents=[common], help="re-calibrate anomaly threshold + OOD profile on healthy volumes")
    ca.add_argument("model_path", nargs="?", help="model to calibrate (default: --model or the shipped model)")
    ca.add_argument("--healthy", nargs="+", required=True, help="healthy held-out volumes or folders")
    ca.add_argument("-o", "--output", required=True, help="new model path stem")
    ca.add_argument("--quantile", type=float, default=0.999)
    ca.add_argument("--score", choices=("heal", "healed", "combined", "residual"),
                    help="anomaly score to calibrate (default: heal for models with a healing head, else combined)")
    ca.add_argument("--heal-flip", action=argparse.BooleanOptionalAction, default=None,
                    help="average the healing head's output over a left-right mirror (heal and healed scores; "
                         "default: keep the model's setting)")
    ca.add_argument("--heal-invert", type=float, default=None, metavar="W",
                    help="on volumes flagged as unlike the calibration volumes (residual ratio), blend in weight W "
                         "of the healing of the intensity-inverted volume, mapped by quantile onto the calibration "
                         "volumes' brain intensities (0 <= W < 1; 0 turns it off; default: keep the model's setting)")
    ca.set_defaults(fn=cmd_calibrate)
    inf = sub.add_parser("info", parents=[common], help="print a model card")
    inf.add_argument("model_path", nargs="?")
    inf.set_defaults(fn=cmd_info)
    de = sub.add_parser("demo", parents=[common], help="run every operation on the sample data; writes outputs + PNG montage")
    de.add_argument("-o", "--output", default="medvae_demo")
    de.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    previous = _on_sigterm()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.fn(args) or 0)
    except Cancelled as exc:
        print(f"medvae: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"medvae: interrupted; {_INTERRUPTED.get(args.command, 'no output was written')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout piped into a reader that stopped early (medvae info | head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail on the closed pipe again
        return 0
    except MedVAEError as exc:
        if args.debug:
            raise
        print(f"medvae: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as exc:
        print(f"medvae: error: {_one_line(exc) or 'out of memory; try a smaller volume or a machine with more RAM'}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# what an interruption leaves, by command (others: nothing)
_INTERRUPTED = {
    "batch": "the files finished so far are kept; run the same command again to resume",
    "sample": "the volumes written so far are kept",
    "demo": "the outputs written so far are kept",
    "train": "no model was written; a training state saved so far is kept (--resume continues from it)",
}


def _on_sigterm():
    """Make SIGTERM (a kill, a scheduler's time limit) interrupt like Ctrl-C, so that temporary files are removed and
    no partial output stays; returns the previous handler (None where it cannot be set: not the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, _raise)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. the out-of-memory fallbacks) as one line each: ``medvae: warning: ...``."""
    print(f"medvae: warning: {_one_line(message)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
