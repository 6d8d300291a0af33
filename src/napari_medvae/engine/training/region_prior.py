"""Fit the region prior (engine.classical.kriging) of a model on healthy volumes: ``medvae fit-region-prior``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ...errors import InputError
from ..model.checkpoint import save_checkpoint
from ..model.networks import RegionPriorConfig
from .heads import attach_head, grid_volumes

log = logging.getLogger(__name__)


def fit_region_prior(train: Sequence[str], out: str, model: str | None = None, *, patch: int = 15,
                     per_volume: int = 3000, seed: int = 0, power: float = 2.0) -> Path:
    """Add a region prior fitted on the volumes ``train`` to ``model`` (default: the shipped one); write ``out``.

    ``power``: the prior models the intensities raised to it (2, the default: +0.35 dB over 1 on 10 tuning subjects'
    painted regions, better or equal on 10 of 13 T1 and T2-like subjects; 0.5: -0.48 dB, 3: -0.85 dB, 4: -3.2 dB).

    Every other weight is copied unchanged. Returns the new weights path.
    """
    from ..classical import kriging
    from ..model.loader import load_model

    if not train:
        raise InputError("no training volumes given for the region prior")
    if per_volume < 1:
        raise InputError(f"patches per volume must be at least 1, not {per_volume}")
    try:
        cfg = RegionPriorConfig.from_dict({"patch": patch, "power": power})
    except ValueError as exc:
        raise InputError(str(exc)) from None
    t0 = time.perf_counter()
    base = load_model(model, device="cpu")
    new, _ = attach_head(base, "region_prior", cfg.to_dict(), RegionPriorConfig)
    vols = grid_volumes(new, train)
    try:
        rows, mean, n = kriging.fit(vols, cfg.patch, per_volume, seed, power=cfg.power)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    rp = new.net.region_prior
    rp.load_state_dict({"rows": torch.from_numpy(rows), "mean": torch.from_numpy(mean)})
    seconds = round(time.perf_counter() - t0, 1)
    new.config.training = {**(new.config.training or {}), "region_prior": {
        "patch": cfg.patch, "power": cfg.power, "per_volume": per_volume, "seed": seed, "n_train": len(train), "n_patches": n,
        "seconds": seconds, "base_model": str(base.path.name) if base.path else None}}
    path = save_checkpoint(out, new.config, new.net.state_dict())
    log.info("region prior fitted on %d cubes in %.0f s; wrote %s", n, seconds, path)
    return path
