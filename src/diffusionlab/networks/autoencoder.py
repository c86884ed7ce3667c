"""The autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1): images <-> a small Gaussian latent (floor 1).

``KLAutoencoder`` is a convolutional VAE: the encoder maps an image to the mean and log-variance of a diagonal
Gaussian over a latent with few channels at 1/f of the resolution (f = 2^(levels - 1)), the decoder maps a
latent back to an image. It is trained with a reconstruction loss plus a small KL term only; Rombach et al.
add a patch-GAN and a perceptual (LPIPS) loss for sharp natural images, which small images here do not need.

``Autoencoder`` is a trained autoencoder as one object, as a ``Pipeline`` is for a diffusion model: a folder of
``config.json`` + ``model.safetensors`` (+ ``ema.safetensors``), or a diffusers ``AutoencoderKL`` folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``; diffusers is imported only then). Images are in the
model space [-1, 1]; latents are unscaled (the diffusion model's config holds the scaling factor).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from ..config import AutoencoderConfig
from ..io import CheckpointError, load_json, make_dir_readable, save_json, save_tensors
from .embeddings import check_size_multiple
from .loading import FallbackWarning, check_format_version, load_weights
from .size import affine_parameters, build_within_limit
from .unet import _groups

__all__ = [
    "KLAutoencoder",
    "DiffusersAutoencoder",
    "Autoencoder",
    "gaussian_kl",
    "reparameterise",
    "latent_scaling_factor",
    "CONFIG_NAME",
    "MODEL_NAME",
    "EMA_NAME",
    "DIFFUSERS_WEIGHTS_NAME",
]

CONFIG_NAME, MODEL_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_LOGVAR_RANGE = (-30.0, 20.0)  # as Stable Diffusion's DiagonalGaussianDistribution, so exp() stays finite


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per element: (mean^2 + var - 1 - logvar) / 2 (Kingma & Welling 2014,
    appendix B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


def reparameterise(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """A posterior draw z = mean + exp(logvar / 2) * noise (Kingma & Welling 2014, eq. 10)."""
    return mean + (0.5 * logvar).exp() * noise


def latent_scaling_factor(latents: Tensor) -> float:
    """1 / std of all latent elements, so scaled latents have unit variance (Rombach et al. 2022, appendix G)."""
    std = latents.detach().double().std().item()
    if not std > 0:
        raise ValueError(f"the latents have standard deviation {std}; cannot scale them to unit variance.")
    return 1.0 / std


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path (the UNet's block without the noise-level embedding)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(in_ch), in_ch),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.GroupNorm(_groups(out_ch), out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class KLAutoencoder(nn.Module):
    """Convolutional VAE: ``encode(x) -> (mean, logvar)`` of shape (N, latent_channels, H/f, W/f), ``decode(z)``.

    One level per ``channel_mults`` entry (width ``base_channels * mult``), each of ``num_res_blocks`` residual
    blocks; a stride-2 convolution between levels, so f = 2^(len(channel_mults) - 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if not channel_mults or any(m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults={list(channel_mults)} must be a non-empty list of positive integers.")
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.num_levels = len(channel_mults)
        chans = [base_channels * m for m in channel_mults]

        enc: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1)]
        ch = chans[0]
        for level, out_ch in enumerate(chans):
            for _ in range(num_res_blocks):
                enc.append(_ResBlock(ch, out_ch))
                ch = out_ch
            if level < self.num_levels - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [
            _ResBlock(ch, ch),
            nn.GroupNorm(_groups(ch), ch),
            nn.SiLU(),
            nn.Conv2d(ch, 2 * latent_channels, 3, padding=1),
        ]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch, 3, padding=1), _ResBlock(ch, ch)]
        for level in reversed(range(self.num_levels)):
            for _ in range(num_res_blocks + 1):
                dec.append(_ResBlock(ch, chans[level]))
                ch = chans[level]
            if level > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
        dec += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def downsample_factor(self) -> int:
        """Latents are this many times smaller than images in height and width."""
        return 2 ** (self.num_levels - 1)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise one clear error when the autoencoder cannot take an image of this size."""
        check_size_multiple(height, width, self.downsample_factor, f"this autoencoder's {self.num_levels} levels")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (N, C, H, W) in [-1, 1] -> mean and log-variance of the latent posterior."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"this autoencoder takes images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}."
            )
        self.check_input_size(x.shape[-2], x.shape[-1])
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*_LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (N, latent_channels, h, w) -> images (N, C, h * f, w * f), about [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"this autoencoder decodes latents of shape (N, {self.latent_channels}, h, w), got {tuple(z.shape)}."
            )
        return self.decoder(z)

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct x through a posterior draw made with ``noise``: (reconstruction, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(reparameterise(mean, logvar, noise)), mean, logvar


class DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` behind ``KLAutoencoder``'s interface (encode -> (mean, logvar), decode)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.in_channels, self.latent_channels = int(cfg.in_channels), int(cfg.latent_channels)
        self.num_levels = len(cfg.block_out_channels)

    downsample_factor = KLAutoencoder.downsample_factor
    check_input_size = KLAutoencoder.check_input_size

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (N, C, H, W) in [-1, 1] -> mean and log-variance of the latent posterior."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"this autoencoder takes images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}."
            )
        self.check_input_size(x.shape[-2], x.shape[-1])
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist  # fp16 / bf16 VAEs: results back in x's dtype
        return dist.mean.to(x.dtype), dist.logvar.to(x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Latents -> images, about [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"this autoencoder decodes latents of shape (N, {self.latent_channels}, h, w), got {tuple(z.shape)}."
            )
        return self.vae.decode(z.to(self.vae.dtype)).sample.to(z.dtype)

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encode(x)
        return self.decode(reparameterise(mean, logvar, noise)), mean, logvar


def _is_diffusers_folder(folder: Path) -> bool:
    try:
        cfg = load_json(folder / CONFIG_NAME)
    except CheckpointError:
        return False
    return isinstance(cfg, dict) and "_class_name" in cfg


def _load_diffusers(folder: Path) -> DiffusersAutoencoder:
    cls_name = load_json(folder / CONFIG_NAME).get("_class_name")
    if cls_name != "AutoencoderKL":
        raise CheckpointError(f"{folder} holds a diffusers {cls_name}; expected an AutoencoderKL.")
    if not (folder / DIFFUSERS_WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder} has no {DIFFUSERS_WEIGHTS_NAME}; only safetensors weights are loaded.")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise CheckpointError(
            f"{folder} is a diffusers AutoencoderKL folder; install diffusers to load it (pip install diffusers)."
        ) from None
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{folder} is not a loadable diffusers AutoencoderKL ({err}).") from None
    return DiffusersAutoencoder(vae)


AUTOENCODER_FORMATS = (1,)  # the autoencoder folder formats this build reads


def _read_config(folder: Path) -> AutoencoderConfig:
    """An autoencoder folder's config.json of a known format, or one clear ``CheckpointError``."""
    raw = load_json(folder / CONFIG_NAME)
    check_format_version(raw, folder / CONFIG_NAME, AUTOENCODER_FORMATS)
    try:
        return AutoencoderConfig.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        raise CheckpointError(f"{folder / CONFIG_NAME} is not an autoencoder config ({where}: {e['msg']}).") from None


def _load_ema(ae: Autoencoder, folder: Path) -> None:
    """The EMA weights into ``ae.ema``; when the file is absent, a ``FallbackWarning`` if training kept an EMA."""
    if (folder / EMA_NAME).exists() or (folder / EMA_NAME).is_symlink():
        ae.ema = copy.deepcopy(ae.network)
        load_weights(ae.ema, folder / EMA_NAME, "the autoencoder in config.json")
    elif ae.config is not None and ae.config.train.ema_decay > 0:
        warnings.warn(
            f"{folder} has no {EMA_NAME}; encoding and decoding use the raw weights.", FallbackWarning, stacklevel=3
        )


def build_kl_autoencoder(n: Any) -> KLAutoencoder:
    """A fresh ``KLAutoencoder`` of an ``AutoencoderNetworkConfig``; refused (naming the count and the limit) before
    its weights are allocated when it has more than ``limits().max_parameters`` parameters."""

    def network(blocks: int) -> KLAutoencoder:
        return KLAutoencoder(n.in_channels, n.latent_channels, n.base_channels, tuple(n.channel_mults), blocks)

    what = (
        f"the autoencoder of base_channels={n.base_channels}, channel_mults={n.channel_mults}, "
        f"num_res_blocks={n.num_res_blocks}"
    )
    count = partial(affine_parameters, network, n.num_res_blocks)
    return build_within_limit(partial(network, n.num_res_blocks), count, what)


class Autoencoder:
    """A trained autoencoder as one object: ``Autoencoder.load(folder).encode(images)`` -> posterior means.

    ``config`` is None for a diffusers folder. ``encode``/``decode`` use the EMA weights when there are some.
    """

    def __init__(
        self, config: AutoencoderConfig | None, network: nn.Module | None = None, ema: nn.Module | None = None
    ) -> None:
        if network is None:
            if config is None:
                raise ValueError("an Autoencoder needs a config or a network.")
            network = build_kl_autoencoder(config.network)
        self.config, self.network, self.ema = config, network, ema

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Autoencoder:
        """Load an autoencoder folder (ours, or a diffusers AutoencoderKL saved with ``save_pretrained``).

        Ours: format 1, weights that fit exactly and are finite (else one CheckpointError); an absent
        ema.safetensors of an autoencoder trained with an EMA is a ``FallbackWarning``.
        """
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_NAME}; expected an autoencoder folder.")
        if _is_diffusers_folder(folder):
            ae = cls(None, _load_diffusers(folder))
        else:
            ae = cls(_read_config(folder))
            load_weights(ae.network, folder / MODEL_NAME, "the autoencoder in config.json")
            _load_ema(ae, folder)
        for net in (ae.network, ae.ema):  # frozen: trainers copy the weights into a fresh network
            if net is not None:
                net.requires_grad_(False).eval()
        return ae

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the folder ``load`` reads; every file atomically, config.json last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.config is None:
            self._save_diffusers(folder)
            return
        save_tensors(self.network.state_dict(), folder / MODEL_NAME)
        if self.ema is not None:
            save_tensors(self.ema.state_dict(), folder / EMA_NAME)
        save_json(self.config.model_dump(mode="json"), folder / CONFIG_NAME)

    def _save_diffusers(self, folder: Path) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".autoencoder.", dir=folder))
        try:
            make_dir_readable(tmp)
            self.network.vae.save_pretrained(str(tmp), safe_serialization=True)
            for name in (DIFFUSERS_WEIGHTS_NAME, CONFIG_NAME):  # the config last: it marks a complete folder
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def copy_for_ema(self) -> nn.Module:
        """A frozen copy of the network to hold EMA weights."""
        ema = copy.deepcopy(self.network).eval()
        ema.requires_grad_(False)
        return ema

    def to(self, device: str | torch.device) -> Autoencoder:
        self.network.to(device)
        if self.ema is not None:
            self.ema.to(device)
        return self

    # ------------------------------------------------------------------ use
    @property
    def module(self) -> Any:
        """The network that encodes and decodes: the EMA one if any, in eval mode."""
        net = self.ema if self.ema is not None else self.network
        return net.eval()

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def in_channels(self) -> int:
        return int(self.module.in_channels)

    @property
    def latent_channels(self) -> int:
        return int(self.module.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return int(self.module.downsample_factor)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """The latent shape (latent_channels, H/f, W/f) of one image of shape (C, H, W); one clear error if the
        autoencoder cannot take it."""
        c, h, w = image_shape
        if c != self.in_channels:
            raise ValueError(f"this autoencoder takes {self.in_channels}-channel images, got {c} channels.")
        self.module.check_input_size(h, w)
        f = self.downsample_factor
        return (self.latent_channels, h // f, w // f)

    def encode(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] -> posterior means (unscaled latents), in batches, on images' device."""
        net, dev = self.module, self.device
        out = [net.encode(images[i : i + batch_size].to(dev))[0] for i in range(0, len(images), batch_size)]
        return torch.cat(out).to(images.device)

    def decode(self, latents: Tensor, batch_size: int = 256) -> Tensor:
        """Unscaled latents -> images about [-1, 1], in batches, on latents' device."""
        net, dev = self.module, self.device
        out = [net.decode(latents[i : i + batch_size].to(dev)) for i in range(0, len(latents), batch_size)]
        return torch.cat(out).to(latents.device)
