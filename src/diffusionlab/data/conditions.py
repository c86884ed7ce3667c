"""Paired image-to-image tasks made on the fly from plain images: the condition image of each target.

``superres``: the target average-pooled by ``factor`` (SR3, Saharia et al. 2021); the network sees it
upsampled back (bicubic). ``colourise``: the target's BT.601 luma, one channel (Palette, Saharia et al. 2022).
Images are in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import _LUMA, DataError

__all__ = ["IMAGE_CONDITIONS", "condition_channels", "low_resolution", "make_image_condition"]

IMAGE_CONDITIONS = ("superres", "colourise")


def _check(kind: str) -> str:
    if kind not in IMAGE_CONDITIONS:
        raise DataError(f"image condition {kind!r} is not known; expected one of {', '.join(IMAGE_CONDITIONS)}.")
    return kind


def condition_channels(kind: str, channels: int) -> int:
    """Channels of the condition image for targets with ``channels`` channels."""
    if _check(kind) == "colourise" and channels != 3:
        raise DataError(
            f"image_condition='colourise' needs RGB training images (3 channels); the dataset has {channels}."
        )
    return channels if kind == "superres" else 1


def low_resolution(images: Tensor, factor: int) -> Tensor:
    """Images downsampled by ``factor`` with an area (box) filter: what a camera with bigger pixels records."""
    if factor < 2 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise DataError(f"superres factor {factor} must be >= 2 and divide the image size {images.shape[-1]}.")
    return F.avg_pool2d(images, factor)


def make_image_condition(kind: str, images: Tensor, factor: int = 4) -> Tensor:
    """The condition image of each target image: its low-resolution version, or its grayscale."""
    if _check(kind) == "superres":
        return low_resolution(images, factor)
    if images.shape[1] != 3:
        raise DataError(f"image_condition='colourise' needs RGB images (3 channels), got {images.shape[1]}.")
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)
