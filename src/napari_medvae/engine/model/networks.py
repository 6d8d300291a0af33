"""Network architectures, built from MONAI blocks.

``SliceVAE`` is a 2.5D context-encoding VAE (after Zimmerer et al., MICCAI 2019): the encoder sees
``2*context+1`` neighbouring slices with masked voxels zeroed plus one mask channel per slice, and
the decoder predicts the clean centre slice as a residual to the input centre slice, whose masked voxels
are first given a classical estimate (``prefill``: interpolation along the slice axis, else normalised
convolution), so the network learns to beat that estimate rather than start from zero. The bottleneck (1/4 resolution, ``latent_channels``)
is variational (mu, log-variance, KL to N(0, I)). Encoder-to-decoder skip connections carry fine
detail for denoising and inpainting; during training they are dropped for a fraction of samples
(``skip_drop``), which keeps the decoder able to generate from the latent alone (``sample``).

Tensors: input B x 2K x H x W (K = 2*context+1; first K channels intensities, last K masks),
output B x 1 x H x W; H and W must be multiples of 4.

Optional ``denoiser`` head (``architecture.denoiser``): a 3D MONAI UNet that corrects the denoiser's
classical Wiener stage. Its input is B x 3 x D x H x W (noisy volume, Wiener estimate, noise sigma as a
constant channel), its output a residual added to the Wiener estimate; D, H, W multiples of
2**(levels - 1). It is trained after the VAE (``medvae train-denoiser``), with the VAE frozen.

Optional ``slice_head`` (``architecture.slice_head``): the same kind of 3D UNet for missing slices. Its input
is B x 2 x D x H x W (the classical first guess, the mask of missing slices), its output a correction added
inside the mask (``medvae train-slice-head``). Inpainting blends it with the VAE's refinement (see inpaint).
Optional ``slice_head_single`` (``architecture.slice_head_single``): a second such head, trained on single missing
slices only (``medvae train-slice-head --single``); where a model has it, it fills the runs of one missing slice.

Optional ``heal_head`` (``architecture.heal_head``): the same kind of 3D UNet, trained to remove synthetic blobs
and coarse intensity changes from healthy volumes (a denoising autoencoder, after Kascenas et al., MIDL 2022). Its
input is B x 1 x D x H x W (the volume), its output a correction to it (``medvae train-heal-head``). Anomaly scoring
uses its residual next to the VAE's (see anomaly).

Optional ``region_prior`` (``architecture.region_prior``): no network, two buffers: the mean and the octant rows of
the covariance of balls in ``patch``-sided cubes of healthy volumes (``medvae fit-region-prior``, see classical.kriging).
Inpainting fills painted regions that fit in such a ball with their conditional mean under it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from ..classical.kriging import check_patch, check_power, covariance, octant_index, support


@dataclass
class SliceVAEConfig:
    """Architecture hyper-parameters; round-trips through the model's JSON config."""

    context: int = 2
    channels: tuple[int, int, int] = (16, 32, 64)
    latent_channels: int = 8
    norm_groups: int = 8
    prefill: bool = False
    prefill_order: int = 1
    denoiser: dict | None = None
    slice_head: dict | None = None
    slice_head_single: dict | None = None
    heal_head: dict | None = None
    region_prior: dict | None = None
    type: str = field(default="SliceVAE")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        for k in ("denoiser", "slice_head", "slice_head_single", "heal_head", "region_prior"):
            if d[k] is None:
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SliceVAEConfig:
        d = dict(d)
        if d.get("type", "SliceVAE") != "SliceVAE":
            raise ValueError(f"unknown architecture type {d.get('type')!r}; this version knows 'SliceVAE'")
        d["channels"] = tuple(int(c) for c in d.get("channels", (16, 32, 64)))
        if len(d["channels"]) != 3 or min(d["channels"]) < 1:
            raise ValueError(f"architecture.channels must be 3 positive integers, not {d['channels']}")
        for c in d["channels"]:
            if c % int(d.get("norm_groups", 8)):
                raise ValueError(f"every channel count must be a multiple of norm_groups ({d.get('norm_groups', 8)})")
        if d.get("denoiser") is not None:
            d["denoiser"] = DenoiserConfig.from_dict(d["denoiser"]).to_dict()
        if d.get("slice_head") is not None:
            d["slice_head"] = SliceHeadConfig.from_dict(d["slice_head"]).to_dict()
        if d.get("slice_head_single") is not None:
            d["slice_head_single"] = SingleSliceHeadConfig.from_dict(d["slice_head_single"]).to_dict()
        if d.get("heal_head") is not None:
            d["heal_head"] = HealHeadConfig.from_dict(d["heal_head"]).to_dict()
        if d.get("region_prior") is not None:
            d["region_prior"] = RegionPriorConfig.from_dict(d["region_prior"]).to_dict()
        return cls(**d)

    @property
    def slices(self) -> int:
        return 2 * self.context + 1


@dataclass
class DenoiserConfig:
    """The 3D denoising head: MONAI UNet channels per level, strides between levels, residual units per block."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    inputs: int = 3  # noisy, Wiener estimate, sigma

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "strides": list(self.strides), "num_res_units": self.num_res_units,
                "inputs": self.inputs}

    KEY, INPUTS, WHAT = "denoiser", 3, "noisy, Wiener estimate, sigma"

    @classmethod
    def from_dict(cls, d: dict) -> DenoiserConfig:
        name = f"architecture.{cls.KEY}"
        if not isinstance(d, dict):
            raise ValueError(f"{name} must be an object, not {type(d).__name__}")
        unknown = sorted(set(d) - {"channels", "strides", "num_res_units", "inputs"})
        if unknown:
            raise ValueError(f"unknown {name} fields {unknown}")
        ch = tuple(int(c) for c in d.get("channels", (16, 32, 64, 128)))
        if not 2 <= len(ch) <= 6 or min(ch) < 1:
            raise ValueError(f"{name}.channels must be 2-6 positive integers, not {list(ch)}")
        st = tuple(int(v) for v in d.get("strides", (2,) * (len(ch) - 1)))
        if len(st) != len(ch) - 1 or not all(v in (1, 2) for v in st):
            raise ValueError(f"{name}.strides must be {len(ch) - 1} values of 1 or 2, not {list(st)}")
        ru = int(d.get("num_res_units", 2))
        if not 0 <= ru <= 4:
            raise ValueError(f"{name}.num_res_units must be 0-4, not {ru}")
        if int(d.get("inputs", cls.INPUTS)) != cls.INPUTS:
            raise ValueError(f"{name}.inputs must be {cls.INPUTS} ({cls.WHAT})")
        return cls(ch, st, ru, cls.INPUTS)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return int(np.prod(self.strides))


@dataclass
class SliceHeadConfig(DenoiserConfig):
    """The 3D missing-slice head: same UNet hyper-parameters as the denoising head, 2 inputs."""

    inputs: int = 2  # first guess, mask of missing slices
    KEY, INPUTS, WHAT = "slice_head", 2, "first guess, mask"


@dataclass
class SingleSliceHeadConfig(SliceHeadConfig):
    """The 3D single-slice head: a missing-slice head trained on single missing slices only (runs of 1), which the
    general head fills less well than 3-slice gaps; it fills the single slices, the general head the longer runs."""

    KEY, INPUTS, WHAT = "slice_head_single", 2, "first guess, mask (single missing slices)"


@dataclass
class HealHeadConfig(DenoiserConfig):
    """The 3D healing head (anomaly scoring): same UNet hyper-parameters as the denoising head, 1 input."""

    inputs: int = 1  # the volume
    KEY, INPUTS, WHAT = "heal_head", 1, "the volume"


@dataclass
class RegionPriorConfig:
    """The region prior (inpainting of painted regions): ball diameter (cube side) in voxels of the model grid (odd, 5-21)
    and the power the intensities are raised to before the Gaussian model (1: none; models without it: 1)."""

    patch: int = 15
    power: float = 1.0

    def to_dict(self) -> dict:
        return {"patch": self.patch, "power": self.power}

    @classmethod
    def from_dict(cls, d: dict) -> RegionPriorConfig:
        if not isinstance(d, dict):
            raise ValueError(f"architecture.region_prior must be an object, not {type(d).__name__}")
        unknown = sorted(set(d) - {"patch", "power"})
        if unknown:
            raise ValueError(f"unknown architecture.region_prior fields {unknown}")
        return cls(check_patch(d.get("patch", 15)), check_power(d.get("power", 1.0)))


class RegionPrior(nn.Module):
    """Buffers of the region prior: ``mean`` (the ball's voxels) and ``rows`` (the covariance's octant rows)."""

    def __init__(self, cfg: RegionPriorConfig):
        super().__init__()
        p = cfg.patch
        self.patch = p
        self.power = cfg.power
        self.register_buffer("mean", torch.zeros(len(support(p))))
        self.register_buffer("rows", torch.zeros(len(octant_index(p)), len(support(p))))
        self._cov: np.ndarray | None = None

    def _load_from_state_dict(self, *args, **kwargs):  # new buffers: the cached full covariance is stale
        self._cov = None
        super()._load_from_state_dict(*args, **kwargs)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(full covariance, mean) as float64 arrays (the covariance is built once and cached)."""
        if self._cov is None:
            self._cov = covariance(self.rows.detach().float().cpu().numpy(), self.patch)
        return self._cov, self.mean.detach().double().cpu().numpy()


def build_denoiser(cfg: DenoiserConfig) -> nn.Module:
    """The MONAI 3D UNet of the denoising head (no normalisation layers: tiles and whole volumes agree)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=cfg.inputs, out_channels=1, channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units, norm=None)


def prefill(x: torch.Tensor, k: int, iterations: int = 10, order: int = 1) -> torch.Tensor:
    """Replace masked voxels of a B x 2K x H x W input by a classical first guess.

    Along the slice axis: linear (``order`` 1) or, where two known voxels lie on each side, cubic (``order``
    3) interpolation between the nearest known voxels above and below (the nearest one when only one side
    is known); voxels with no known voxel in their column: in-plane
    normalised convolution (7 x 7 box, repeated). The network then only learns a correction to it.
    """
    img, m = x[:, :k], x[:, k:]
    masked_slices = [j for j in range(k) if bool(m[:, j].any())]
    if not masked_slices:  # nothing to fill (the usual case for reconstruct/denoise/anomaly)
        return x
    known = 1.0 - m
    out = img.clone()
    avail = known.clone()
    for j in masked_slices:
        side = []
        for step in (-1, 1):
            z = torch.zeros_like(img[:, 0])
            val, dist, found, val2, dist2, found2 = z, z, z, z, z, z
            for d in range(1, k):
                i = j + step * d
                if not 0 <= i < k:
                    break
                sel2 = known[:, i] * found * (1.0 - found2)  # second known voxel on this side
                val2, dist2, found2 = val2 + sel2 * img[:, i], dist2 + sel2 * d, found2 + sel2
                sel = known[:, i] * (1.0 - found)
                val, dist, found = val + sel * img[:, i], dist + sel * d, found + sel
            side.append((val, dist, found, val2, dist2, found2))
        (v0, d0, f0, v0b, d0b, f0b), (v1, d1, f1, v1b, d1b, f1b) = side
        both = f0 * f1
        interp = (v0 * d1 + v1 * d0) / (d0 + d1).clamp_min(1.0)
        if order == 3:  # cubic Lagrange through two known voxels on each side, where there are four
            four = both * f0b * f1b
            pos = [-d0b, -d0, d1, d1b]
            vals = [v0b, v0, v1, v1b]
            cubic = torch.zeros_like(interp)
            for a in range(4):
                w = torch.ones_like(interp)
                for b in range(4):
                    if a != b:
                        w = w * (0 - pos[b]) / torch.where(four > 0, pos[a] - pos[b], torch.ones_like(interp))
                cubic = cubic + w * vals[a]
            interp = torch.where(four > 0, cubic, interp)
        est = both * interp + f0 * (1 - f1) * v0 + f1 * (1 - f0) * v1
        has = (f0 + f1).clamp(max=1.0)
        mj = m[:, j]
        out[:, j] = img[:, j] * (1 - mj) + est * mj * has
        avail[:, j] = 1 - mj * (1 - has)
    for _ in range(iterations):
        need = 1.0 - avail
        if not bool(need.any()):
            break
        num = F.avg_pool2d(out * avail, 7, stride=1, padding=3)
        den = F.avg_pool2d(avail, 7, stride=1, padding=3)
        newly = need * (den > 0)
        out = out + newly * num / den.clamp_min(1e-6)
        avail = avail + newly
    return torch.cat([out, m], dim=1)


def _fuse_swish(module: nn.Module) -> None:
    """Replace MONAI's Swish (x * sigmoid(x), two kernels) by torch's SiLU (the same function, one kernel).

    Activations hold no weights, so checkpoints are unchanged; reconstruction of a 1 mm brain is about 10 %
    faster on CPU.
    """
    from monai.networks.blocks.activation import Swish

    for name, child in module.named_children():
        if isinstance(child, Swish) and float(child.alpha) == 1.0:
            setattr(module, name, nn.SiLU())
        else:
            _fuse_swish(child)


def _conv(cin: int, cout: int, groups: int, strides: int = 1, transposed: bool = False) -> nn.Module:
    return Convolution(
        spatial_dims=2, in_channels=cin, out_channels=cout, strides=strides, kernel_size=3,
        act="SWISH", norm=("GROUP", {"num_groups": groups}), is_transposed=transposed,
        **({"output_padding": strides - 1} if transposed else {}),
    )


def _res(c: int, groups: int) -> nn.Module:
    return ResidualUnit(spatial_dims=2, in_channels=c, out_channels=c, subunits=2, act="SWISH",
                        norm=("GROUP", {"num_groups": groups}))


class SliceVAE(nn.Module):
    """2.5D context-encoding VAE with droppable skip connections (see module docstring)."""

    def __init__(self, cfg: SliceVAEConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2, g = *cfg.channels, cfg.norm_groups
        k = cfg.slices
        self.enc0 = nn.Sequential(_conv(2 * k, c0, g), _conv(c0, c0, g))
        self.enc1 = nn.Sequential(_conv(c0, c1, g, strides=2), _res(c1, g))
        self.enc2 = nn.Sequential(_conv(c1, c2, g, strides=2), _res(c2, g))
        self.to_latent = nn.Conv2d(c2, 2 * cfg.latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(cfg.latent_channels, c2, 1), _res(c2, g))
        self.up1 = _conv(c2, c1, g, strides=2, transposed=True)
        self.dec1 = nn.Sequential(_conv(2 * c1, c1, g), _res(c1, g))
        self.up0 = _conv(c1, c0, g, strides=2, transposed=True)
        self.dec0 = _conv(2 * c0, c0, g)
        self.out = nn.Conv2d(c0, 1, 1)
        _fuse_swish(self)
        self.denoiser = build_denoiser(DenoiserConfig.from_dict(cfg.denoiser)) if cfg.denoiser else None
        self.slice_head = build_denoiser(SliceHeadConfig.from_dict(cfg.slice_head)) if cfg.slice_head else None
        self.slice_head_single = (build_denoiser(SingleSliceHeadConfig.from_dict(cfg.slice_head_single))
                                  if cfg.slice_head_single else None)
        self.heal_head = build_denoiser(HealHeadConfig.from_dict(cfg.heal_head)) if cfg.heal_head else None
        self.region_prior = RegionPrior(RegionPriorConfig.from_dict(cfg.region_prior)) if cfg.region_prior else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return (mu, logvar, skips) for input B x 2K x H x W."""
        s0 = self.enc0(x)
        s1 = self.enc1(s0)
        h = self.enc2(s1)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0), [s0, s1]

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor] | None, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Decode latent z (B x L x H/4 x W/4); ``skips`` None means generate from the latent alone."""
        h = self.from_latent(z)
        h = self.up1(h)
        s1 = torch.zeros_like(h) if skips is None else skips[1]
        if gate is not None and skips is not None:
            s1 = s1 * gate
        h = self.dec1(torch.cat([h, s1], dim=1))
        h = self.up0(h)
        s0 = torch.zeros_like(h) if skips is None else skips[0]
        if gate is not None and skips is not None:
            s0 = s0 * gate
        h = self.dec0(torch.cat([h, s0], dim=1))
        return self.out(h)

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """The centre slice of the (pre-filled) input: B x 1 x H x W."""
        c = self.cfg.context
        return x[:, c : c + 1]

    def forward(self, x: torch.Tensor, *, sample_latent: bool = False, gate: torch.Tensor | None = None,
                generator: torch.Generator | None = None, prefilled: bool = False, both: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (prediction B x 1 x H x W, mu, logvar). ``sample_latent`` draws z ~ q(z|x).

        ``both``: prediction B x 2 x H x W, the normal one and the one decoded from the latent alone (gate 0),
        sharing one encoder pass (anomaly scoring needs both).

        ``prefilled``: masked voxels already hold a first guess made on the whole volume (inpainting);
        only masked voxels still at 0 (e.g. context beyond the volume's ends) get the in-window prefill.
        """
        if self.cfg.prefill:
            k = self.cfg.slices
            if prefilled:
                img, m = x[:, :k], x[:, k:]
                filled = prefill(torch.cat([img, m * (img == 0)], dim=1), k, order=self.cfg.prefill_order)
                x = torch.cat([filled[:, :k], m], dim=1)
            else:
                x = prefill(x, k, order=self.cfg.prefill_order)
        mu, logvar, skips = self.encode(x)
        if sample_latent:
            eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        # residual learning (as in DnCNN): the known centre slice is added back, gated with the skips so
        # that a decoder without skips still learns to produce whole images
        base = self.centre(x) if gate is None else self.centre(x) * gate
        pred = self.decode(z, skips, gate) + base
        if both:
            off = torch.zeros((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype)
            pred = torch.cat([pred, self.decode(z, skips, off) + self.centre(x) * off], dim=1)
        return pred, mu, logvar


def build_network(arch: dict) -> SliceVAE:
    """Build the network that a model config's ``architecture`` entry describes."""
    return SliceVAE(SliceVAEConfig.from_dict(arch))
