"""Training: the loop that made the shipped default model (``medvae train``).

Data: healthy volumes are loaded once through a MONAI ``CacheDataset`` (read, normalise, resample
in-plane to the model grid). Each step draws random slices with their context, augments them with
MONAI intensity/flip transforms and corrupts them (Rician noise, painted holes, missing slices,
lesion-like blobs and coarse noise); the network learns to return the clean centre slice under the
ELBO (weighted L1 + beta * KL). All randomness comes from ``seed`` (+ rank under torchrun).

After training, the anomaly threshold is calibrated on the held-out healthy volumes: the chosen
quantile of their voxel scores inside the brain becomes heatmap value 1.0.

Under ``torchrun`` (WORLD_SIZE > 1) the same code runs DistributedDataParallel (NCCL on GPUs, gloo
on CPU); each rank draws different samples; rank 0 validates, checkpoints and calibrates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ... import __version__
from ...errors import Cancelled, InputError
from ..model.checkpoint import ModelConfig, save_checkpoint
from ..model.loader import from_config, load_model, resolve_device
from ..model.networks import SliceVAEConfig
from .calibrate import calibrate_model
from .volumes import load_volumes

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Options of ``medvae train`` (see ``medvae train --help``)."""

    train: list[str]
    out: str
    val: list[str] = field(default_factory=list)
    steps: int = 2000
    batch_size: int = 24
    crop: int = 80
    lr: float = 2e-3
    kl_weight: float = 1e-3
    skip_drop: float = 0.25
    seed: int = 0
    device: str = "auto"
    val_every: int = 250
    calibration_quantile: float = 0.999
    channels: tuple[int, int, int] = (16, 32, 64)
    latent_channels: int = 8
    context: int = 3
    spacing_mm: float = 2.0
    slice_spacing_mm: float = 2.0
    init: str | None = None
    sample_log: str | None = None  # if set, each rank appends the (volume, slice) it drew per step as JSON lines
    resume: bool = False
    data_description: str = ""
    name: str = "medvae"

    def check(self) -> None:
        if not self.train:
            raise InputError("no training volumes given")
        for k in ("steps", "batch_size", "crop", "val_every"):
            if int(getattr(self, k)) < 1:
                raise InputError(f"{k} must be a positive integer, not {getattr(self, k)}")
        if self.crop % 4:
            raise InputError(f"crop must be a multiple of 4, not {self.crop}")
        if not 0.5 < self.calibration_quantile < 1:
            raise InputError("calibration quantile must be between 0.5 and 1")


# ---------------------------------------------------------------------------------------------
# data


def _ellipse(h: int, w: int, rng: np.random.Generator, rmin: float, rmax: float) -> np.ndarray:
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(rmin, rmax, 2)
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def corrupt(clean: np.ndarray, outside: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt a clean context stack (K x H x W) -> (image, mask, loss weight for the centre slice)."""
    k, h, w = clean.shape
    c = k // 2
    img = clean.copy()
    mask = np.zeros_like(clean, dtype=bool)
    mask[outside] = True
    weight = np.ones((h, w), dtype=np.float32)
    brain = clean > 0.1
    if rng.random() < 0.45:  # lesion-like blobs: hyper- or hypo-intense, spanning a few slices
        for _ in range(rng.integers(1, 3)):
            blob2d = _ellipse(h, w, rng, 2.0, 9.0)
            factor = rng.uniform(1.3, 1.9) if rng.random() < 0.5 else rng.uniform(0.15, 0.6)
            extent = rng.integers(0, c + 1)
            for j in range(max(0, c - extent), min(k, c + extent + 1)):
                region = blob2d & brain[j]
                img[j][region] *= factor
            weight[blob2d & brain[c]] = 4.0
    if rng.random() < 0.25:  # coarse noise (Kascenas et al. 2022): low-frequency intensity changes
        coarse = rng.normal(0, rng.uniform(0.05, 0.2), (k, max(2, h // 8), max(2, w // 8))).astype(np.float32)
        up = F.interpolate(torch.from_numpy(coarse)[None], size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
        img = img + up * brain
        weight[brain[c]] = np.maximum(weight[brain[c]], 2.0)
    if rng.random() < 0.5:  # Rician noise, everywhere (background included, as on a scanner)
        sigma = rng.uniform(0.005, 0.12)
        img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    if rng.random() < 0.3:  # painted holes: centre slice, sometimes through neighbours
        for _ in range(rng.integers(1, 3)):
            hole = _ellipse(h, w, rng, 2.0, 14.0) if rng.random() < 0.6 else _box(h, w, rng, 3, 28)
            extent = rng.integers(0, c + 1) if rng.random() < 0.5 else 0
            for j in range(max(0, c - extent), min(k, c + extent + 1)):
                mask[j] |= hole
            weight[hole] = np.maximum(weight[hole], 4.0)
    if rng.random() < 0.3:  # missing slices: a run of 1-3 slices containing the centre one
        length = int(rng.choice([1, 1, 2, 3]))
        lo = c - int(rng.integers(0, length))
        mask[max(0, lo) : lo + length] = True
        if rng.random() < 0.2:  # and sometimes another missing slice further out
            mask[int(rng.integers(0, k))] = True
        weight = np.maximum(weight, 3.0)
    img = np.where(mask, 0.0, img).astype(np.float32)
    return img, mask, weight


def _box(h: int, w: int, rng: np.random.Generator, smin: int, smax: int) -> np.ndarray:
    bh, bw = rng.integers(smin, smax + 1, 2)
    y0, x0 = rng.integers(0, max(1, h - bh)), rng.integers(0, max(1, w - bw))
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y0 + bh, x0 : x0 + bw] = True
    return m


class SliceSampler:
    """Draws corrupted (input, target, weight) training batches from model-grid volumes."""

    def __init__(self, volumes: list[tuple[np.ndarray, int]], context: int, crop: int, seed: int, augment: bool = True):
        from monai.transforms import Compose, RandAdjustContrast, RandFlip, RandScaleIntensity

        self.drawn: list[tuple[int, int]] = []  # (volume, slice) pairs of the last batch
        self.volumes = [v for v, _ in volumes]
        self.strides = [s for _, s in volumes]
        self.context, self.crop = context, crop
        self.rng = np.random.default_rng(seed)
        self.augment = augment
        self.aug = Compose([
            RandFlip(prob=0.5, spatial_axis=1),
            RandScaleIntensity(factors=0.1, prob=0.8),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        ])
        self.aug.set_random_state(seed=seed)
        # slices with some brain in them, per volume
        self.slices = [np.flatnonzero((v > 0.1).mean(axis=(1, 2)) > 0.01) for v in self.volumes]

    def one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        vi = int(rng.integers(len(self.volumes)))
        vol = self.volumes[vi]
        zi = int(rng.choice(self.slices[vi]))
        self.drawn.append((vi, zi))
        offs = np.arange(-self.context, self.context + 1) * self.strides[vi]
        nb = zi + offs
        outside_k = (nb < 0) | (nb >= vol.shape[0])
        stack = vol[np.clip(nb, 0, vol.shape[0] - 1)]
        h, w = stack.shape[1:]
        cs = self.crop
        if h < cs or w < cs:
            stack = np.pad(stack, ((0, 0), (0, max(0, cs - h)), (0, max(0, cs - w))))
            h, w = stack.shape[1:]
        # crops centred on brain more often than not
        ys, xs = np.nonzero(stack[self.context] > 0.1)
        if len(ys) and rng.random() < 0.9:
            j = rng.integers(len(ys))
            y0 = int(np.clip(ys[j] - cs // 2, 0, h - cs))
            x0 = int(np.clip(xs[j] - cs // 2, 0, w - cs))
        else:
            y0, x0 = int(rng.integers(0, h - cs + 1)), int(rng.integers(0, w - cs + 1))
        clean = np.ascontiguousarray(stack[:, y0 : y0 + cs, x0 : x0 + cs], dtype=np.float32)
        if self.augment:
            clean = np.asarray(self.aug(clean), dtype=np.float32)
            clean = np.clip(clean, 0, None)
        clean[outside_k] = 0.0
        outside = np.broadcast_to(outside_k[:, None, None], clean.shape)
        img, mask, weight = corrupt(clean, outside, rng)
        x = np.concatenate([img, mask.astype(np.float32)], axis=0)
        return x, clean[self.context][None], weight[None]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.drawn = []
        xs, ys, ws = zip(*(self.one() for _ in range(n)), strict=True)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ws))


def elbo_loss(pred, target, weight, mu, logvar, kl_weight: float) -> tuple[torch.Tensor, float, float]:
    """Weighted L1 reconstruction + kl_weight * mean KL(q(z|x) || N(0, I)); returns (loss, rec, kl)."""
    rec = (weight * (pred - target).abs()).sum() / weight.sum()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return rec + kl_weight * kl, float(rec.detach()), float(kl.detach())


# ---------------------------------------------------------------------------------------------
# distributed helpers


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


# ---------------------------------------------------------------------------------------------
# state for resuming (safetensors + JSON, never pickle)


def _state_paths(out: str) -> tuple[Path, Path]:
    stem = Path(out).with_suffix("") if Path(out).suffix == ".safetensors" else Path(out)
    return stem.with_name(stem.name + ".trainstate.safetensors"), stem.with_name(stem.name + ".trainstate.json")


def _save_state(out: str, net, opt, step: int, history: list) -> None:
    from safetensors.torch import save

    from ..model.checkpoint import _atomic_write_bytes

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            st = opt.state.get(p, {})
            for name in ("exp_avg", "exp_avg_sq"):
                if name in st:
                    tensors[f"opt.{i}.{j}.{name}"] = st[name].detach().cpu().contiguous()
    wpath, jpath = _state_paths(out)
    _atomic_write_bytes(wpath, save(tensors))
    _atomic_write_bytes(jpath, json.dumps({"step": step, "history": history}).encode())


def _load_state(out: str, net, opt) -> tuple[int, list]:
    from safetensors.torch import load_file

    wpath, jpath = _state_paths(out)
    if not (wpath.exists() and jpath.exists()):
        return 0, []
    tensors = load_file(str(wpath))
    meta = json.loads(jpath.read_text())
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    step = int(meta["step"])
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            key = f"opt.{i}.{j}."
            if key + "exp_avg" in tensors:
                opt.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tensors[key + "exp_avg"].to(p.device),
                    "exp_avg_sq": tensors[key + "exp_avg_sq"].to(p.device),
                }
    return step, list(meta.get("history", []))


Callback = Callable[[dict], None]


def train(tc: TrainConfig, callback: Callback | None = None, cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or fine-tune / resume) a model; returns the path of the saved weights.

    ``callback`` receives dicts {"step", "steps", "loss", "val_loss"?} after every step;
    ``cancel()`` returning True stops after the current step, saves the model so far and returns.
    """
    tc.check()
    world, rank, local = _dist_info()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and tc.device in ("auto", "cuda") else "gloo"
        dist.init_process_group(backend=backend)
        device = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
    else:
        device = resolve_device(tc.device)

    if tc.init:
        base = load_model(tc.init, device="cpu")
        cfg = base.config
        state = base.net.state_dict()
    else:
        arch = SliceVAEConfig(context=tc.context, channels=tuple(tc.channels), latent_channels=tc.latent_channels,
                              prefill=True).to_dict()
        cfg = ModelConfig(architecture=arch, name=tc.name, spacing_mm=tc.spacing_mm, slice_spacing_mm=tc.slice_spacing_mm)
        state = None
    model = from_config(cfg, state, device="cpu")
    model.to(device)
    net = model.net

    t0 = time.time()
    vols = load_volumes(tc.train, cfg)
    vals = load_volumes(tc.val, cfg) if tc.val else []
    if not vals:
        if len(vols) < 2:
            raise InputError("need at least 2 training volumes (or --val volumes) to hold some out for validation")
        n_val = max(1, len(vols) // 8)
        vals, vols = vols[:n_val], vols[n_val:]
    log.info("loaded %d train / %d val volumes in %.1fs", len(vols), len(vals), time.time() - t0)

    sampler = SliceSampler(vols, cfg.architecture["context"], tc.crop, seed=tc.seed * 1000 + rank)
    val_sampler = SliceSampler(vals, cfg.architecture["context"], tc.crop, seed=10_000 + tc.seed, augment=False)
    val_batches = [val_sampler.batch(tc.batch_size) for _ in range(max(2, 192 // tc.batch_size))]

    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=1e-4)
    start, history = (_load_state(tc.out, net, opt) if tc.resume else (0, []))
    ddp = net
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(tc.seed * 7919 + rank)
    amp = torch.bfloat16 if device.type == "cuda" else None
    val_loss = float("nan")
    cancelled = False
    t_train = time.time()
    step = start - 1  # resuming a run whose last state is already at tc.steps: the loop does not run
    for step in range(start, tc.steps):
        if cancel is not None and cancel():
            cancelled = True
            break
        net.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc.steps, tc.lr)
        x, y, w = (t.to(device) for t in sampler.batch(tc.batch_size))
        if tc.sample_log:
            with open(f"{tc.sample_log}.rank{rank}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"rank": rank, "step": step + 1, "drawn": sampler.drawn}) + "\n")
        gate = (torch.rand((x.shape[0], 1, 1, 1), generator=gen) > tc.skip_drop).float().to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            pred, mu, logvar = ddp(x, sample_latent=True, gate=gate)
        loss, rec, kl = elbo_loss(pred.float(), y, w, mu.float(), logvar.float(), tc.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        info = {"step": step + 1, "steps": tc.steps, "loss": float(loss.detach()), "rec": rec, "kl": kl}
        last = step + 1 == tc.steps
        if rank == 0 and ((step + 1) % tc.val_every == 0 or last):
            val_loss = _validate(net, val_batches, device, tc.kl_weight)
            info["val_loss"] = val_loss
            history.append({"step": step + 1, "loss": float(loss.detach()), "val_loss": val_loss,
                             "seconds": round(time.time() - t_train, 1)})
            log.debug("step %d/%d loss %.4f val %.4f", step + 1, tc.steps, float(loss.detach()), val_loss)
            _save_state(tc.out, net, opt, step + 1, history)
        if callback is not None and rank == 0:
            callback(info)

    if distributed:  # training collectives are done; no barrier: rank 0's calibration may outlast the NCCL timeout
        import torch.distributed as dist

        dist.destroy_process_group()
    path = Path(tc.out)
    if rank == 0:
        net.eval()
        if np.isnan(val_loss):
            val_loss = _validate(net, val_batches, device, tc.kl_weight)
        calibrate_model(model, vals, tc.calibration_quantile)
        prev = model.config.training or {}
        model.config.training = {
            "data": tc.data_description or f"{len(tc.train)} volumes",
            "n_train": len(vols),
            "n_val": len(vals),
            "steps": (prev.get("steps", 0) if tc.init else 0) + (step + 1 if not cancelled else step),
            "batch_size": tc.batch_size * world,
            "crop": tc.crop,
            "lr": tc.lr,
            "kl_weight": tc.kl_weight,
            "skip_drop": tc.skip_drop,
            "seed": tc.seed,
            "world_size": world,
            "device": str(device),
            "seconds": round(time.time() - t0, 1),
            "val_loss": round(val_loss, 5),
            "history": history,
            "stopped_early": cancelled,
            "fine_tuned_from": tc.init,
        }
        model.config.package_version = __version__
        model.config.name = tc.name
        model.config.sample_shape = [int(s) for s in vals[0][0].shape]
        path = save_checkpoint(tc.out, model.config, net.state_dict())
    if cancelled and rank == 0:
        log.info("training stopped by the user at step %d; model saved", step)
    return path


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 2 % of ``lr``."""
    import math

    warm = max(1, int(0.05 * steps))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _validate(net, batches, device, kl_weight: float) -> float:
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for x, y, w in batches:
            pred, mu, logvar = net(x.to(device))
            loss, _, _ = elbo_loss(pred.float(), y.to(device), w.to(device), mu.float(), logvar.float(), kl_weight)
            total += float(loss)
    return total / len(batches)


def train_config_dict(tc: TrainConfig) -> dict:
    return asdict(tc)


__all__ = ["TrainConfig", "train", "corrupt", "SliceSampler", "Cancelled"]
