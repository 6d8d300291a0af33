"""Carrying out a request: :func:`run` on arrays (the widgets, the demo, the benchmarks) and :func:`run_file` on
files (``medvae`` and ``medvae batch``): read, check, get the model once from the cache, run the engine, cast, write
atomically, report.

This module is the only one that loads an inference model (through :func:`~napari_medvae.service.get_model`) or
writes a result file (:func:`save`, :func:`save_json`); tests/test_architecture.py keeps it so. The engine is
imported inside the functions: torch is loaded only once a request is carried out, after its inputs were read and
checked (``medvae`` refuses bad input in well under a second).

Skull stripping (``request.skull_strip``): heads with skull are brain-extracted first; the network sees the brain
only, and image results keep the input's own voxels outside it (scalp, skull, neck); an uncertainty map is 0 there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import slices as sl
from ..errors import InputError
from ..output_dtype import cast_like
from . import requests as rq
from .models import get_model
from .results import AnomalyResult, InpaintResult, SampleResult, VolumeResult

log = logging.getLogger("medvae")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
SayFn = Callable[[str], None]
Result = VolumeResult | InpaintResult | AnomalyResult | SampleResult


# ---------------------------------------------------------------------------------------------
# writing: the one place result files are written


def save(path: str | os.PathLike[str], volume: np.ndarray, geometry: Any, like: Any = None,
         header_from: str | os.PathLike[str] | None = None, descrip: str | None = None) -> Path:
    """Write ``volume`` with ``geometry`` atomically; ``like``: a dtype to cast to first (``output_dtype.cast_like``).

    ``header_from``/``descrip``: a NIfTI output keeps the header of the NIfTI input it was computed from
    (``io.write_volume``). Returns the final path. Raises VolumeWriteError.
    """
    from ..io import write_volume

    return write_volume(path, volume if like is None else cast_like(volume, like), geometry,
                        header_from=header_from, descrip=descrip)


def save_json(path: str | os.PathLike[str], document: Any) -> Path:
    """Write ``document`` as indented JSON (with a final newline) atomically; returns the path."""
    # the engine's atomic writer: torch is loaded by then (every caller has run a model)
    from ..engine.model.checkpoint import _atomic_write_bytes

    p = Path(path)
    _atomic_write_bytes(p, (json.dumps(document, indent=2) + "\n").encode())
    return p


def save_png(image: Any, path: str | os.PathLike[str]) -> Path:
    """Write a Pillow image as PNG atomically (temporary file + rename); the demo's montage."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# helpers


def resolve_axis(axis: int | str | None, direction: Sequence[float] | None) -> int | None:
    """A request's axis -> the napari array axis for a volume of this orientation (None: automatic)."""
    if axis is None or isinstance(axis, (int, np.integer)):
        return None if axis is None else int(axis)
    try:
        return sl.parse_axis(axis, direction)
    except InputError as exc:
        raise InputError(f"--axis: {exc}") from None


def _timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def _head(request: rq.VolumeRequest, volume: np.ndarray, spacing, direction, origin, given, say: SayFn | None):
    """(volume the network sees, brain mask or None): skull stripping, or the brain mask the caller gave."""
    if given is None and request.skull_strip == "never":
        return volume, None
    from ..engine.prep import skullstrip
    from ..engine.prep.ood import NEGATIVE_FRACTION, negative_fraction

    if given is None and negative_fraction(volume) > NEGATIVE_FRACTION:
        # signed values (CT in Hounsfield units, a negated image): no magnitude MRI, so no brain extraction (deepbet
        # knows T1 heads); the engine refuses the volume, or runs it as it is when forced
        return volume, None

    seen, mask = skullstrip.prepare_head(volume, spacing, direction, origin, request.skull_strip, given)
    if mask is not None and given is None and say is not None:
        ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
        say(f"head with skull: brain extracted ({ml:.0f} ml); the scalp, skull and neck are left as they were")
    return seen, mask


def symmetry_note(model: Any, shape: Sequence[int], spacing: Sequence[float], axis: int | None) -> str | None:
    """Why turning the other hemisphere off cannot change this volume's fill, or None where it can.

    The other hemisphere serves the region prior only, and the engine uses the prior on volumes on the
    model's grid (engine.prep.preprocess.prepare does not resample them; slices at the model's spacing,
    engine.ops.inpaint.prior_fill); other volumes get the classical fill. Mirrors those two rules
    (tests/test_cli.py checks them against the engine).
    """
    from ..engine.prep.preprocess import check_axis, model_inplane

    cfg = model.config
    if getattr(model.net, "region_prior", None) is None:
        return f"the model {cfg.name} has no region prior, the only fill that uses the other hemisphere"
    ax = check_axis(axis, spacing)
    inplane = [int(n) for i, n in enumerate(shape) if i != ax]
    resampled = model_inplane(inplane, [float(s) for i, s in enumerate(spacing) if i != ax], cfg.spacing_mm) != tuple(inplane)
    stride = max(1, int(round(cfg.slice_spacing_mm / spacing[ax])))
    if resampled or stride != 1 or abs(spacing[ax] / cfg.slice_spacing_mm - 1) > 0.1:
        vox = " x ".join(f"{s:g}" for s in spacing)
        return (f"its voxels ({vox} mm) are not on the model's grid ({cfg.spacing_mm:g} mm in-plane, slices "
                f"{cfg.slice_spacing_mm:g} mm apart), so painted regions get the classical (biharmonic) fill, "
                "which does not use the other hemisphere")
    return None


@dataclass(frozen=True)
class _Job:
    """Everything a request runs with besides the volume: resolved once by ``run`` or ``run_file``."""

    spacing: tuple[float, ...]
    axis: int | None
    direction: Sequence[float] | None
    origin: Sequence[float]
    geometry: Any
    progress: ProgressFn | None
    cancel: CancelFn | None


def _resolve_slices(request: rq.InpaintRequest, volume: np.ndarray, job: _Job,
                    say: SayFn | None) -> tuple[rq.InpaintRequest, str]:
    """The request with its missing slices made explicit (``"auto"``: the blank ones, maybe none) and its axis set;
    and the axis described (e.g. ``axial (file axis 2)``). Painted masks: the request as it is."""
    if request.missing_slices is None:
        return request, ""
    ax = sl.default_axis(job.spacing) if job.axis is None else job.axis
    where = sl.describe_axis(ax, job.direction)
    if request.missing_slices == "auto":
        from ..engine import detect_blank_slices

        found = tuple(int(i) for i in detect_blank_slices(volume, ax))
        if found and say is not None:
            say(f"blank slices along {where}: {', '.join(str(i) for i in found)}")
    else:
        try:
            found = tuple(sl.check_slices(list(request.missing_slices), volume.shape, ax, job.direction))
        except InputError as exc:
            raise InputError(f"--missing-slices: {exc}") from None
    return replace(request, missing_slices=found, axis=ax), where


def _job(request: rq.VolumeRequest, spacing: Sequence[float], geometry: Any, direction, origin,
         progress: ProgressFn | None, cancel: CancelFn | None) -> _Job:
    if geometry is not None:
        direction = geometry.direction if direction is None else direction
        origin = geometry.origin if origin is None else origin
    return _Job(tuple(float(s) for s in spacing), resolve_axis(request.axis, direction), direction,
                (0.0, 0.0, 0.0) if origin is None else tuple(origin), geometry, progress, cancel)


def _execute(request: rq.VolumeRequest, model: Any, volume: np.ndarray, seen: np.ndarray, bm: np.ndarray | None,
             extracted: bool, job: _Job, mask: np.ndarray | None = None, where: str = "") -> Result:
    """Run the engine on ``seen`` (the volume the network sees) and put the result back on the input."""
    from .. import engine  # looked up at call time: tests replace engine functions
    from ..engine.ops.runner import check_mask

    if mask is not None:  # any dtype (0/1 float, 0/255): bool from here on, as the engine reads it
        mask = check_mask(mask, volume.shape)
    sp, axis, kw = job.spacing, job.axis, {"force": request.force, "progress": job.progress, "cancel": job.cancel}
    if isinstance(request, rq.AnomalyRequest):
        res, secs = _timed(engine.anomaly, model, seen, sp, brain_mask=bm, axis=axis, threshold=request.threshold,
                           **({"geometry": job.geometry} if job.geometry is not None else {}), **kw)
        unc = None
        if request.uncertainty_samples is not None:
            unc = engine.uncertainty(model, seen, sp, samples=request.uncertainty_samples, axis=axis, **kw)
            if extracted:
                unc = unc * bm  # no uncertainty outside the brain the model saw
        return AnomalyResult.from_engine(res, brain_mask=bm, extracted=extracted, uncertainty=unc, seconds=secs)
    if isinstance(request, rq.UncertaintyRequest):
        res, secs = _timed(engine.uncertainty, model, seen, sp, samples=request.samples, seed=request.seed, axis=axis,
                           **kw)
        if extracted:
            res = (res * bm).astype("float32")  # no uncertainty outside the brain the model saw
        return VolumeResult(res, bm, extracted, secs)
    if isinstance(request, rq.InpaintRequest):
        slices = request.missing_slices
        if slices is None:
            res, secs = _timed(engine.inpaint, model, seen, sp, mask=mask, axis=axis, symmetry=request.symmetry, **kw)
            filled = mask
        else:
            res, secs = _timed(engine.inpaint, model, seen, sp, missing_slices=list(slices), axis=axis, **kw)
            from ..engine.ops.inpaint import slices_mask

            filled = slices_mask(volume.shape, list(slices), axis) if request.only_filled else None
        if bm is not None:
            from ..engine.prep.skullstrip import restore_outside

            # a painted region reaching out of the brain keeps the engine's (classical) fill there too
            res = restore_outside(res, volume, bm if mask is None else (bm | mask))
        if request.only_filled:
            res = np.where(filled, res, 0).astype(res.dtype)
        return InpaintResult(res, bm, extracted, secs, slices=None if slices is None else tuple(slices),
                             axis=None if slices is None else axis, where=where)
    fn = engine.reconstruct if isinstance(request, rq.ReconstructRequest) else engine.denoise
    res, secs = _timed(fn, model, seen, sp, axis=axis, **kw)
    if bm is not None:
        from ..engine.prep.skullstrip import restore_outside

        res = restore_outside(res, volume, bm)
    return VolumeResult(res, bm, extracted, secs)


def _nothing_to_fill(volume: np.ndarray, request: rq.InpaintRequest, where: str) -> InpaintResult:
    return InpaintResult(volume, slices=(), axis=request.axis, nothing_to_fill=True, where=where)


def _check_mask(request: rq.VolumeRequest, mask: np.ndarray | None) -> None:
    if isinstance(request, rq.InpaintRequest) and (mask is None) == (request.missing_slices is None):
        raise InputError("give exactly one of a painted mask or missing slices to inpaint")


def _sample(request: rq.SampleRequest, model: Any, progress: ProgressFn | None, cancel: CancelFn | None) -> SampleResult:
    from .. import engine

    vols, secs = _timed(engine.sample, model, request.n, seed=request.seed, progress=progress, cancel=cancel)
    sp = float(model.config.spacing_mm)
    return SampleResult(vols, (float(model.config.slice_spacing_mm), sp, sp), secs)


# ---------------------------------------------------------------------------------------------
# run: arrays in, arrays out


def run(request: rq.Request, volume: np.ndarray | None = None, spacing: Sequence[float] | None = None, *,
        model: Any = None, geometry: Any = None, direction: Sequence[float] | None = None,
        origin: Sequence[float] | None = None, brain_mask: np.ndarray | None = None, mask: np.ndarray | None = None,
        progress: ProgressFn | None = None, cancel: CancelFn | None = None, say: SayFn | None = None) -> Result:
    """Carry out ``request`` on a (z, y, x) ``volume`` with ``spacing`` (mm, same order); returns its result.

    ``model``: a loaded model (None: the shipped one, from the cache). ``geometry`` (io.Geometry) or
    ``direction``/``origin``: the volume's orientation, for skull stripping, anatomical axis names and the
    candidates' world coordinates. ``brain_mask``: a brain mask to use as it is (no skull stripping).
    ``mask``: the painted region to inpaint (an :class:`InpaintRequest` without missing slices). ``progress(done,
    total)`` and ``cancel()`` are polled by the engine; ``say(text)`` gets messages for the user.
    Results are float32 (labels int32) on the input's grid; nothing is written. A :class:`SampleRequest` takes no
    volume.
    """
    if isinstance(request, rq.SampleRequest):
        return _sample(request, model if model is not None else get_model(), progress, cancel)
    if volume is None or spacing is None:
        raise InputError(f"{request.operation} needs a volume and its spacing")
    _check_mask(request, mask)
    vol = np.asarray(volume)
    job = _job(request, spacing, geometry, direction, origin, progress, cancel)
    where = ""
    if isinstance(request, rq.InpaintRequest):
        request, where = _resolve_slices(request, vol, job, say)
        job = replace(job, axis=request.axis if request.missing_slices is not None else job.axis)
        if request.missing_slices == ():
            return _nothing_to_fill(vol, request, where)
    seen, bm = _head(request, vol, job.spacing, job.direction, job.origin, brain_mask, say)
    model = model if model is not None else get_model()
    return _execute(request, model, vol, seen, bm, bm is not None and brain_mask is None, job, mask, where)


# ---------------------------------------------------------------------------------------------
# run_file: files in, files out


def run_file(request: rq.Request, input_path: str | os.PathLike[str] | None, output_path: str | os.PathLike[str], *,
             model_path: str | os.PathLike[str] | None = None, device: str = "auto", model: Any = None,
             volume_index: int | None = None, series_uid: str | None = None,
             mask_path: str | os.PathLike[str] | None = None, brain_mask_path: str | os.PathLike[str] | None = None,
             labels_path: str | os.PathLike[str] | None = None, report_path: str | os.PathLike[str] | None = None,
             brain_mask_out: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None,
             cancel: CancelFn | None = None, say: SayFn | None = None, note: SayFn | None = None) -> Result:
    """Read ``input_path``, carry out ``request``, write the result to ``output_path`` on the input's grid.

    In order: the volume is read (``volume_index``/``series_uid`` for 4D files and DICOM folders), the axis and
    missing slices checked, the painted mask (``mask_path``) and brain mask (``brain_mask_path``) read on its grid,
    the head skull-stripped; only then is the model got from the cache (``model``, or ``model_path`` on
    ``device``) and the engine run. Images on the input's intensity scale are written in its dtype
    (``output_dtype.cast_like``); heatmaps and uncertainty maps as float32. Anomaly: candidate labels to
    ``labels_path``, the JSON report to ``report_path``. ``brain_mask_out``: the brain mask used (refused when
    none was made). The main output is written last (batch: its presence marks the file as done); every write is
    atomic. A :class:`SampleRequest` takes no input and writes ``sample_NNN.nii.gz`` into the folder
    ``output_path``. ``say``/``note``: messages for the user (notes: an option that changes nothing here).
    Output paths are not checked here (``io.check_output_path`` does that, before any work).
    """
    if isinstance(request, rq.SampleRequest):
        return _sample_files(request, Path(output_path), model, model_path, device, progress, cancel)
    from ..io import read_on_grid, read_volume

    if input_path is None:
        raise InputError(f"{request.operation} needs an input volume")
    vol, geo = read_volume(input_path, volume_index=volume_index, series_uid=series_uid)
    job = _job(request, geo.spacing, geo, None, None, progress, cancel)
    mask = read_on_grid(mask_path, vol.shape, geo, "mask") if mask_path is not None else None
    given = read_on_grid(brain_mask_path, vol.shape, geo, "brain mask") if brain_mask_path is not None else None
    _check_mask(request, mask)
    where = ""
    if isinstance(request, rq.InpaintRequest):
        request, where = _resolve_slices(request, vol, job, say)
        job = replace(job, axis=request.axis if request.missing_slices is not None else job.axis)
        if request.missing_slices == ():
            res = _nothing_to_fill(vol, request, where)
            if request.if_none_blank == "skip":
                return res
            # nothing to fill is not an error: the output is the input, unchanged (a copy of its voxels)
            return replace(res, outputs=(save(output_path, vol, geo, header_from=input_path),))
    seen, bm = _head(request, vol, job.spacing, job.direction, job.origin, given, say)
    if brain_mask_out is not None and bm is None:
        raise InputError("--brain-mask-out: no brain mask was made (the volume looks skull-stripped); "
                         "use --skull-strip always to extract the brain anyway")
    model = model if model is not None else _load(model_path, device)
    if isinstance(request, rq.InpaintRequest) and mask is not None and not request.symmetry and note is not None:
        why = symmetry_note(model, vol.shape, geo.spacing, job.axis)
        if why:
            note(f"--no-symmetry changes nothing for this volume: {why}")
    res = _execute(request, model, vol, seen, bm, bm is not None and given is None, job, mask, where)
    outputs: list[Path] = []
    src = {"header_from": input_path}  # NIfTI in, NIfTI out: the input's header (codes, units, TR) is kept
    try:
        if brain_mask_out is not None:
            outputs.append(save(brain_mask_out, bm.astype(np.uint8), geo, **src, descrip="medvae brain mask"))
        if isinstance(res, AnomalyResult):
            if labels_path is not None:
                outputs.append(save(labels_path, res.labels_out(), geo, **src, descrip="medvae anomaly candidates"))
            if report_path is not None:
                report = res.to_json(input=str(Path(input_path).resolve()), model=model.config.name)
                outputs.append(save_json(report_path, report))
            # listed first, written last
            outputs.insert(0, save(output_path, res.heatmap, geo, **src, descrip="medvae anomaly heatmap"))
            return replace(res, outputs=tuple(outputs))
        unc = isinstance(request, rq.UncertaintyRequest)
        like = None if unc else vol.dtype  # images: the input's dtype
        written = res.volume if like is None else cast_like(res.volume, like)
        outputs.insert(0, save(output_path, written, geo, **src, descrip="medvae uncertainty" if unc else None))
        return replace(res, volume=written, outputs=tuple(outputs))
    except BaseException:  # an interruption or a failed write: none of this run's files stay behind
        for path in outputs:
            path.unlink(missing_ok=True)
        raise


def _load(model_path: Any, device: str) -> Any:
    """The model from the cache, logged (name, device, seconds) as the CLI has always said it."""
    t = time.time()
    model = get_model(model_path, device)
    log.info("model %s on %s (%.1fs)", model.config.name, model.device, time.time() - t)
    return model


def _sample_files(request: rq.SampleRequest, outdir: Path, model: Any, model_path: Any, device: str,
                  progress: ProgressFn | None, cancel: CancelFn | None) -> SampleResult:
    """``sample``: volumes from the prior into ``outdir`` (created) as ``sample_000.nii.gz``, ``sample_001...``."""
    from ..io import Geometry

    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} exists and is not a directory")
    if not outdir.parent.resolve().is_dir():
        raise InputError(f"parent directory of {outdir} does not exist")
    res = _sample(request, model if model is not None else _load(model_path, device), progress, cancel)
    outdir.mkdir(exist_ok=True)
    geo = Geometry.identity(res.spacing)
    paths = tuple(save(outdir / f"sample_{i:03d}.nii.gz", v, geo) for i, v in enumerate(res.volumes))
    return replace(res, outputs=paths)


__all__ = ["resolve_axis", "run", "run_file", "save", "save_json", "save_png", "symmetry_note"]
