"""What the trainers of the 3D heads share: attaching a head to a model, the training loop, the saved record.

A head (``denoiser``, ``slice_head``, ``heal_head``) is a MONAI 3D UNet stored in the model next to the VAE; it is trained with
everything else frozen, starting as the identity (its correction is 0), and the new model is written with the
training options and a validation history in ``training[key]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import Cancelled, InputError
from ..model.checkpoint import save_checkpoint
from ..model.loader import Model, from_config
from ..model.networks import SliceVAEConfig

log = logging.getLogger(__name__)


@dataclass
class HeadTrainConfig:
    """Options the heads' trainers share; each trainer's config adds its own (and its defaults)."""

    train: list[str]
    out: str
    val: list[str] = field(default_factory=list)
    model: str | None = None  # the model to add the head to (default: the shipped model)
    steps: int = 1500
    batch_size: int = 2
    lr: float = 3e-4
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    seed: int = 0
    device: str = "auto"

    def check_common(self, config_cls, positive: tuple[str, ...] = ()) -> int:
        """Refuse bad shared options (InputError); returns the multiple the head's patch sizes must be of."""
        if not self.train:
            raise InputError("no training volumes given")
        for k in ("steps", "batch_size", *positive):
            if int(getattr(self, k)) < 1:
                raise InputError(f"{k} must be a positive integer, not {getattr(self, k)}")
        try:
            return config_cls.from_dict(self.head_dict()).multiple
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def head_dict(self) -> dict:
        return {"channels": list(self.channels), "strides": list(self.strides), "num_res_units": self.num_res_units}


def grid_volumes(model: Model, paths, config=None) -> list[np.ndarray]:
    """Each volume on the model grid (normalised), split into sub-volumes at the model's slice spacing.

    ``config``: another grid's configuration (the healing head's: engine.ops.anomaly.anomaly_config)."""
    from ...io import read_volume
    from ..prep.preprocess import prepare

    cfg = model.config if config is None else config
    out = []
    for path in paths:
        vol, geom = read_volume(path)
        prep = prepare(np.asarray(vol, dtype=np.float32), geom.spacing, cfg, None, force=True)
        out += [np.ascontiguousarray(prep.data[ph :: prep.stride]) for ph in range(prep.stride)]
    return out


def tissue_patch(vols: list[np.ndarray], patch, rng: np.random.Generator) -> np.ndarray:
    """A random patch (float32 copy) of a random volume, centred on tissue mostly; small volumes are zero-padded."""
    pz, py, px = (int(n) for n in patch)
    vol = vols[int(rng.integers(len(vols)))]
    vol = np.pad(vol, [(0, max(0, n - d)) for n, d in zip((pz, py, px), vol.shape, strict=True)])
    for _try in range(10):
        o = [int(rng.integers(0, d - n + 1)) for d, n in zip(vol.shape, (pz, py, px), strict=True)]
        if vol[o[0] + pz // 2, o[1] + py // 2, o[2] + px // 2] > 0.1:
            break
    return vol[o[0] : o[0] + pz, o[1] : o[1] + py, o[2] : o[2] + px].astype(np.float32)


def _fits(entry: dict | None, wanted: dict, config_cls) -> bool:
    """Whether an architecture entry (a head's config dict, or None) is a ``config_cls`` head (same inputs) with the
    hyper-parameters ``wanted``: only then can its weights be loaded into that head."""
    if entry is None:
        return False
    try:
        return config_cls.from_dict(entry).to_dict() == wanted
    except ValueError:  # another number of inputs (another kind of head)
        return False


def head_start(base: Model, key: str, wanted: dict, config_cls, init_from: str | None = None) -> str | None:
    """Where head ``key`` of architecture ``wanted`` starts from on ``base``: ``key`` (its own weights, fine-tuned),
    ``init_from`` (that head's weights, same architecture) or None (a new head, the identity)."""
    arch = base.config.architecture
    if _fits(arch.get(key), wanted, config_cls):
        return key
    if init_from and _fits(arch.get(init_from), wanted, config_cls):
        return init_from
    return None


def attach_head(base: Model, key: str, wanted: dict, config_cls, init_from: str | None = None) -> tuple[Model, bool]:
    """(a CPU copy of ``base`` with head ``key`` of architecture ``wanted``, whether the head starts from trained weights).

    The base model's head is trained further when it has the requested architecture; otherwise a new head
    replaces it, starting from the weights of the base's head ``init_from`` where that one has the same architecture
    (and as the identity if not). All other weights are copied bit for bit.
    """
    start = head_start(base, key, wanted, config_cls, init_from)
    arch = dict(base.config.architecture)
    fine_tune = start == key
    copy_from = start if start not in (None, key) else None
    if not fine_tune:
        if arch.get(key) is not None:
            log.info("the base model's %s has another architecture; training a new one", key)
        arch[key] = wanted
    cfg = base.config
    cfg.architecture = SliceVAEConfig.from_dict(arch).to_dict()
    state = {k: v for k, v in base.net.state_dict().items() if fine_tune or not k.startswith(f"{key}.")}
    if copy_from:
        state.update({f"{key}." + k[len(copy_from) + 1:]: v for k, v in state.items() if k.startswith(f"{copy_from}.")})
    model = from_config(cfg, None, device="cpu")
    missing = model.net.load_state_dict(state, strict=False).missing_keys
    if any(not k.startswith(f"{key}.") for k in missing):
        raise InputError(f"the base model's weights do not fit its architecture ({missing[:2]})")
    return model, fine_tune or copy_from is not None


@dataclass
class HeadRun:
    """What a patch-trained head's trainer starts from (see ``start_head``)."""

    base: Model
    model: Model
    fine_tune: bool
    vols: list[np.ndarray]
    vals: list[np.ndarray]
    data_seconds: float
    device: torch.device
    head: torch.nn.Module
    rng: np.random.Generator
    t0: float
    initialised_from: str | None = None  # another head whose weights the new head started from

    def batch(self, sample: Callable, patch, batch_size: int) -> tuple[torch.Tensor, ...]:
        """``batch_size`` examples of ``sample(vols, patch, rng)`` stacked into tensors on the training device."""
        parts = zip(*(sample(self.vols, patch, self.rng) for _ in range(batch_size)), strict=True)
        return tuple(torch.from_numpy(np.stack(a)).to(self.device) for a in parts)


def start_head(tc: HeadTrainConfig, key: str, config_cls, init_from: str | None = None) -> HeadRun:
    """Check ``tc``, seed, attach head ``key`` to the base model (a new one starting from the base's head ``init_from``
    where it fits, see ``attach_head``) and load the volumes on the model grid."""
    from ..model.loader import load_model, resolve_device

    tc.check()
    rng = np.random.default_rng(tc.seed)
    torch.manual_seed(tc.seed)
    base = load_model(tc.model, device="cpu")
    wanted = config_cls.from_dict(tc.head_dict()).to_dict()
    start = head_start(base, key, wanted, config_cls, init_from)
    model, fine_tune = attach_head(base, key, wanted, config_cls, init_from)
    t0 = time.perf_counter()
    # the healing head works on the anomaly grid (anomaly.grid_mm where the model has one), the others on the model's
    from ..ops.anomaly import anomaly_config

    cfg = anomaly_config(model.config) if key == "heal_head" else model.config
    vols = grid_volumes(model, tc.train, cfg)
    vals = grid_volumes(model, tc.val, cfg) if tc.val else []
    data_seconds = round(time.perf_counter() - t0, 1)
    device = resolve_device(tc.device)
    model.to(device)
    return HeadRun(base, model, fine_tune, vols, vals, data_seconds, device, getattr(model.net, key), rng, t0,
                   start if start not in (None, key) else None)




def train_head_loop(head: torch.nn.Module, net: torch.nn.Module, *, steps: int, lr: float, fine_tune: bool,
                    loss_fn: Callable[[], torch.Tensor], validate: Callable[[], dict] | None, t0: float,
                    callback: Callable[[dict], None] | None, cancel: Callable[[], bool] | None, ema: float = 0.95) -> list[dict]:
    """Train ``head`` (all other parameters of ``net`` frozen) for ``steps`` Adam steps (one-cycle ``lr``).

    ``loss_fn()`` draws a batch and returns its loss; ``validate()`` returns the record's validation entries
    (the key ``val_psnr`` is also reported to ``callback``), run 5 times. Returns the history.
    """
    if not fine_tune:  # start as the identity: zero the last up-convolution and the residual unit after it (its
        # skip path is the identity, so both must be zero for a zero correction)
        for last in [m for m in head.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-2:]:
            torch.nn.init.zeros_(last.weight)
            if last.bias is not None:
                torch.nn.init.zeros_(last.bias)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    history: list[dict] = []
    running = None
    for step in range(1, steps + 1):
        if cancel is not None and cancel():
            raise Cancelled("training cancelled; nothing was written")
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 0.5)  # no normalisation layers: keep steps bounded
        opt.step()
        sched.step()
        lv = float(loss.detach())
        running = lv if running is None else ema * running + (1 - ema) * lv
        info = {"step": step, "steps": steps, "loss": running}
        if step % max(1, steps // 5) == 0 or step == steps:
            rec = {"step": step, "loss": running, "seconds": round(time.perf_counter() - t0, 1)}
            if validate is not None:
                head.eval()
                rec.update(validate())
                head.train()
                info["val_psnr"] = rec.get("val_psnr_head")
            history.append(rec)
        if callback is not None:
            callback(info)
    head.eval()
    return history


def save_with_record(tc, model: Model, base: Model, key: str, t0: float, device, history: list[dict], **extra) -> Path:
    """Write ``model`` to ``tc.out`` with the options of ``tc`` and the history recorded in ``training[key]``."""
    model.to("cpu")
    seconds = time.perf_counter() - t0
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(tc).items() if k not in ("train", "val", "out", "model")}
    record.update(n_train=len(tc.train), n_val=len(tc.val), seconds=round(seconds, 1), device=str(device), history=history,
                  base_model=str(base.path.name) if base.path else None, **extra)
    cfg = model.config
    earlier = (base.config.training or {}).get(key) if extra.get("fine_tuned") else None
    if earlier:  # a fine-tuned head keeps the record of how it was first trained; this run is listed after it,
        # with every option that differs from that first run (seed, augmentation, ...)
        keep = ("steps", "lr", "seconds", "history", "base_model", "fine_tuned")
        entry = {k: v for k, v in record.items() if k in keep or (k != "continued" and earlier.get(k) != v)}
        record = {**earlier, "continued": [*earlier.get("continued", []), entry]}
    cfg.training = {**(cfg.training or {}), key: record}
    path = save_checkpoint(tc.out, cfg, model.net.state_dict())
    log.info("%s trained in %.0f s; wrote %s", key, seconds, path)
    return path
