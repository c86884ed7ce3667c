"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1797 images, labels 0..9).

The raw data ships with the package as ``digits.npz`` (uint8 ``images`` (1797, 8, 8) in 0..16 and uint8
``labels`` (1797,)), generated once from ``sklearn.datasets.load_digits``; nothing here imports sklearn.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, ImageDataset, stratified_split

__all__ = ["DIGITS_SPLITS", "load_digits_dataset", "load_digits_raw"]

DIGITS_SPLITS = ("all", "train", "test")
_MAX_VALUE = 16.0


@lru_cache(maxsize=1)
def _read_npz() -> tuple[np.ndarray, np.ndarray]:
    with resources.files(__package__).joinpath("digits.npz").open("rb") as fh, np.load(fh) as npz:
        images, labels = npz["images"], npz["labels"]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The embedded arrays as shipped: uint8 images (1797, 8, 8) in 0..16 and uint8 labels (1797,)."""
    images, labels = _read_npz()
    return images.copy(), labels.copy()


def load_digits_dataset(
    image_size: int = 16, split: str = "all", test_fraction: float = 0.2, seed: int = 0
) -> ImageDataset:
    """The embedded digits as (N, 1, S, S) in [-1, 1], bilinearly upsampled from 8x8; split is stratified.

    ``split`` is "all", "train" or "test"; the train/test indices depend only on (test_fraction, seed).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 or image_size % 8:
        raise DataError(
            f"image_size for the digits dataset must be a multiple of 8 and at least 8, got {image_size!r}."
        )
    if split not in DIGITS_SPLITS:
        raise DataError(f"split must be one of {', '.join(DIGITS_SPLITS)}; got {split!r}.")
    raw_images, raw_labels = _read_npz()
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    images = torch.from_numpy(raw_images.astype(np.float32)).unsqueeze(1)
    images = images.mul_(2.0 / _MAX_VALUE).sub_(1.0)  # 0 -> -1, 16 -> +1
    if split != "all":
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
        images, labels = images[idx], labels[idx]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = images.clamp_(-1.0, 1.0)
    return ImageDataset(images, labels, class_names=[str(d) for d in range(10)])
