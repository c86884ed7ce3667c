"""Networks over table rows: numeric columns and categorical tokens in, their predictions out (floor 1): a residual
MLP over the whole row (TabDDPM) and a transformer over the columns (one token per column).

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
from .transformer import TransformerBlock, rotary_tables

__all__ = ["TabularMLP", "TabularTransformer", "CATEGORY_EMBEDDING"]

CATEGORY_EMBEDDING = 16  # width of a category's embedding


def _columns(
    net: nn.Module, num_numeric: int, cardinalities: list[int] | tuple[int, ...], num_classes: int | None
) -> list[int]:
    """Check a table's columns and give a network its column attributes and the category-embedding layout: each
    column's categories and its MASK own rows of one embedding table (``offsets``), ``masks`` the MASK ids."""
    cards = [int(k) for k in cardinalities]
    if num_numeric < 0 or any(k < 1 for k in cards) or num_numeric + len(cards) == 0:
        raise ValueError(
            f"a table needs at least one column: num_numeric={num_numeric}, cardinalities={cards} (each >= 1)."
        )
    net.num_numeric, net.cardinalities, net.num_classes = num_numeric, cards, num_classes
    starts = torch.tensor([0, *torch.tensor([k + 1 for k in cards]).cumsum(0).tolist()[:-1]] if cards else [])
    net.register_buffer("offsets", starts.long(), persistent=False)
    net.register_buffer("masks", torch.tensor(cards, dtype=torch.long), persistent=False)
    return cards


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
        cards = _columns(self, num_numeric, cardinalities, num_classes)
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


class TabularTransformer(nn.Module):
    """A transformer over a row's columns, each column one token: the same inputs and outputs as ``TabularMLP``.

    Numeric column j becomes x_j w_j + b_j and a categorical column its category's (or MASK's) embedding, each with
    its column's embedding added (FT-Transformer's feature tokenizer, Gorishniy et al. 2021, sec. 3.3; TabSyn's
    column tokens, Zhang et al. 2024). ``depth`` blocks of self-attention across the columns carry the time and
    label conditioning by adaLN-Zero (DiT, Peebles & Xie 2023); columns have no order, so no positions beyond the
    column embeddings. Each numeric column reads its prediction from its own token, each categorical column its
    logits."""

    def __init__(
        self,
        num_numeric: int,
        cardinalities: list[int] | tuple[int, ...],
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width={width} must split into heads={heads} heads of an even size.")
        cards = _columns(self, num_numeric, cardinalities, num_classes)
        columns = num_numeric + len(cards)
        self.numeric_weight = nn.Parameter(torch.randn(num_numeric, width) / width**0.5)
        self.numeric_bias = nn.Parameter(torch.zeros(num_numeric, width))
        self.categories = nn.Embedding(sum(k + 1 for k in cards), width) if cards else None
        self.column = nn.Parameter(torch.randn(columns, width) * 0.02)
        self.noise_embedding = NoiseLevelEmbedding(64, hidden=width)
        self.label_embedding = LabelEmbedding(num_classes, width) if num_classes else None
        self.blocks = nn.ModuleList([TransformerBlock(width, heads, dropout) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.numeric_head = nn.Parameter(torch.zeros(num_numeric, width))
        self.categorical_heads = nn.ModuleList([nn.Linear(width, k) for k in cards])
        self.register_buffer("identity_rope", torch.zeros(columns), persistent=False)
        self.heads = heads

    @property
    def width_in(self) -> int:
        """Values per row: the numeric columns and one token per categorical column."""
        return self.num_numeric + len(self.cardinalities)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.width_in:
            raise ValueError(
                f"TabularTransformer expected rows of shape (batch, {self.width_in}), got {tuple(x.shape)}."
            )
        n = self.num_numeric
        tokens = [x[:, :n, None] * self.numeric_weight + self.numeric_bias]
        if self.categories is not None:
            ids = torch.minimum(x[:, n:].round().long().clamp(min=0), self.masks)  # at or above: the column's MASK
            tokens.append(self.categories(ids + self.offsets).to(x.dtype))
        h = torch.cat(tokens, dim=1) + self.column
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        emb = add_label_embedding(emb, self.label_embedding, labels, "TabularTransformer")
        rope = rotary_tables(self.identity_rope, h.shape[-1] // self.heads)  # position 0 everywhere: no rotation
        for block in self.blocks:
            h = block(h, emb, rope, None, False)
        shift, scale = self.final_modulation(torch.nn.functional.silu(emb)).chunk(2, dim=-1)
        h = self.final_norm(h) * (1 + scale[:, None, :]) + shift[:, None, :]
        numeric = (h[:, :n] * self.numeric_head).sum(-1)
        logits = [head(h[:, n + j]) for j, head in enumerate(self.categorical_heads)]
        return torch.cat([numeric, *logits], dim=1)
