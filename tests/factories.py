"""Small models the tests build in more than one file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def tiny_diffusers_vae(folder: Path):  # type: ignore[no-untyped-def]
    """A tiny random diffusers ``AutoencoderKL`` (1 channel, 2 latent channels, f = 2) saved to ``folder``."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=2,
        norm_num_groups=4,
        layers_per_block=1,
    ).eval()
    vae.save_pretrained(folder)
    return vae
