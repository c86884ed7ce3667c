"""A residual MLP for low-dimensional data such as the 2-D toys (floor 1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, add_label_embedding


class MLPBlock(nn.Module):
    """LayerNorm - Linear - SiLU - Linear with a residual path; the embedding is added after the first layer."""

    def __init__(self, width: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = F.silu(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(self.dropout(z))


class MLP(nn.Module):
    """Noise-conditional MLP: ``forward(x, c_noise, labels=None)`` for x of shape (batch, dim)."""

    def __init__(
        self,
        dim: int = 2,
        width: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.noise_embedding = NoiseLevelEmbedding(64, hidden=width)
        self.label_embedding = LabelEmbedding(num_classes, width) if num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([MLPBlock(width, width, dropout) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expected inputs of shape (batch, {self.dim}), got {tuple(x.shape)}.")
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        emb = add_label_embedding(emb, self.label_embedding, labels, "MLP")
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
