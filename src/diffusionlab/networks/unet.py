"""A UNet for images of any size its down-sampling allows (floor 1: knows nothing about diffusion).

Residual blocks with GroupNorm and a scale-shift injection of the noise-level + class embedding into every
block (Dhariwal & Nichol 2021, "AdaGN"), self-attention at chosen levels (by depth, not by pixel size, so one
network serves any resolution), optional dropout. In the spirit of the seed's DoubleConv/Down/Up UNet.

Conditioning: class labels (embedding added to the noise embedding), text (cross-attention on a text encoder's
token embeddings at chosen levels and in the middle block, plus their masked mean added to the noise
embedding, as in Imagen, Saharia et al. 2022, sec. 2.2) and a condition image concatenated to the input
(SR3, Saharia et al. 2021; the seed's ``UNet_conditional``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, add_label_embedding, check_size_multiple


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; the embedding scales and shifts the second norm."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels, through ``scaled_dot_product_attention``."""

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels={channels} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class CrossAttention(nn.Module):
    """Multi-head attention from pixels (queries) to text tokens (keys/values), padding tokens masked out
    (Rombach et al. 2022, sec. 3.3)."""

    def __init__(self, channels: int, context_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels={channels} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(self.norm(x)).reshape(b, heads, d, h * w).transpose(-1, -2)
        k, v = self.kv(context).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _check_levels(num_levels: int, **named_levels: Sequence[int]) -> None:
    """One clear error unless every level index lies in [0, num_levels - 1]."""
    for name, levels in named_levels.items():
        if any(not 0 <= lvl < num_levels for lvl in levels):
            raise ValueError(f"{name}={list(levels)} must be level indices in [0, {num_levels - 1}].")


class UNet2D(nn.Module):
    """Noise-conditional UNet: ``forward(x, c_noise, labels=None, text=None, text_mask=None, cond_image=None)``
    returns a tensor shaped like x (out_channels).

    ``channel_mults`` gives one level per entry; the input's height and width must be divisible by
    2^(len(channel_mults) - 1). ``attention_levels`` and ``cross_attention_levels`` are level indices
    (0 = full resolution). ``text_dim`` > 0 builds text conditioning, ``cond_channels`` > 0 takes a condition
    image of that many channels (resized to x's size) concatenated to the input.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        text_dim: int | None = None,
        cross_attention_levels: Sequence[int] = (),
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        levels = len(channel_mults)
        _check_levels(levels, attention_levels=attention_levels, cross_attention_levels=cross_attention_levels)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.text_dim, self.cond_channels = text_dim or None, int(cond_channels)
        self.num_levels = levels
        self.noise_embedding = NoiseLevelEmbedding(base_channels)
        emb_dim = self.noise_embedding.out_dim
        self.label_embedding = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        self.text_embedding = nn.Linear(text_dim, emb_dim) if text_dim else None
        cross = set(cross_attention_levels) if text_dim else set()
        self._block_spec = (emb_dim, dropout, num_heads, text_dim, set(attention_levels), cross)

        self.stem = nn.Conv2d(in_channels + self.cond_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch = base_channels
        for level, out_ch in enumerate(chans):
            for _ in range(num_res_blocks):
                self.down.append(self._blocks(ch, out_ch, level))
                ch = out_ch
                skip_chs.append(ch)
            if level < self.num_levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_chs.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch, num_heads)])
        if text_dim:
            self.mid.append(CrossAttention(ch, text_dim, num_heads))
        self.mid.append(ResBlock(ch, ch, emb_dim, dropout))
        self.up = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            out_ch = chans[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(self._blocks(ch + skip_chs.pop(), out_ch, level))
                ch = out_ch
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)])
                )
        out_ch = out_channels or in_channels
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def _blocks(self, in_ch: int, out_ch: int, level: int) -> nn.ModuleList:
        """One residual block of a level, with self-attention and cross-attention where that level has them."""
        emb_dim, dropout, num_heads, text_dim, attention, cross = self._block_spec
        blocks = nn.ModuleList([ResBlock(in_ch, out_ch, emb_dim, dropout)])
        if level in attention:
            blocks.append(SelfAttention(out_ch, num_heads))
        if level in cross:
            blocks.append(CrossAttention(out_ch, text_dim, num_heads))
        return blocks

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (self.num_levels - 1)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise one clear error when the UNet cannot take an image of this size."""
        check_size_multiple(height, width, self.size_multiple, f"this UNet's {self.num_levels} levels")

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        labels: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_image: Tensor | None = None,
    ) -> Tensor:
        self.check_input_size(x.shape[-2], x.shape[-1])
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        emb = add_label_embedding(emb, self.label_embedding, labels, "UNet")
        context = None
        if self.text_embedding is not None:
            if text is None:
                raise ValueError("this UNet is text-conditional: give token embeddings (the empty prompt for none).")
            mask = text_mask if text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=x.device)
            context = (text, mask)
            weights = mask.to(text.dtype)[..., None]
            emb = emb + self.text_embedding((text * weights).sum(1) / weights.sum(1).clamp(min=1.0))
        elif text is not None:
            raise ValueError("text was given to a UNet built without text_dim (a model without text conditioning).")
        if self.cond_channels:
            if cond_image is None or cond_image.shape[1] != self.cond_channels:
                got = "none" if cond_image is None else f"{cond_image.shape[1]} channels"
                raise ValueError(f"this UNet takes a condition image of {self.cond_channels} channels, got {got}.")
            if cond_image.shape[-2:] != x.shape[-2:]:
                cond_image = F.interpolate(cond_image, size=x.shape[-2:], mode="bicubic", align_corners=False)
            x = torch.cat([x, cond_image.to(x.dtype)], dim=1)
        elif cond_image is not None:
            raise ValueError("a condition image was given to a UNet built without cond_channels.")
        h = self.stem(x)
        skips = [h]
        for blocks in self.down:
            h = _run(blocks, h, emb, context)
            skips.append(h)
        h = _run(self.mid, h, emb, context)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = _run(blocks, h, emb, context)
        return self.head(h)


def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor, context: tuple[Tensor, Tensor] | None) -> Tensor:
    for block in blocks:
        if isinstance(block, ResBlock):
            h = block(h, emb)
        elif isinstance(block, CrossAttention):
            h = block(h, *context)
        else:
            h = block(h)
    return h
