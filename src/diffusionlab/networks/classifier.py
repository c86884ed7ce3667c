"""A noise-aware classifier for classifier guidance: the UNet's down-sampling half plus a pooled linear head
(Dhariwal & Nichol 2021, sec. 4.1), taking x_t and the same noise-level input as the denoising network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .embeddings import NoiseLevelEmbedding
from .unet import ResBlock, SelfAttention, _groups


class NoiseAwareClassifier(nn.Module):
    """``forward(x_t, c_noise) -> logits (N, num_classes)``; images of any size divisible by 2^(levels-1)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}.")
        self.in_channels, self.num_classes, self.num_levels = in_channels, num_classes, len(channel_mults)
        self.hparams = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
        }
        self.noise_embedding = NoiseLevelEmbedding(base_channels)
        emb_dim = self.noise_embedding.out_dim
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(ch, base_channels * mult, emb_dim))
                ch = base_channels * mult
            if level < self.num_levels - 1:
                self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks.append(ResBlock(ch, ch, emb_dim))
        self.blocks.append(SelfAttention(ch, 4 if ch % 4 == 0 else 1))
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        m = 2 ** (self.num_levels - 1)
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of {m} for this classifier.")
        emb = self.noise_embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.out(self.head(h))
