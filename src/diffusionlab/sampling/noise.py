"""Per-sample random noise: sample i of a batch draws from a generator seeded by (seed, i).

So the same seed gives the same image at any batch size and in any position (the fault of diffusers #6222 and
#4055 cannot happen). Noise is drawn on the CPU and moved, so it is also the same on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["sample_seed", "NoiseSource"]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded by ``seed`` (numpy's SeedSequence hashing)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed} and index={index} must be non-negative integers.")
    words = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class NoiseSource:
    """Independent standard-normal streams, one per sample; each call draws the next piece of every stream.

    Built fresh for every sampling run, so no state leaks between runs (diffusers #8711).
    """

    def __init__(self, seed: int, indices: Sequence[int] | int, device: torch.device | str = "cpu") -> None:
        indices = range(indices) if isinstance(indices, int) else indices
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def __call__(self, sample_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """A (batch, *sample_shape) tensor of N(0, 1) noise, sample i from stream i."""
        draws = [torch.randn(tuple(sample_shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def like(self, x: Tensor) -> Tensor:
        """Noise shaped like a batch x."""
        return self(x.shape[1:], x.dtype)
