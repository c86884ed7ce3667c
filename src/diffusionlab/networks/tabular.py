"""A residual MLP over table rows: numeric columns and categorical tokens in, their predictions out (floor 1).

TabDDPM (Kotelnikov et al. 2023, sec. 4) denoises one row with an MLP over the numeric values and the categories'
one-hot vectors, the time and the label embeddings added to the first layer. Here each categorical column has a
learned embedding (its categories plus one MASK state), which scales to columns of many categories; the output
is the numeric columns' prediction (eps, x0 or v, as the denoiser reads it) and one logit per category of each
categorical column.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, add_label_embedding
from .mlp import MLPBlock

__all__ = ["TabularMLP", "CATEGORY_EMBEDDING"]

CATEGORY_EMBEDDING = 16  # width of a category's embedding


class TabularMLP(nn.Module):
    """``forward(x, c_noise, labels=None) -> (B, num_numeric + sum(cardinalities))`` for rows x (B, num_numeric +
    len(cardinalities)): the numeric columns (the network's input scaling applied), then each categorical column's
    token id as a float; an id at or above a column's cardinality is its MASK. The output is the numeric
    prediction followed by the logits of every categorical column, column after column."""

    def __init__(
        self,
        num_numeric: int,
        cardinalities: list[int] | tuple[int, ...],
        width: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cards = [int(k) for k in cardinalities]
        if num_numeric < 0 or any(k < 1 for k in cards) or num_numeric + len(cards) == 0:
            raise ValueError(
                f"a table needs at least one column: num_numeric={num_numeric}, cardinalities={cards} (each >= 1)."
            )
        self.num_numeric, self.cardinalities, self.num_classes = num_numeric, cards, num_classes
        # each column's categories and its MASK get their own rows of one embedding table
        starts = torch.tensor([0, *torch.tensor([k + 1 for k in cards]).cumsum(0).tolist()[:-1]] if cards else [])
        self.register_buffer("offsets", starts.long(), persistent=False)
        self.register_buffer("masks", torch.tensor(cards, dtype=torch.long), persistent=False)
        self.categories = nn.Embedding(sum(k + 1 for k in cards), CATEGORY_EMBEDDING) if cards else None
        self.noise_embedding = NoiseLevelEmbedding(64, hidden=width)
        self.label_embedding = LabelEmbedding(num_classes, width) if num_classes else None
        self.inp = nn.Linear(num_numeric + CATEGORY_EMBEDDING * len(cards), width)
        self.blocks = nn.ModuleList([MLPBlock(width, width, dropout) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, num_numeric + sum(cards)))

    @property
    def width_in(self) -> int:
        """Values per row: the numeric columns and one token per categorical column."""
        return self.num_numeric + len(self.cardinalities)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.width_in:
            raise ValueError(f"TabularMLP expected rows of shape (batch, {self.width_in}), got {tuple(x.shape)}.")
        parts = [x[:, : self.num_numeric]]
        if self.categories is not None:
            ids = x[:, self.num_numeric :].round().long().clamp(min=0)
            ids = torch.minimum(ids, self.masks)  # anything at or above a column's cardinality is its MASK
            parts.append(self.categories(ids + self.offsets).flatten(1).to(x.dtype))
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        emb = add_label_embedding(emb, self.label_embedding, labels, "TabularMLP")
        h = self.inp(torch.cat(parts, dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
