"""A trained model as one object: config + network (+ EMA network) + process + denoiser (floor 4).

A model is a folder, as in diffusers: ``config.json`` (the whole ``ModelConfig``), ``model.safetensors`` and
``ema.safetensors``. Loading never runs pickled code.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from .config import ModelConfig, NetworkConfig
from .denoisers import Denoiser, DenoiserLike
from .images import save_grid
from .io import CheckpointError, load_json, load_tensors, save_json, save_tensors
from .networks import MLP, UNet2D
from .processes import GaussianProcess, make_process
from .sampling import ClassifierFreeGuidance, Thresholded, check_sampler, check_steps, sample

__all__ = ["Pipeline", "build_network", "build_process", "CONFIG_NAME", "MODEL_NAME", "EMA_NAME"]

CONFIG_NAME, MODEL_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"


def build_network(cfg: NetworkConfig) -> nn.Module:
    """The network a ``NetworkConfig`` describes, freshly initialised."""
    if cfg.kind == "mlp":
        return MLP(dim=cfg.dim, width=cfg.width, depth=cfg.depth, num_classes=cfg.num_classes, dropout=cfg.dropout)
    return UNet2D(
        in_channels=cfg.in_channels,
        base_channels=cfg.base_channels,
        channel_mults=tuple(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=tuple(cfg.attention_levels),
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        num_classes=cfg.num_classes,
    )


def build_process(config: ModelConfig) -> GaussianProcess:
    """The forward process a config names."""
    opts = dict(config.diffusion.process)
    return make_process(opts.pop("name", "ddpm"), **opts)


def _load_weights(module: nn.Module, path: Path) -> None:
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit the network in config.json ({first}).") from None


class Pipeline:
    """A diffusion model ready to sample: ``Pipeline.load(folder).sample(16, labels=[3] * 16, seed=0)``."""

    def __init__(self, config: ModelConfig, network: nn.Module | None = None, ema: nn.Module | None = None) -> None:
        self.config = config
        self.network = network if network is not None else build_network(config.network)
        self.ema = ema
        self.process = build_process(config)

    # ------------------------------------------------------------------ construction and files
    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> Pipeline:
        """Load a model folder (config.json + model.safetensors [+ ema.safetensors])."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder; expected a model folder with {CONFIG_NAME}.")
        if not (folder / CONFIG_NAME).is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_NAME}; it is not a diffusionlab model folder.")
        try:
            config = ModelConfig.model_validate(load_json(folder / CONFIG_NAME))
        except ValidationError as err:
            raise CheckpointError(
                f"{folder / CONFIG_NAME} is not a valid model config ({err.errors()[0]['msg']})."
            ) from None
        pipe = cls(config)
        _load_weights(pipe.network, folder / MODEL_NAME)
        if (folder / EMA_NAME).is_file():
            pipe.ema = build_network(config.network)
            _load_weights(pipe.ema, folder / EMA_NAME)
        return pipe.to(device)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write config.json, model.safetensors and (if any) ema.safetensors, each file atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self.network.state_dict(), folder / MODEL_NAME)
        if self.ema is not None:
            save_tensors(self.ema.state_dict(), folder / EMA_NAME)
        save_json(self.config.model_dump(mode="json"), folder / CONFIG_NAME)

    def to(self, device: str | torch.device) -> Pipeline:
        self.network.to(device)
        if self.ema is not None:
            self.ema.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def denoiser(self, use_ema: bool = True) -> Denoiser:
        """The denoiser of the EMA network (or the raw one), in eval mode."""
        net = self.ema if (use_ema and self.ema is not None) else self.network
        net.eval()
        d = self.config.diffusion
        return Denoiser(net, self.process, d.parameterisation, d.sigma_data)

    def copy_for_ema(self) -> nn.Module:
        """A frozen copy of the network to hold EMA weights."""
        ema = copy.deepcopy(self.network).eval()
        ema.requires_grad_(False)
        return ema

    # ------------------------------------------------------------------ sampling
    @property
    def sample_shape(self) -> tuple[int, ...]:
        c = self.config
        if c.network.kind == "mlp":
            return (c.network.dim,)
        return (c.data.channels, c.data.image_size, c.data.image_size)

    def check_labels(self, labels: Sequence[int] | Tensor | int | None, n: int | None) -> Tensor | None:
        """Labels as a long tensor of length n, or one clear error (unconditional model, out of range)."""
        if labels is None:
            return None
        k = self.config.network.num_classes
        if not k:
            raise ValueError("labels were given, but this model was trained without classes (unconditional).")
        t = torch.as_tensor([labels] * (n or 1) if isinstance(labels, int) else labels, dtype=torch.long).flatten()
        bad = t[(t < 0) | (t >= k)]
        if len(bad):
            raise ValueError(f"label {int(bad[0])} is outside this model's classes 0..{k - 1}.")
        if n is not None and len(t) != n:
            raise ValueError(f"{len(t)} labels were given for {n} samples; give one label per sample or one int.")
        return t

    def encode(self, images: Tensor) -> Tensor:
        """Images in [0, 1], shape (N, C, H, W), to the model's space (pixels in [-1, 1])."""
        if self.config.network.kind == "mlp":
            return images
        return images * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        """The model's space back to images in [0, 1] (points come back as they are)."""
        if self.config.network.kind == "mlp":
            return x
        return ((x + 1) / 2).clamp(0, 1)

    def guided_denoiser(
        self,
        num_samples: int,
        labels: Sequence[int] | Tensor | int | None = None,
        guidance: float | None = None,
        thresholding: str | None = None,
        use_ema: bool = True,
    ) -> tuple[DenoiserLike, dict[str, Tensor] | None]:
        """The denoiser every sampler and task runs (guidance and thresholding applied) and the conditioning
        of ``num_samples`` samples (on the CPU; slice it per batch). No labels on a class-conditional model
        means unconditional samples; labels on an unconditional model are one clear error."""
        defaults = self.config.sample
        guidance = defaults.guidance if guidance is None else float(guidance)
        if guidance < 0:
            raise ValueError(f"guidance={guidance} must be >= 0 (0 unconditional, 1 conditional, > 1 stronger).")
        label_t = self.check_labels(labels, num_samples)
        denoiser: DenoiserLike = self.denoiser(use_ema)
        cond = None
        if self.config.network.num_classes:
            if label_t is None:  # no labels: sample the unconditional model
                label_t, guidance = torch.full((num_samples,), -1, dtype=torch.long), 0.0
            cond = {"labels": label_t}
            denoiser = ClassifierFreeGuidance(denoiser, guidance)
        thresholding = thresholding or defaults.thresholding
        if self.config.network.kind == "unet" and thresholding != "none":
            denoiser = Thresholded(denoiser, thresholding)
        return denoiser, cond

    def sample(
        self,
        num_samples: int | None = None,
        labels: Sequence[int] | Tensor | int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        guidance: float | None = None,
        seed: int = 0,
        thresholding: str | None = None,
        batch_size: int = 256,
        use_ema: bool = True,
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        """Generate samples; images come back in [0, 1] with shape (N, C, H, W), points as they are.

        Sample i is drawn from the noise stream (seed, i), so it does not depend on ``batch_size``.
        ``guidance`` is the classifier-free scale w (0 unconditional, 1 conditional, > 1 stronger).
        ``thresholding`` keeps image x0 estimates in [-1, 1]: "clip" (default), "dynamic" or "none".
        """
        defaults = self.config.sample
        sampler = check_sampler(sampler or defaults.sampler)
        steps = check_steps(steps if steps is not None else defaults.steps)
        spacing = spacing or defaults.spacing
        if num_samples is None:
            if labels is None or isinstance(labels, int):
                raise ValueError("give num_samples, or a list of labels (one per sample).")
            num_samples = len(labels)
        if num_samples <= 0:
            raise ValueError(f"num_samples={num_samples} must be a positive integer.")
        guided, cond_all = self.guided_denoiser(num_samples, labels, guidance, thresholding, use_ema)
        device = self.device
        out = []
        for start in range(0, num_samples, batch_size):
            idx = list(range(start, min(start + batch_size, num_samples)))
            cond = {k: v[idx].to(device) for k, v in cond_all.items()} if cond_all is not None else None
            x = sample(
                guided,
                self.sample_shape,
                indices=idx,
                sampler=sampler,
                steps=steps,
                spacing=spacing,
                seed=seed,
                cond=cond,
                device=device,
                progress=progress,
                **options,
            )
            out.append(x.cpu())
        return self.decode(torch.cat(out))

    def sample_class_grid(
        self,
        path: str | os.PathLike[str],
        per_class: int = 8,
        seed: int = 0,
        metadata: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample ``per_class`` images of every class and save a grid with one labelled row per class."""
        k = self.config.network.num_classes
        if not k:
            images = self.sample(per_class * per_class, seed=seed, **kwargs)
            save_grid(images, path, nrow=per_class, scale=2, metadata=metadata)
            return images
        labels = [c for c in range(k) for _ in range(per_class)]
        images = self.sample(labels=labels, seed=seed, **kwargs)
        names = self.config.data.class_names or [str(c) for c in range(k)]
        save_grid(images, path, nrow=per_class, row_labels=names, scale=2, metadata=metadata)
        return images
