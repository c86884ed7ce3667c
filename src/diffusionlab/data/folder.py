"""A folder of image files, flat or in ImageFolder layout (root/<class name>/*.png), and one image file read
with its header checked before decoding (``read_image_array``)."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from ..limits import limits
from .base import DataError, ImageDataset

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image_folder", "load_image_file", "read_image_array"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

GRAY_MODES = ("1", "L", "LA", "La")  # 8-bit (or 1-bit) gray, any alpha dropped: one channel
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV")  # 8-bit colour: RGB
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one channel of more than 8 bits


def describe_source(source: str | os.PathLike[str] | bytes) -> str:
    """How messages name an image: "image file '<path>'", or "the uploaded image" for bytes."""
    return "the uploaded image" if isinstance(source, bytes) else f"image file '{Path(source)}'"


def _check_source(source: str | os.PathLike[str] | bytes, what: str) -> BinaryIO | Path:
    """The file to open, or one clear error for a missing path, a folder or an empty file."""
    if isinstance(source, bytes):
        if not source:
            raise DataError(f"{what} is empty (0 bytes); expected an image file.")
        return io.BytesIO(source)
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{what} is a folder; expected an image file.")
    if not path.is_file():
        raise DataError(f"{what} does not exist.")
    if path.stat().st_size == 0:
        raise DataError(f"{what} is empty (0 bytes); expected an image file.")
    return path


def _check_header(img: Image.Image, what: str) -> None:
    """Refuse, from the header alone, an image with more pixels than the limit or a pixel mode not read here."""
    width, height = img.size
    most = limits().max_image_pixels
    if width * height > most:
        raise DataError(
            f"{what} is {width}x{height} ({width * height:,} pixels); the limit is {most:,} pixels; "
            f"set {limits().env_name('max_image_pixels')} to raise it."
        )
    if img.mode not in GRAY_MODES + COLOUR_MODES + WIDE_MODES:
        raise DataError(f"{what} has pixel mode {img.mode!r}, which is not read; expected a gray or colour image.")


def _wide_pixels(img: Image.Image, what: str) -> np.ndarray:
    """A one-channel image of more than 8 bits as float32 (H, W) in [0, 1]: 16-bit values divided by 65535;
    mode I (32-bit integers) must hold 16-bit values 0..65535; mode F (floats) must already lie in [0, 1]."""
    array = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(array).all():
            raise DataError(f"{what} holds non-finite float pixels (NaN or inf); expected values in [0, 1].")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise DataError(
                f"{what} holds float pixels from {array.min():g} to {array.max():g}; expected values in [0, 1]."
            )
        return array.astype(np.float32)
    if img.mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
        raise DataError(
            f"{what} holds 32-bit integer pixels from {array.min()} to {array.max()}; "
            "expected 16-bit values in 0..65535."
        )
    return array.astype(np.float32) / np.float32(65535)


def _pixels(img: Image.Image, what: str, channels: int | None) -> np.ndarray:
    """A decoded image as float32 (H, W, C) in [0, 1]; C is ``channels``, or the file's own (1 gray, 3 colour)."""
    if img.mode in WIDE_MODES:
        array = _wide_pixels(img, what)[:, :, None]
        return np.repeat(array, 3, axis=2) if channels == 3 else array
    gray = (channels == 1) if channels is not None else (img.mode in GRAY_MODES)
    if img.mode in ("P", "PA"):  # the palette's transparency becomes alpha (then dropped): no Pillow warning
        img = img.convert("RGBA")
    array = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return array.astype(np.float32) / np.float32(255)


def read_image_array(
    source: str | os.PathLike[str] | bytes,
    what: str | None = None,
    *,
    channels: int | None = None,
    orient: bool = False,
) -> np.ndarray:
    """One image file (a path, or its bytes) as float32 (H, W, C) in [0, 1] at its own size, or one DataError.

    The header is checked (pixel count against ``limits().max_image_pixels``, pixel mode) before anything is
    decoded. C is ``channels`` (1 or 3) when given, else 1 for gray files and 3 for colour ones; alpha is
    dropped; 16-bit files are divided by 65535. ``orient`` applies the EXIF orientation. ``what`` names the
    image in messages (default: the path, or "the uploaded image").
    """
    what = what or describe_source(source)
    opened = _check_source(source, what)
    limits()  # a malformed DIFFUSIONLAB_* variable is its own error, not an unreadable image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit above decides
            with Image.open(opened) as img:
                _check_header(img, what)
                img.load()
                return _pixels(ImageOps.exif_transpose(img) if orient else img, what, channels)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"{what} is refused as a decompression bomb ({err})") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{what} is not an image file Pillow can read (PNG, JPEG, BMP, WebP, ...).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {what} ({err}).") from None


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
    """One image as uint8 (S, S, C): short side resized to S (LANCZOS), then centre-cropped to S x S.

    Files of more than 8 bits are rounded to 8 (v / 257 for 16-bit) before resizing."""
    pixels = np.rint(read_image_array(path, channels=channels, orient=True) * np.float32(255)).astype(np.uint8)
    img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, "L" if channels == 1 else "RGB")
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
