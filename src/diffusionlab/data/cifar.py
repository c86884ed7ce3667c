"""CIFAR-10 from the official "python version" batches in a local folder.

The official format is Python pickles (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``). Pickles can run code when loaded, so load only files you trust. As a second line of
defence they are read with ``pickle``'s ``encoding="bytes"`` through an unpickler that refuses every
global except the few numpy functions needed to rebuild an array.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DataError, ImageDataset, resize_images, uint8_to_unit_range

__all__ = ["CIFAR10_FILES", "find_cifar10_folder", "load_cifar10", "read_cifar_pickle"]

CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_META = "batches.meta"
_FOLDER = "cifar-10-batches-py"
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """Unpickle one CIFAR batch or meta file (bytes keys); only numpy arrays and plain data are allowed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"CIFAR-10 file '{path}' does not exist.") from exc
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 file '{path}': {exc}") from exc
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"CIFAR-10 file '{path}' is not a readable CIFAR pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 file '{path}' holds a {type(obj).__name__}; expected a dict.")
    return obj


def find_cifar10_folder(path: str | os.PathLike) -> Path:
    """Return the folder holding the batches: ``path`` itself or its ``cifar-10-batches-py`` subfolder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder '{root}' does not exist.")
    for candidate in (root, root / _FOLDER):
        if (candidate / _META).is_file() or (candidate / "test_batch").is_file():
            return candidate
    raise DataError(
        f"no CIFAR-10 batches found in '{root}'; expected '{_META}', 'data_batch_1'..'data_batch_5' and "
        f"'test_batch' there or in its '{_FOLDER}' subfolder."
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_pickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"CIFAR-10 file '{path}' lacks the b'data' array or the b'labels' list.")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR-10 file '{path}' has data {data.dtype} {data.shape}; expected uint8 (N, 3072).")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 file '{path}' has {data.shape[0]} images but {labels.size} labels.")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 file '{path}' has labels outside 0..9.")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path: str | os.PathLike, split: str = "train", image_size: int = 32) -> ImageDataset:
    """CIFAR-10 ``split`` ("train" or "test") as (N, 3, S, S) in [-1, 1] with labels 0..9 and class names.

    ``path`` is the ``cifar-10-batches-py`` folder or its parent. Pickles: load only trusted files.
    """
    if split not in CIFAR10_FILES:
        raise DataError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    folder = find_cifar10_folder(path)
    missing = [n for n in (*CIFAR10_FILES[split], _META) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder '{folder}' is missing {', '.join(repr(m) for m in missing)}.")
    meta = read_cifar_pickle(folder / _META)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"CIFAR-10 file '{folder / _META}' lacks a b'label_names' list of 10 names.")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    parts = [_read_batch(folder / name) for name in CIFAR10_FILES[split]]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    images = resize_images(uint8_to_unit_range(data), image_size)
    return ImageDataset(images, torch.from_numpy(labels), class_names=class_names)
