"""A UNet for 1-D signals (audio, series) of any length its down-sampling allows (floor 1).

The 2-D UNet's blocks (networks/unet.py) in 1-D: residual blocks with GroupNorm, SiLU and a scale-shift
injection of the noise-level + class embedding (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021, sec. 3,
"AdaGN"), self-attention at chosen levels and in the middle block, strided-conv down-sampling and
nearest-neighbour up-sampling with skip connections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, add_label_embedding, concat_condition
from .unet import _check_levels, _groups


class ResBlock1D(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; the embedding scales and shifts the second norm."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention1D(nn.Module):
    """Multi-head self-attention over all time steps, through ``scaled_dot_product_attention``."""

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels={channels} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        # (3, B, heads, L, d) made contiguous: on CPU a transposed view falls back to the O(L^2)-memory math
        # kernel, the contiguous layout takes the flash kernel (about 30x faster at L = 2000)
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, n)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, n))


class UNet1D(nn.Module):
    """Noise-conditional 1-D UNet: ``forward(x, c_noise, labels=None, cond_signal=None)`` maps x of shape (B, C, L)
    to (B, C, L). ``cond_channels`` > 0 takes a condition (B, cond_channels, L) concatenated to x at the input
    (CSDI's conditional observations, Tashiro et al. 2021, sec. 5; none given: zeros).

    ``channel_mults`` gives one level per entry; L must be a multiple of 2^(len(channel_mults) - 1)
    (``check_input_length``). ``attention_levels`` are level indices (0 = full length); the middle block always
    attends, as in the 2-D UNet.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        levels = len(channel_mults)
        if levels < 1:
            raise ValueError("channel_mults must have at least one level.")
        _check_levels(levels, attention_levels=attention_levels)
        self.in_channels, self.num_classes, self.num_levels = in_channels, num_classes, levels
        self.cond_channels = int(cond_channels)
        self.noise_embedding = NoiseLevelEmbedding(base_channels)
        emb_dim = self.noise_embedding.out_dim
        self.label_embedding = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        attention = set(attention_levels)

        def blocks(in_ch: int, out_ch: int, level: int) -> nn.ModuleList:
            out = nn.ModuleList([ResBlock1D(in_ch, out_ch, emb_dim, dropout)])
            if level in attention:
                out.append(SelfAttention1D(out_ch, num_heads))
            return out

        self.stem = nn.Conv1d(in_channels + self.cond_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch = base_channels
        for level, out_ch in enumerate(chans):
            for _ in range(num_res_blocks):
                self.down.append(blocks(ch, out_ch, level))
                ch = out_ch
                skip_chs.append(ch)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv1d(ch, ch, 3, stride=2, padding=1)]))
                skip_chs.append(ch)
        self.mid = nn.ModuleList(
            [ResBlock1D(ch, ch, emb_dim, dropout), SelfAttention1D(ch, num_heads), ResBlock1D(ch, ch, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            out_ch = chans[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(blocks(ch + skip_chs.pop(), out_ch, level))
                ch = out_ch
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(ch, ch, 3, padding=1)])
                )
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv1d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def length_multiple(self) -> int:
        """The signal length must be a multiple of this."""
        return 2 ** (self.num_levels - 1)

    def check_input_length(self, length: int) -> None:
        """Raise one clear error when the UNet cannot take a signal of this length."""
        m = self.length_multiple
        if length % m or length < m:
            lower, upper = (length // m) * m, (length // m + 1) * m
            near = f"{lower} or {upper}" if lower else f"{upper}"
            raise ValueError(
                f"signal length {length} cannot pass this UNet1D's {self.num_levels} levels; the length must be a "
                f"positive multiple of {m} (2^{self.num_levels - 1}), e.g. {near}."
            )

    def forward(
        self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None, cond_signal: Tensor | None = None
    ) -> Tensor:
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet1D expected inputs of shape (batch, {self.in_channels}, length), got {tuple(x.shape)}."
            )
        self.check_input_length(x.shape[-1])
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        emb = add_label_embedding(emb, self.label_embedding, labels, "UNet1D")
        h = self.stem(concat_condition(x, cond_signal, self.cond_channels, "UNet1D"))
        skips = [h]
        for blocks in self.down:
            h = _run(blocks, h, emb)
            skips.append(h)
        h = _run(self.mid, h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock1D):
                h = torch.cat([h, skips.pop()], dim=1)
            h = _run(blocks, h, emb)
        return self.head(h)


def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    for block in blocks:
        h = block(h, emb) if isinstance(block, ResBlock1D) else block(h)
    return h
