"""A folder of image files, flat or in ImageFolder layout (root/<class name>/*.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .base import DataError, ImageDataset

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image_folder", "load_image_file"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_image(p))
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in sorted(filenames)) if _is_image(p))
    return found


def find_images(path: str | os.PathLike) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """List a folder's images as (files, labels, class_names); labels are None for a flat folder.

    Class layout is used when non-hidden subfolders hold images (searched recursively); classes are the
    sorted subfolder names. Loose images beside class subfolders are an error, not silently dropped.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder '{root}' does not exist.")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; expected a folder of image files.")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [(d, files) for d in subdirs if (files := _images_in(d, recursive=True))]
    loose = _images_in(root, recursive=False)
    if not classes:
        if not loose:
            raise DataError(
                f"image folder '{root}' contains no images; looked for files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)} (any case), directly or in class subfolders."
            )
        return loose, None, None
    if loose:
        raise DataError(
            f"image folder '{root}' mixes loose images (e.g. '{loose[0].name}') with class subfolders; "
            "expected either only images or only class subfolders."
        )
    files, labels = [], []
    for label, (_, class_files) in enumerate(classes):
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return files, labels, [d.name for d, _ in classes]


def load_image_file(path: str | os.PathLike, image_size: int, channels: int = 3) -> np.ndarray:
    """One image as uint8 (S, S, C): short side resized to S (LANCZOS), then centre-cropped to S x S."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image file '{path}': {exc}") from exc
    w, h = img.size
    if (w, h) != (image_size, image_size):
        scale = image_size / min(w, h)
        new_size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
        img = img.resize(new_size, Image.Resampling.LANCZOS)
        w, h = new_size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    array = np.array(img, dtype=np.uint8)  # a writable copy
    return array[:, :, None] if array.ndim == 2 else array


CAPTIONS_NAME = "metadata.jsonl"


def read_captions(folder: str | os.PathLike, files: list[Path]) -> list[list[str]] | None:
    """Captions from ``metadata.jsonl`` in the folder (Hugging Face imagefolder style: one JSON object per line
    with "file_name", relative to the folder, and "text", a string or a list of phrasings), or None if absent."""
    folder = Path(folder)
    meta = folder / CAPTIONS_NAME
    if not meta.is_file():
        return None
    by_file: dict[Path, list[str]] = {}
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["text"]
            by_file[(folder / row["file_name"]).resolve()] = [text] if isinstance(text, str) else [str(t) for t in text]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{meta} line {n} is not a JSON object with 'file_name' and 'text' ({err}).") from None
    missing = [f for f in files if f.resolve() not in by_file]
    if missing:
        raise DataError(f"{meta} has no caption for {missing[0]} ({len(missing)} images lack one).")
    return [by_file[f.resolve()] for f in files]


def load_image_folder(path: str | os.PathLike, image_size: int, channels: int = 3) -> ImageDataset:
    """Load every PNG/JPEG/BMP/WebP image in a folder as (N, C, S, S) in [-1, 1]; subfolders give labels,
    a ``metadata.jsonl`` gives captions (for text-conditional training).

    Each image's short side is resized to ``image_size`` (LANCZOS) and the centre is cropped square.
    """
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    files, labels, class_names = find_images(path)
    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.float32)
    for i, file in enumerate(files):
        array = load_image_file(file, image_size, channels)
        images[i] = torch.from_numpy(array).permute(2, 0, 1).to(torch.float32)
    images.div_(127.5).sub_(1.0)
    label_tensor = torch.tensor(labels, dtype=torch.long) if labels is not None else None
    return ImageDataset(images, label_tensor, class_names, captions=read_captions(path, files))
