"""A DiffWave-style dilated residual network for 1-D signals of any length (floor 1).

Kong et al. 2021, "DiffWave" (sec. 3.1 and fig. 2): an input 1x1 conv, a stack of residual layers with a
bidirectional (non-causal) dilated conv whose dilation cycles through 2^(i mod cycle), a gated tanh * sigmoid
activation, the diffusion-step embedding added to each layer's input, residual and skip 1x1 outputs, the skips
summed and scaled by 1/sqrt(layers), then ReLU-1x1-ReLU-1x1 with the last conv zero-initialised.

Class labels are embedded and added to the step embedding (as the other networks here do), so each layer's
projection carries both; the paper instead adds a label embedding after each layer's dilated conv (sec. 3.2).
Condition channels (``cond_channels``: CSDI's conditional observations, Tashiro et al. 2021, sec. 5) are
concatenated to x before the input 1x1 conv.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, add_label_embedding, concat_condition


class ResidualLayer(nn.Module):
    """One residual layer of fig. 2: (x + step embedding) -> dilated conv -> tanh * sigmoid -> residual, skip."""

    def __init__(self, channels: int, emb_dim: int, dilation: int) -> None:
        super().__init__()
        self.step = nn.Linear(emb_dim, channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        gate, filt = self.dilated(x + self.step(emb)[:, :, None]).chunk(2, dim=1)
        residual, skip = self.out(gate.sigmoid() * filt.tanh()).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class DiffWave(nn.Module):
    """Noise-conditional DiffWave: ``forward(x, c_noise, labels=None, cond_signal=None)`` maps x of shape (B, C, L)
    to (B, C, L); ``cond_channels`` > 0 takes a condition (B, cond_channels, L) beside x (none given: zeros).

    The step embedding is 128 sinusoidal features and two SiLU layers of width 2 * residual_channels (the paper
    uses 512 for every width; smaller keeps the default net small).
    """

    def __init__(
        self,
        in_channels: int,
        residual_channels: int = 64,
        layers: int = 20,
        dilation_cycle: int = 10,
        num_classes: int | None = None,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        if layers < 1 or dilation_cycle < 1:
            raise ValueError(f"layers={layers} and dilation_cycle={dilation_cycle} must be positive.")
        self.in_channels, self.num_classes, self.num_layers = in_channels, num_classes, layers
        self.cond_channels = int(cond_channels)
        self.noise_embedding = NoiseLevelEmbedding(128, hidden=2 * residual_channels)
        emb_dim = self.noise_embedding.out_dim
        self.label_embedding = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        self.inp = nn.Conv1d(in_channels + self.cond_channels, residual_channels, 1)
        self.layers = nn.ModuleList(
            [ResidualLayer(residual_channels, emb_dim, 2 ** (i % dilation_cycle)) for i in range(layers)]
        )
        self.skip_out = nn.Conv1d(residual_channels, residual_channels, 1)
        self.out = nn.Conv1d(residual_channels, in_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def receptive_field(self) -> int:
        """Time steps one output sees: 1 + 2 * (sum of the dilations)."""
        return 1 + 2 * sum(layer.dilated.dilation[0] for layer in self.layers)

    def forward(
        self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None, cond_signal: Tensor | None = None
    ) -> Tensor:
        if x.ndim != 3 or x.shape[1] != self.in_channels or x.shape[2] < 1:
            raise ValueError(
                f"DiffWave expected inputs of shape (batch, {self.in_channels}, length), got {tuple(x.shape)}."
            )
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        emb = F.silu(add_label_embedding(emb, self.label_embedding, labels, "DiffWave"))
        h = F.relu(self.inp(concat_condition(x, cond_signal, self.cond_channels, "DiffWave")))
        skips = 0.0
        for layer in self.layers:
            h, skip = layer(h, emb)
            skips = skips + skip
        h = F.relu(self.skip_out(F.relu(skips / math.sqrt(self.num_layers))))
        return self.out(h)
