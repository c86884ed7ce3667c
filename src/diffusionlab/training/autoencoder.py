"""The autoencoder objective of latent diffusion, run by the one training loop (floor 5).

``AutoencoderTrainer(AutoencoderConfig(...), out_dir).train()`` is the ``Trainer`` on an ``AutoencoderConfig``:
the same accelerate set-up, AdamW, LR schedule, EMA, checkpoints and resume, progress bar and TensorBoard; the
objective brings the batch (images and the noise of the posterior draws), the loss and the picture
(``reconstructions.png``). The loss is reconstruction (L1 or L2) plus a small KL term, without the patch-GAN and
perceptual losses Rombach et al. (2022) add for natural images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn

from ..config import AutoencoderConfig
from ..data import DataError
from ..images import save_grid
from ..networks.autoencoder import Autoencoder, gaussian_kl
from ..sampling import sample_seed
from .data import TrainingData, load_training_data
from .objective import Objective, resumed_config, start_weights
from .trainer import Trainer

__all__ = [
    "AutoencoderTrainer",
    "AutoencoderObjective",
    "ReconstructionBatch",
    "autoencoder_loss",
    "fit_autoencoder_config",
    "new_autoencoder",
    "psnr",
    "reconstruction_psnr",
]

RECONSTRUCTIONS_NAME = "reconstructions.png"

AutoencoderTrainer = Trainer  # the one training loop; an AutoencoderConfig makes it train an autoencoder


def autoencoder_loss(
    x: Tensor, recon: Tensor, mean: Tensor, logvar: Tensor, kl_weight: float, kind: str = "l1"
) -> tuple[Tensor, Tensor, Tensor]:
    """The KL-regularised autoencoder loss per pixel: (sum |x - x_hat|^p + kl_weight * sum KL) / pixels
    (Rombach et al. 2022, sec. 3.1 and appendix G; Stable Diffusion's ``kl_weight``), averaged over the batch.

    Returns (loss, mean reconstruction error per pixel, mean KL per latent element), the last two detached.
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"reconstruction loss {kind!r} is unknown; expected 'l1' or 'l2'.")
    err = (recon - x).abs() if kind == "l1" else (recon - x).square()
    kl = gaussian_kl(mean, logvar)
    pixels = x[0].numel()
    loss = (err.flatten(1).sum(1) + kl_weight * kl.flatten(1).sum(1)).mean() / pixels
    return loss, err.detach().mean(), kl.detach().mean()


def psnr(images: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image of images in [0, 1]: 10 log10(1 / MSE), in dB."""
    mse = (images.float() - reference.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(autoencoder: Autoencoder, images: Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1] passed through the autoencoder (posterior means), measured in [0, 1]."""
    recon = autoencoder.decode(autoencoder.encode(images))
    return psnr(((recon + 1) / 2).clamp(0, 1), (images + 1) / 2).mean().item()


def fit_autoencoder_config(config: AutoencoderConfig, x: Tensor) -> AutoencoderConfig:
    """The config fitted to training images (N, C, H, W), a pure step before training: channels and size. The
    result shares nothing with ``config``."""
    if x.ndim != 4:
        raise DataError(
            f"an autoencoder needs images, but dataset {config.data.dataset!r} gives data of shape {tuple(x.shape)}."
        )
    _, c, h, w = x.shape
    if h != w:
        raise DataError(f"training images must be square, got {h}x{w}.")
    net = config.network.model_copy(update={"in_channels": c})
    data = config.data.model_copy(update={"channels": c, "image_size": h, "num_classes": None, "class_names": None})
    config = config.model_copy(update={"network": net, "data": data}, deep=True)
    new_autoencoder(config).network.check_input_size(h, w)
    return config


def new_autoencoder(config: AutoencoderConfig) -> Autoencoder:
    """A freshly initialised ``Autoencoder`` of ``config`` (refused before allocating when over the size limit)."""
    return Autoencoder(config)


class ReconstructionBatch(NamedTuple):
    """Images in [-1, 1] and the standard normal noise of their posterior draws."""

    images: Tensor
    noise: Tensor


class AutoencoderObjective(Objective):
    """Train an ``Autoencoder``: reconstruct images through a posterior draw, with a KL term on the latents."""

    preview_name = RECONSTRUCTIONS_NAME

    def __init__(self, config: AutoencoderConfig, autoencoder: Autoencoder, data: TrainingData) -> None:
        self.config, self.train_config, self.model, self.data = config, config.train, autoencoder, data

    @classmethod
    def prepare(
        cls, config: AutoencoderConfig, data: TrainingData | None, checkpoint: Path | None, device: torch.device
    ) -> AutoencoderObjective:
        """Fit ``config`` to the images, then build the autoencoder: seeded fresh weights, or the checkpoint's."""
        saved = Autoencoder.load(checkpoint) if checkpoint is not None else None
        if saved is not None and saved.config is not None:
            config = resumed_config(saved.config, config)
        data = data if data is not None else load_training_data(config)
        fitted = fit_autoencoder_config(config, data.x)
        set_seed(fitted.train.seed)  # same seed, same initial weights
        autoencoder = new_autoencoder(fitted)
        start_weights(autoencoder, saved)
        return cls(fitted, autoencoder, data)

    def global_batch(self, step: int) -> ReconstructionBatch:
        """Examples and the noise of their posterior draws of ``step``, in that order of draws."""
        tc = self.train_config
        gen = torch.Generator().manual_seed(sample_seed(tc.seed, step))
        idx = torch.randint(len(self.data.x), (tc.batch_size,), generator=gen)
        latent_shape = self.model.latent_shape(tuple(self.data.x.shape[1:]))
        noise = torch.randn((tc.batch_size, *latent_shape), generator=gen)
        return ReconstructionBatch(self.data.x[idx], noise)

    def loss(self, network: nn.Module, batch: ReconstructionBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``autoencoder_loss`` of the reconstructions; logs its reconstruction and KL terms."""
        tc = self.train_config
        recon, mean, logvar = network(batch.images, batch.noise)
        loss, rec, kl = autoencoder_loss(
            batch.images, recon.float(), mean.float(), logvar.float(), tc.kl_weight, tc.reconstruction_loss
        )
        return loss, {"reconstruction": rec, "kl": kl}

    def save(self, folder: str | os.PathLike[str]) -> None:
        self.model.save(folder)

    @torch.no_grad()
    def write_preview(self, path: Path, per_class: int) -> None:
        """A grid of training images (rows "input") above their reconstructions (rows "output")."""
        x = self.data.x
        n = 2 * per_class
        images = x[:: max(1, len(x) // n)][:n]
        recon = self.model.decode(self.model.encode(images))
        rows, labels = [], []
        for start in range(0, len(images), per_class):
            rows += [images[start : start + per_class], recon[start : start + per_class]]
            labels += ["input", "output"]
        grid = torch.cat([((r + 1) / 2).clamp(0, 1) for r in rows])
        save_grid(grid, path, nrow=per_class, row_labels=labels, scale=2)

    def evaluate(self) -> dict[str, Any]:
        """The reconstruction PSNR (dB) of up to 1024 training images, through the EMA weights."""
        return {"metrics": {"psnr": reconstruction_psnr(self.model, self.data.x[:1024])}}
