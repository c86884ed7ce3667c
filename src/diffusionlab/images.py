"""Pictures people look at: image grids with row labels, saved as PNG atomically; image files read (floor 1).

``read_image_array`` (from ``data.folder``) is the one reader of image files: header checked before decoding.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin
from torch import Tensor

from .data.folder import read_image_array
from .io import atomic_path

__all__ = [
    "read_image_array",
    "to_uint8",
    "to_pil",
    "make_grid",
    "save_grid",
    "save_animation",
    "png_bytes",
    "save_png",
    "save_scatter",
]


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [0, 1], shape (N, C, H, W) -> uint8 array (N, H, W, C)."""
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(image: Tensor) -> Image.Image:
    """One (C, H, W) image in [0, 1] as an 8-bit PIL image of the same size: grayscale for C = 1, else RGB."""
    array = to_uint8(image[None])[0]
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")


def make_grid(
    images: Tensor, nrow: int, padding: int = 2, scale: int = 1, row_labels: Sequence[str] | None = None
) -> Image.Image:
    """Tile (N, C, H, W) images in [0, 1] into rows of ``nrow``, optionally with a text label left of each row."""
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow={nrow!r} must be a positive integer.")
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    rows = (n + nrow - 1) // nrow
    label_w = 0
    if row_labels:
        label_w = 8 + 7 * max(len(s) for s in row_labels)
    H, W = h * scale + padding, w * scale + padding
    canvas = Image.new("RGB", (label_w + nrow * W + padding, rows * H + padding), (255, 255, 255))
    for i in range(n):
        img = Image.fromarray(arr[i, :, :, 0] if c == 1 else arr[i], "L" if c == 1 else "RGB").convert("RGB")
        if scale != 1:
            img = img.resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(img, (label_w + padding + (i % nrow) * W, padding + (i // nrow) * H))
    if row_labels:
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(row_labels[:rows]):
            draw.text((4, padding + r * H + H // 2 - 6), str(text), fill=(0, 0, 0))
    return canvas


def png_bytes(image: Image.Image, metadata: Mapping[str, str] | None = None) -> bytes:
    """A PIL image encoded as PNG, with optional text metadata (tEXt chunks; iTXt where not Latin-1)."""
    info = PngImagePlugin.PngInfo()
    for k, v in (metadata or {}).items():
        try:
            str(v).encode("latin-1")
            info.add_text(str(k), str(v))
        except UnicodeEncodeError:  # tEXt is Latin-1; a prompt in any other script goes in a UTF-8 iTXt chunk
            info.add_itxt(str(k), str(v))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Save a PIL image as PNG atomically, with optional text metadata."""
    data = png_bytes(image, metadata)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def save_animation(images: Tensor, path: str | os.PathLike[str], frame_ms: int = 150, scale: int = 4) -> None:
    """(N, C, H, W) images in [0, 1] as an animated GIF or lossless WebP (by the suffix), each frame scaled up
    ``scale`` times with nearest-neighbour pixels, looping, written atomically."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".webp"):
        raise ValueError(f"{path}: an animation is written as .gif or .webp, not {suffix or 'no suffix'!r}.")
    frames = [to_pil(im).resize((im.shape[-1] * scale, im.shape[-2] * scale), Image.NEAREST) for im in images]
    lossless = {"lossless": True} if suffix == ".webp" else {}  # GIF is exact for 8-bit gray and <= 256 colours
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format=suffix[1:].upper(),
            save_all=True,
            append_images=frames[1:],
            duration=frame_ms,
            loop=0,
            **lossless,
        )


def save_grid(
    images: Tensor,
    path: str | os.PathLike[str],
    nrow: int = 8,
    row_labels: Sequence[str] | None = None,
    scale: int = 1,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid."""
    save_png(make_grid(images, nrow, scale=scale, row_labels=row_labels), path, metadata)


def save_scatter(
    points: Tensor,
    path: str | os.PathLike[str],
    reference: Tensor | None = None,
    size: int = 384,
    extent: float = 3.5,
) -> None:
    """Save 2-D points as a PNG scatter plot (red), over optional reference points (grey)."""
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.line([(size // 2, 0), (size // 2, size)], fill=(230, 230, 230))
    draw.line([(0, size // 2), (size, size // 2)], fill=(230, 230, 230))

    def dots(p: Tensor, colour: tuple[int, int, int]) -> None:
        xy = ((p.detach().float().cpu()[:, :2] / extent + 1) * size / 2).round().long().tolist()
        for x, y in xy:
            if 0 <= x < size and 0 <= y < size:
                draw.rectangle((x, size - 1 - y, x + 1, size - y), fill=colour)

    if reference is not None:
        dots(reference, (200, 200, 200))
    dots(points, (200, 30, 30))
    save_png(canvas, path)
