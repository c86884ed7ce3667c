"""In-memory datasets shared by every loader: images in [-1, 1] (N, C, H, W), optional integer labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DataError",
    "ImageDataset",
    "PointDataset",
    "convert_channels",
    "resize_images",
    "stratified_split",
    "uint8_to_unit_range",
]


class DataError(ValueError):
    """Bad data or a bad data argument; the message names the offending file or value."""


def uint8_to_unit_range(array: np.ndarray) -> Tensor:
    """Map a uint8 array (0..255) to a float32 tensor in [-1, 1] (0 -> -1, 255 -> +1)."""
    return torch.from_numpy(np.asarray(array, dtype=np.uint8).astype(np.float32)).div_(127.5).sub_(1.0)


def resize_images(images: Tensor, size: int) -> Tensor:
    """Bilinearly resize (N, C, H, W) images to (N, C, size, size); antialiased only when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = size < min(images.shape[-2:])
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    return out.clamp_(-1.0, 1.0)


class ImageDataset(Dataset):
    """Images (N, C, S, S) float32 in [-1, 1] held in memory, with optional labels (N,) int64 and optional
    captions (N lists of one or more phrasings) for text-conditional training.

    Index it like any Dataset (``ds[i] -> {"image": (C, S, S), "label": ()}``), or take the whole
    tensors with ``ds.tensors()`` / ``ds.images`` / ``ds.labels`` to sample batches without a DataLoader.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        captions: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = (
                f"{type(images).__name__} {tuple(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise DataError(f"images must be a float tensor of shape (N, C, S, S), got {got}.")
        if images.shape[-1] != images.shape[-2]:
            h, w = images.shape[-2:]
            raise DataError(f"images must be square, got height {h} and width {w}.")
        lo, hi = (images.min().item(), images.max().item()) if images.numel() else (0.0, 0.0)
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise DataError(f"image values must lie in [-1, 1], got [{lo:.4g}, {hi:.4g}].")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
                raise DataError("labels must be a 1-D integer tensor of shape (N,).")
            if labels.shape[0] != images.shape[0]:
                raise DataError(f"got {images.shape[0]} images but {labels.shape[0]} labels; expected equal counts.")
            labels = labels.to(torch.long).contiguous()
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            num_classes = len(class_names) if num_classes is None else num_classes
        if num_classes is None and labels is not None:
            num_classes = int(labels.max().item()) + 1 if labels.numel() else 0
        if labels is not None and labels.numel() and num_classes is not None:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= num_classes:
                raise DataError(f"labels must lie in 0..{num_classes - 1}, got values from {lo} to {hi}.")
        if captions is not None:
            captions = [[c] if isinstance(c, str) else list(c) for c in captions]
            if len(captions) != images.shape[0] or any(not c for c in captions):
                raise DataError(f"got {images.shape[0]} images but {len(captions)} caption lists; expected one each.")
        self.captions: list[list[str]] | None = captions
        self.images: Tensor = images.contiguous()
        self.labels: Tensor | None = labels
        self.num_classes: int | None = num_classes if labels is not None else None
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None

    @property
    def channels(self) -> int:
        """Number of channels C (1 = grayscale, 3 = RGB)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length S of the square images."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"image": self.images[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    def tensors(self) -> tuple[Tensor, Tensor | None]:
        """Return ``(images, labels)``; labels is None for an unlabelled dataset."""
        return self.images, self.labels

    def subset(self, indices: Tensor | Sequence[int]) -> ImageDataset:
        """A new dataset holding only the given indices (class names and count are kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        captions = [self.captions[i] for i in idx.tolist()] if self.captions is not None else None
        return ImageDataset(self.images[idx], labels, self.class_names, self.num_classes, captions)

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        return f"ImageDataset(n={len(self)}, channels={self.channels}, image_size={self.image_size}{classes})"


class PointDataset(Dataset):
    """Points (N, D) float32 in memory: ``ds[i] -> {"point": (D,)}``, ``ds.tensors() -> (points, None)``."""

    def __init__(self, points: Tensor) -> None:
        if not isinstance(points, Tensor) or points.dim() != 2 or not points.is_floating_point():
            raise DataError("points must be a float tensor of shape (N, D).")
        self.points: Tensor = points.contiguous()
        self.labels: Tensor | None = None
        self.num_classes: int | None = None

    @property
    def dim(self) -> int:
        """Dimension D of each point."""
        return int(self.points.shape[1])

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"point": self.points[index]}

    def tensors(self) -> tuple[Tensor, None]:
        """Return ``(points, None)``, matching ``ImageDataset.tensors``."""
        return self.points, None

    def __repr__(self) -> str:
        return f"PointDataset(n={len(self)}, dim={self.dim})"


def stratified_split(labels: Tensor, test_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic stratified split: sorted (train_idx, test_idx), round(fraction * n_c) per class."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}.")
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    train, test = [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_idx = np.sort(np.concatenate(train)) if train else np.zeros(0, dtype=np.int64)
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(train_idx.astype(np.int64)), torch.from_numpy(test_idx.astype(np.int64))


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def convert_channels(dataset: ImageDataset, channels: int) -> ImageDataset:
    """Return the dataset with 1 or 3 channels: grayscale is repeated to RGB, RGB becomes BT.601 luma."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if dataset.channels == channels:
        return dataset
    if dataset.channels == 1:
        images = dataset.images.repeat(1, 3, 1, 1)
    elif dataset.channels == 3:
        weights = torch.tensor(_LUMA, dtype=dataset.images.dtype).view(1, 3, 1, 1)
        images = (dataset.images * weights).sum(dim=1, keepdim=True).clamp_(-1.0, 1.0)
    else:
        raise DataError(f"cannot convert images with {dataset.channels} channels; expected 1 or 3.")
    return ImageDataset(images, dataset.labels, dataset.class_names, dataset.num_classes, dataset.captions)
