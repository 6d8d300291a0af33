"""Cohort batch processing (``medvae batch``): one operation over every volume under a folder.

* Every supported volume file under ``input_dir`` (recursively; hidden files and folders are
  ignored) gets one output at the same relative path under ``output_dir`` with the same extension.
  A folder of DICOM files (and no volume files) is one volume; its output is ``<folder>.nii.gz``.
* Each processed file appends one JSON line to the manifest ``output_dir/manifest.jsonl``
  (flushed and fsync'ed, so a killed run leaves only complete lines)::

      {"input": "sub/a.nii.gz", "output": "sub/a.nii.gz", "status": "ok", "seconds": 2.1,
       "error": null, "operation": "anomaly", "rank": 0, "time": "2025-01-01T12:00:00+00:00",
       "max_score": 3.2, "n_candidates": 2, "largest_candidate_mm3": 376.0, "n_above_healthy": 1,
       "labels": "sub/a_labels.nii.gz"}

  ``input`` is relative to ``input_dir``, ``output`` (and ``labels``) to ``output_dir``; ``status``
  is ``ok``, ``error`` (``error`` says why) or ``skipped`` (already done, or nothing to do:
  ``reason`` says which). The anomaly fields appear for ``anomaly`` only (``n_above_healthy``: the
  candidates peaking above the model's healthy maximum, ``residual_ratio``: the median smoothed residual over the
  healthy calibration's, for models calibrated with them; ``warnings`` when the heatmap's calibration does
  not hold for the volume, see engine.anomaly).
* Re-running the same command skips every file whose output exists and whose manifest has an
  ``ok`` line (outputs are written atomically, so an existing output is complete); failed and
  unfinished files are processed again. One bad file never stops the batch.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` takes files ``r::WORLD_SIZE`` of the sorted
  list, uses GPU ``LOCAL_RANK`` when the device is ``auto``/``cuda``, and appends to its own
  ``manifest.rank<r>.jsonl``; no process group is needed. The parts are not merged: the full
  record is ``cat output_dir/manifest*.jsonl``, and re-runs with any number of processes read all parts.

Imports no Qt or napari; torch is imported only through the engine when the model is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from . import slices as sl
from .errors import InputError, MedVAEError
from .service import Item, find_volumes, split_ext

log = logging.getLogger("medvae")

OPERATIONS = ("reconstruct", "denoise", "inpaint", "anomaly", "uncertainty")
MANIFEST = "manifest.jsonl"

# options each operation accepts (besides axis and force)
_OPTIONS = {
    "reconstruct": set(),
    "denoise": set(),
    "inpaint": {"missing_slices", "mask_dir", "no_symmetry"},
    "anomaly": {"brain_mask_dir", "labels", "threshold"},
    "uncertainty": {"samples", "seed"},
}
_COMMON = {"axis", "force", "skull_strip"}


# ---------------------------------------------------------------------------------------------
# discovery: service.find_volumes (one walk for batch, training and the Model widget)


def labels_rel(out_rel: str) -> str:
    """``sub/a.nii.gz`` -> ``sub/a_labels.nii.gz`` (anomaly candidates written next to the heatmap)."""
    d, _, name = out_rel.rpartition("/")
    stem, ext = split_ext(name) or (name, "")
    return (d + "/" if d else "") + f"{stem}_labels{ext}"


# ---------------------------------------------------------------------------------------------
# manifest


def read_manifest(output_dir: str | os.PathLike[str]) -> list[dict]:
    """All complete lines of ``manifest.jsonl`` and its ``manifest.rank*.jsonl`` parts (a torn line is ignored)."""
    rows: list[dict] = []
    for p in sorted(Path(output_dir).glob("manifest*.jsonl")):
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "input" in row:
                rows.append(row)
    return rows


class _Manifest:
    """Append-only JSON Lines writer: each line is flushed and fsync'ed before the next file starts."""

    def __init__(self, path: Path):
        self.path = path
        torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole batch
        if torn:  # a line cut by a kill: end it so the next line stays parseable
            self.fh.write("\n")

    def write(self, row: dict) -> None:
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _remove_stale_temps(out: Path) -> None:
    """Remove temporary files that a killed run left for this output (``.<stem>.tmp-*``, see io.write_volume)."""
    split = split_ext(out.name)
    if split is None or not out.parent.is_dir():
        return
    import shutil

    for p in out.parent.glob(f".{split[0]}.tmp-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# per-file work


def _check_options(operation: str, options: dict) -> dict:
    if operation not in OPERATIONS:
        raise InputError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}")
    opts = {k: v for k, v in options.items() if v is not None and v is not False}
    extra = set(opts) - _OPTIONS[operation] - _COMMON
    if extra:
        names = ", ".join("--" + k.replace("_", "-") for k in sorted(extra))
        raise InputError(f"{names} do(es) not apply to {operation}")
    if operation == "inpaint":
        ms, md = opts.get("missing_slices"), opts.get("mask_dir")
        if (ms is None) == (md is None):
            raise InputError("batch inpaint needs exactly one of --missing-slices auto or --mask-dir DIR")
        if ms is not None and str(ms).strip().lower() != "auto":
            raise InputError("batch inpaint takes --missing-slices auto only (a slice list fits one volume; use inpaint)")
    for key in ("mask_dir", "brain_mask_dir"):
        if key in opts and not Path(opts[key]).is_dir():
            raise InputError(f"--{key.replace('_', '-')} {opts[key]} is not a folder")
    if "axis" in opts and str(opts["axis"]).strip().lower() not in sl.PLANE_NAMES:  # names: per file, its geometry
        try:
            sl.parse_axis(opts["axis"])
        except InputError as exc:
            raise InputError(f"--axis: {exc}") from None
    return opts


def _companion(kind: str, root: str, item: Item) -> Path:
    """The mask or brain mask of ``item``: the same relative path under ``root`` (refused when missing)."""
    p = Path(root) / item.rel
    if not p.exists():
        raise InputError(f"no {kind} {p} for this volume (expected the same relative path under {root})")
    return p


def _request(operation: str, opts: dict):
    """The service request of ``operation`` from the batch options (checked once, before any file is read)."""
    from . import service

    axis = None if opts.get("axis") is None else str(opts["axis"])  # a file axis (0-2) or a plane name, per file
    common = {"axis": axis, "force": bool(opts.get("force", False)), "skull_strip": str(opts.get("skull_strip", "auto"))}
    if operation == "inpaint":
        return service.InpaintRequest(missing_slices="auto" if "missing_slices" in opts else None,
                                      symmetry=not opts.get("no_symmetry", False), if_none_blank="skip", **common)
    if operation == "anomaly":
        return service.AnomalyRequest(threshold=float(opts.get("threshold", 1.0)), **common)
    if operation == "uncertainty":
        return service.UncertaintyRequest(samples=int(opts.get("samples", 8)), seed=int(opts.get("seed", 0)), **common)
    cls = service.ReconstructRequest if operation == "reconstruct" else service.DenoiseRequest
    return cls(**common)


def _process(request, item: Item, out: Path, labels_out: Path | None, model, opts: dict) -> dict:
    """Run one file; write its output(s) atomically; return the extra manifest fields."""
    from . import service

    mask = _companion("mask", opts["mask_dir"], item) if "mask_dir" in opts else None
    brain = _companion("brain mask", opts["brain_mask_dir"], item) if "brain_mask_dir" in opts else None
    out.parent.mkdir(parents=True, exist_ok=True)
    res = service.run_file(request, item.path, out, model=model, mask_path=mask, brain_mask_path=brain,
                           labels_path=labels_out)  # labels first: the heatmap's presence marks the file as done
    if isinstance(res, service.AnomalyResult):
        return res.manifest_fields()
    if isinstance(res, service.InpaintResult) and res.slices is not None:
        if res.nothing_to_fill:
            return {"status": "skipped", "reason": f"no blank slices along {res.where}; nothing to inpaint"}
        return {"missing_slices": [int(s) for s in res.slices]}
    return {}


# ---------------------------------------------------------------------------------------------


def _rank_device(device: str, world: int, local: int) -> str:
    """Under torchrun, rank i uses GPU LOCAL_RANK (when the device is auto/cuda and GPUs exist)."""
    if world > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local % torch.cuda.device_count()}"
    return device


def run_batch(
    operation: str,
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    model_path: str | None = None,
    device: str = "auto",
    options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_file: Callable[[dict], None] | None = None,
) -> dict:
    """Apply ``operation`` to every volume under ``input_dir``; see the module docstring.

    ``options``: ``axis`` (file voxel axis 0-2, or axial/coronal/sagittal from each file's geometry),
    ``force``; inpaint: ``missing_slices="auto"`` or ``mask_dir``; anomaly: ``brain_mask_dir``, ``labels`` (bool), ``threshold``; uncertainty:
    ``samples``, ``seed``. ``progress(done, total)`` counts this process's files; ``on_file(row)``
    gets each manifest row. Bad arguments raise InputError before anything is written; a failing
    file is recorded in the manifest and the batch goes on.

    Returns ``{"total", "ok", "error", "skipped", "failed": [inputs], "manifest": path,
    "rank", "world_size"}`` for this process.
    """
    opts = _check_options(operation, dict(options or {}))
    request = _request(operation, opts)  # the operation's own rules (e.g. --samples 2-64), in the service
    src = Path(input_dir).expanduser()
    dst = Path(output_dir).expanduser()
    if not src.is_dir():
        raise InputError(f"input folder {src} does not exist or is not a folder")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"output {dst} exists and is not a folder")
    if dst.resolve() == src.resolve():
        raise InputError("the output folder must differ from the input folder")
    if not dst.resolve().parent.is_dir():
        raise InputError(f"parent folder of {dst} does not exist")
    for key in ("mask_dir", "brain_mask_dir"):
        if key in opts and Path(opts[key]).resolve() == dst.resolve():
            raise InputError(f"--{key.replace('_', '-')} must differ from the output folder")
    items = find_volumes(src, exclude=dst)
    if not items:
        from .io import SUPPORTED_EXTENSIONS

        raise InputError(f"{src}: no volumes ({', '.join(SUPPORTED_EXTENSIONS)} or DICOM folders) in this folder")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    mine = items[rank::world] if world > 1 else items
    done_ok = {r["input"] for r in read_manifest(dst) if r.get("status") == "ok" and r.get("operation", operation) == operation}
    manifest_path = dst / (MANIFEST if world == 1 else f"manifest.rank{rank}.jsonl")
    want_labels = operation == "anomaly" and bool(opts.get("labels"))

    def finished(item: Item) -> bool:
        return (item.rel in done_ok and (dst / item.out_rel).is_file()
                and (not want_labels or (dst / labels_rel(item.out_rel)).is_file()))

    model = None
    if not all(finished(it) for it in mine):  # once per process, only if there is work; a bad model is a bad argument
        from .service import get_model

        model = get_model(model_path, _rank_device(device, world, local))
        log.info("model %s on %s", model.config.name, model.device)
    dst.mkdir(exist_ok=True)
    summary = {"total": len(mine), "ok": 0, "error": 0, "skipped": 0, "failed": [], "manifest": str(manifest_path),
               "rank": rank, "world_size": world}
    manifest = _Manifest(manifest_path)
    if progress is not None:
        progress(0, len(mine))
    try:
        for i, item in enumerate(mine):
            out = dst / item.out_rel
            labels_out = dst / labels_rel(item.out_rel) if want_labels else None
            row: dict = {"input": item.rel, "output": item.out_rel, "status": "ok", "seconds": 0.0, "error": None,
                         "operation": operation, "rank": rank}
            t = time.time()
            if finished(item):
                row.update(status="skipped", reason="already done")
            else:
                _remove_stale_temps(out)
                if labels_out is not None:
                    _remove_stale_temps(labels_out)
                try:
                    row.update(_process(request, item, out, labels_out, model, opts))
                except (KeyboardInterrupt, SystemExit):
                    raise
                except MedVAEError as exc:
                    row.update(status="error", error=str(exc))
                except Exception as exc:  # one bad file never stops the batch
                    row.update(status="error", error=f"{type(exc).__name__}: {exc}")
            if labels_out is not None and row["status"] != "error":
                row["labels"] = labels_rel(item.out_rel)
            row["seconds"] = round(time.time() - t, 3)
            row["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            manifest.write(row)
            summary[row["status"]] += 1
            if row["status"] == "error":
                summary["failed"].append(item.rel)
            if on_file is not None:
                on_file(row)
            if progress is not None:
                progress(i + 1, len(mine))
    finally:
        manifest.close()
    return summary


__all__ = ["OPERATIONS", "Item", "find_volumes", "labels_rel", "read_manifest", "run_batch"]
