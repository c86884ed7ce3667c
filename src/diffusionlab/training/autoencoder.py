"""Train the autoencoder of latent diffusion with the diffusion trainer's machinery (floor 5).

``AutoencoderTrainer`` is a ``Trainer``: the same accelerate set-up, AdamW, LR schedule, EMA, checkpoints and
resume, progress bar and TensorBoard. Only the step (a VAE loss instead of a denoising loss) and the final
picture (``reconstructions.png`` instead of ``samples.png``) differ. The loss is reconstruction (L1 or L2) plus
a small KL term, without the patch-GAN and perceptual losses Rombach et al. (2022) add for natural images.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import Tensor

from ..config import AutoencoderConfig
from ..data import DataError
from ..images import save_grid
from ..networks.autoencoder import Autoencoder, gaussian_kl
from ..sampling import sample_seed
from .trainer import Trainer, micro_batches

__all__ = ["AutoencoderTrainer", "autoencoder_loss", "psnr", "reconstruction_psnr"]

RECONSTRUCTIONS_NAME = "reconstructions.png"


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


class AutoencoderTrainer(Trainer):
    """Train an ``Autoencoder``: ``AutoencoderTrainer(AutoencoderConfig(...), out_dir).train()``.

    Writes out_dir/{config.json, model.safetensors, ema.safetensors, reconstructions.png} and, as the diffusion
    trainer, checkpoints/ (resumable), samples/ (reconstructions during training) and tensorboard/.
    """

    pipeline_class = Autoencoder

    def _fit_config_to_data(self, config: AutoencoderConfig) -> AutoencoderConfig:  # type: ignore[override]
        x = self.data.x
        if x.ndim != 4:
            raise DataError(
                f"an autoencoder needs images, but dataset {config.data.dataset!r} gives data of shape "
                f"{tuple(x.shape)}."
            )
        _, c, h, w = x.shape
        if h != w:
            raise DataError(f"training images must be square, got {h}x{w}.")
        net = config.network.model_copy(update={"in_channels": c})
        data = config.data.model_copy(update={"channels": c, "image_size": h, "num_classes": None, "class_names": None})
        config = config.model_copy(update={"network": net, "data": data})
        Autoencoder(config).network.check_input_size(h, w)
        return config

    def _new_pipeline(  # type: ignore[override]
        self, config: AutoencoderConfig, saved: Autoencoder | None
    ) -> tuple[AutoencoderConfig, Autoencoder]:
        set_seed(config.train.seed)  # same seed, same initial weights
        return config, Autoencoder(config)

    # ------------------------------------------------------------------ one step
    def reconstruction_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """This process's slice of the global batch of ``step``: (images, noise of the posterior draws)."""
        tc = self.config.train
        gen = torch.Generator().manual_seed(sample_seed(tc.seed, step))
        idx = torch.randint(len(self.data.x), (tc.batch_size,), generator=gen)
        latent_shape = self.pipeline.latent_shape(tuple(self.data.x.shape[1:]))
        noise = torch.randn((tc.batch_size, *latent_shape), generator=gen)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        lo, hi = rank * tc.batch_size // world, (rank + 1) * tc.batch_size // world
        dev = self.accelerator.device
        return self.data.x[idx[lo:hi]].to(dev), noise[lo:hi].to(dev)

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimisation step of the autoencoder loss; returns (loss over all processes, gradient norm).

        As the diffusion trainer's step: ``grad_accumulation`` micro-batches weighted by their share of this
        process's slice, gradients averaged across processes in the last one's backward pass.
        """
        tc = self.config.train
        acc = self.accelerator
        self.model.train()
        x, noise = self.reconstruction_batch(step)
        parts = micro_batches(x.shape[0], tc.grad_accumulation)
        total = torch.zeros((), device=acc.device)
        terms = torch.zeros(2, device=acc.device)
        for i, part in enumerate(parts):
            weight = (part.stop - part.start) / x.shape[0]
            with contextlib.nullcontext() if i == len(parts) - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    recon, mean, logvar = self.model(x[part], noise[part])
                    loss, rec, kl = autoencoder_loss(
                        x[part], recon.float(), mean.float(), logvar.float(), tc.kl_weight, tc.reconstruction_loss
                    )
                    loss = weight * loss
                acc.backward(loss)
            total += loss.detach().float()
            terms += weight * torch.stack([rec, kl]).float()
        if acc.num_processes > 1:
            total, terms = acc.reduce(total, "mean"), acc.reduce(terms, "mean")
        grad_norm = self.apply_gradients(step, total)
        self.last_terms = (float(terms[0]), float(terms[1]))
        return float(total), grad_norm

    # ------------------------------------------------------------------ files
    def finish(self, step: int) -> None:
        """Write the final autoencoder folder and its ``reconstructions.png`` picture into the output folder."""
        self.pipeline.network = self.accelerator.unwrap_model(self.model)
        self.pipeline.save(self.out_dir)
        self.write_samples(self.out_dir / RECONSTRUCTIONS_NAME, per_class=8)

    @torch.no_grad()
    def write_samples(self, path: Path, per_class: int) -> None:
        """A grid of training images (rows "input") above their reconstructions (rows "output")."""
        x = self.data.x
        n = 2 * per_class
        images = x[:: max(1, len(x) // n)][:n]
        recon = self.pipeline.decode(self.pipeline.encode(images))
        rows, labels = [], []
        for start in range(0, len(images), per_class):
            rows += [images[start : start + per_class], recon[start : start + per_class]]
            labels += ["input", "output"]
        grid = torch.cat([((r + 1) / 2).clamp(0, 1) for r in rows])
        save_grid(grid, path, nrow=per_class, row_labels=labels, scale=2)

    def _log_scalars(self, step: int, loss: float, smooth: float, grad_norm: float) -> None:
        super()._log_scalars(step, loss, smooth, grad_norm)
        writer = self._tensorboard()
        if writer is not None and hasattr(self, "last_terms"):
            writer.add_scalar("train/reconstruction", self.last_terms[0], step)
            writer.add_scalar("train/kl", self.last_terms[1], step)
