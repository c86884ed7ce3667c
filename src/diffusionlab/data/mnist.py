"""MNIST from the standard idx files in a local folder (plain or .gz)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageDataset, resize_images, uint8_to_unit_range

__all__ = ["MNIST_FILES", "find_idx_file", "load_mnist", "read_idx"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read an unsigned-byte idx file (optionally gzipped) into a uint8 array, checking magic and length."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"idx file '{path}' does not exist.") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read idx file '{path}': {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"idx file '{path}' is truncated: {len(raw)} bytes, shorter than its magic number.")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != _IDX_UBYTE or (expected_ndim is not None and ndim != expected_ndim):
        magic = struct.unpack(">I", raw[:4])[0]
        want = f"0x{(_IDX_UBYTE << 8) | expected_ndim:08x}" if expected_ndim is not None else "0x000008NN"
        raise DataError(f"idx file '{path}' has magic number 0x{magic:08x}; expected {want} (uint8 data).")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file '{path}' is truncated inside its header ({len(raw)} of {header} bytes).")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"idx file '{path}' is {problem}: {len(raw)} bytes, expected {expected} for shape {tuple(shape)}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: str | os.PathLike, name: str) -> Path:
    """Locate ``name`` or ``name.gz`` in ``folder`` (or its ``raw/`` / ``MNIST/raw/`` subfolder)."""
    root = Path(folder).expanduser()
    for directory in (root, root / "raw", root / "MNIST" / "raw"):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"MNIST file '{name}' (or '{name}.gz') not found in '{root}'.")


def load_mnist(path: str | os.PathLike, split: str = "train", image_size: int = 28) -> ImageDataset:
    """MNIST ``split`` ("train" or "test") from idx files in ``path`` as (N, 1, S, S) in [-1, 1], labels 0..9.

    Images are bilinearly resized when ``image_size`` differs from 28.
    """
    if split not in MNIST_FILES:
        raise DataError(f"MNIST split must be 'train' or 'test', got {split!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"MNIST folder '{root}' does not exist.")
    image_name, label_name = MNIST_FILES[split]
    image_file, label_file = find_idx_file(root, image_name), find_idx_file(root, label_name)
    images = read_idx(image_file, expected_ndim=3)
    labels = read_idx(label_file, expected_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"'{image_file}' holds {images.shape[0]} images but '{label_file}' "
            f"holds {labels.shape[0]} labels; expected equal counts."
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"'{label_file}' has label {int(labels.max())}; expected MNIST labels 0..9.")
    tensor = resize_images(uint8_to_unit_range(images).unsqueeze(1), image_size)
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(tensor, label_tensor, class_names=[str(d) for d in range(10)])
