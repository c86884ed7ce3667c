"""Embeddings of the noise level and of class labels (floor 1: torch only)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar (Vaswani et al. 2017; DDPM's timestep embedding).

    The input is multiplied by ``scale`` first, so a noise-level input of order 1 spans the same range of phases
    as DDPM's integer timesteps 0..1000.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim={dim} must be even.")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, c: Tensor) -> Tensor:
        args = (c.float() * self.scale)[:, None] * self.freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal features of the noise-level input followed by a two-layer MLP (DDPM, Ho et al. 2020)."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 4 * dim
        self.features = SinusoidalEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out_dim = hidden

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.features(c_noise))


class LabelEmbedding(nn.Module):
    """Class-label embedding with one extra "null" row (index ``num_classes``) for classifier-free guidance.

    A label of -1 is read as the null label, so callers can drop labels per sample by writing -1. Float labels of
    shape (N, num_classes + 1) are soft labels: weights over the rows, the null row last, so the embedding is their
    weighted sum (interpolation between classes; null-text-style inversion optimises these weights).
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Tensor:
        if labels.is_floating_point():
            rows = self.num_classes + 1
            if labels.ndim != 2 or labels.shape[1] != rows:
                shape = tuple(labels.shape)
                raise ValueError(f"soft labels must have shape (N, {rows}) (the null row last); got {shape}.")
            return (labels.to(self.table.weight.dtype)[:, :, None] * self.table.weight).sum(1)  # exact where one-hot
        labels = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        return self.table(labels)


def add_label_embedding(
    emb: Tensor, embedding: LabelEmbedding | None, labels: Tensor | None, network: str = "network"
) -> Tensor:
    """The noise embedding plus the labels' embedding (no labels: the null label); one clear error for labels
    given to a network built without classes."""
    if embedding is None:
        if labels is not None:
            raise ValueError(f"labels were given to a {network} built without num_classes (an unconditional model).")
        return emb
    if labels is None:
        labels = torch.full((emb.shape[0],), -1, dtype=torch.long, device=emb.device)
    return emb + embedding(labels)


def concat_condition(x: Tensor, condition: Tensor | None, channels: int, network: str = "network") -> Tensor:
    """x (B, C, ...) with ``channels`` condition channels (B, channels, ...) concatenated along dim 1; no condition
    given to a network that takes one: zeros (for a signal's observed values and mask: nothing observed). One clear
    error for a condition of the wrong shape, or given to a network built without condition channels."""
    if not channels:
        if condition is not None:
            raise ValueError(f"a condition was given to a {network} built without cond_channels.")
        return x
    if condition is None:
        return torch.cat([x, x.new_zeros(x.shape[0], channels, *x.shape[2:])], dim=1)
    if condition.shape[0] != x.shape[0] or condition.shape[1] != channels or condition.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"this {network} takes a condition of shape ({x.shape[0]}, {channels}, {', '.join(map(str, x.shape[2:]))}) "
            f"beside x, got {tuple(condition.shape)}."
        )
    return torch.cat([x, condition.to(x.dtype)], dim=1)


def check_size_multiple(height: int, width: int, multiple: int, what: str) -> None:
    """One clear error unless height and width are positive multiples of ``multiple`` (``what`` names the network)."""
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise ValueError(
            f"image size {height}x{width} cannot pass {what}; "
            f"height and width must be positive multiples of {multiple}."
        )
