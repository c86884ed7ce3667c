"""A factorised space-time UNet for video clips (floor 1: knows nothing about diffusion).

Video Diffusion Models (Ho et al. 2022, sec. 3): the image UNet's 2-D convolutions run on every frame, each
spatial self-attention attends within its frame, and after every residual block below full resolution (and in the
middle block) an attention over time runs at each pixel, with a relative position bias over frame offsets so the
network takes frame counts it was not trained on. Ho et al. attend over time at every level; at full resolution
it cost more than the rest of the network together on a CPU (16 clips of 8 32x32 frames), so it starts a level
down. The blocks are ``UNet2D``'s; clips (B, F, C, H, W) are folded to frames (B F, C, H, W) for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import add_label_embedding
from .unet import ResBlock, UNet2D, _groups

__all__ = ["TemporalAttention", "SpaceTimeUNet"]


class TemporalAttention(nn.Module):
    """Multi-head self-attention over the frames at each pixel, with a learned bias per head for each frame offset
    j - i clipped to [-max_offset, max_offset] (relative positions, Shaw et al. 2018; as in Ho et al. 2022)."""

    def __init__(self, channels: int, num_heads: int = 4, max_offset: int = 8) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels={channels} must be divisible by num_heads={num_heads}.")
        self.num_heads, self.max_offset = num_heads, max_offset
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.bias = nn.Parameter(torch.zeros(num_heads, 2 * max_offset + 1))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        bf, c, h, w = x.shape
        b, heads = bf // frames, self.num_heads
        tokens = self.norm(x).reshape(b, frames, c, h * w).permute(0, 3, 1, 2)  # (B, HW, F, C)
        q, k, v = self.qkv(tokens).reshape(b, h * w, frames, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        pos = torch.arange(frames, device=x.device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_offset, self.max_offset) + self.max_offset
        bias = self.bias[:, offset].to(q.dtype)  # (heads, F, F)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, HW, heads, F, d)
        out = self.proj(out.permute(0, 1, 3, 2, 4).reshape(b, h * w, frames, c))
        return x + out.permute(0, 2, 3, 1).reshape(bf, c, h, w)


class SpaceTimeUNet(UNet2D):
    """Noise-conditional space-time UNet: ``forward(x, c_noise, labels=None)`` for clips x (B, F, C, H, W) returns a
    tensor shaped like x. The settings are ``UNet2D``'s; every residual block below full resolution (and the middle
    block) is followed by a ``TemporalAttention``; ``attention_levels`` place spatial attention (within each frame)
    as in the UNet. Any number of frames is taken; height and width must be multiples of ``size_multiple``."""

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            num_heads=num_heads,
            dropout=dropout,
            num_classes=num_classes,
        )
        mid_channels = self.mid[0].conv1.out_channels
        self.mid.insert(2, TemporalAttention(mid_channels, num_heads))

    def _blocks(self, in_ch: int, out_ch: int, level: int) -> nn.ModuleList:
        """The UNet's blocks of a level, then (below full resolution) an attention over time."""
        blocks = super()._blocks(in_ch, out_ch, level)
        if level > 0:
            blocks.append(TemporalAttention(out_ch, self._block_spec[2]))
        return blocks

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if x.ndim != 5:
            raise ValueError(f"a space-time UNet takes clips (B, F, C, H, W), got shape {tuple(x.shape)}.")
        b, frames, c, h, w = x.shape
        self.check_input_size(h, w)
        emb = self.noise_embedding(c_noise.expand(b) if c_noise.ndim == 0 else c_noise)
        emb = add_label_embedding(emb, self.label_embedding, labels, "space-time UNet")
        emb = emb.repeat_interleave(frames, dim=0)  # one embedding per frame of its clip
        h_ = self.stem(x.reshape(b * frames, c, h, w))
        skips = [h_]
        for blocks in self.down:
            h_ = _run(blocks, h_, emb, frames)
            skips.append(h_)
        h_ = _run(self.mid, h_, emb, frames)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h_ = torch.cat([h_, skips.pop()], dim=1)
            h_ = _run(blocks, h_, emb, frames)
        return self.head(h_).reshape(b, frames, -1, h, w)


def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor, frames: int) -> Tensor:
    for block in blocks:
        if isinstance(block, ResBlock):
            h = block(h, emb)
        elif isinstance(block, TemporalAttention):
            h = block(h, frames)
        else:  # spatial attention, down- and up-sampling: frame by frame
            h = block(h)
    return h
