"""Video clips (N, F, C, H, W) in [-1, 1]: a folder of GIF / WebP / PNG-sequence clips, and the offline benchmark
moving digits (floor 1).

Moving digits (after Moving MNIST, Srivastava et al. 2015) is made on the machine from the embedded 8x8 digits:
one or two 16x16 digits of one class bouncing in a 32x32 frame with integer velocities, deterministic from a seed,
labelled by the digit. Its trajectories come with it, so tests and benches can check the motion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch import Tensor

from ..limits import limits
from .base import DataError
from .digits import load_digits_dataset
from .folder import _check_header, _is_image

__all__ = [
    "CLIP_DATASET_FORMS",
    "CLIP_EXTENSIONS",
    "MOVING_DIGITS_FRAME",
    "MovingDigits",
    "ClipDataset",
    "is_clip_dataset",
    "bounce",
    "moving_digits",
    "read_clip",
    "load_clip_folder",
    "load_clip_dataset",
]

CLIP_DATASET_FORMS = ("'moving_digits'", "'moving_digits:2' (two digits)", "'clips:<folder>'")
MOVIE_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv")  # decoded by PyAV (the "video" extra)
CLIP_EXTENSIONS = (".gif", ".webp", *MOVIE_EXTENSIONS)
MOVING_DIGITS_FRAME = 32  # the frame's side in pixels; the digits are 16x16
_DIGIT = 16
_DEFAULT_FRAMES = 8


@dataclass(frozen=True)
class ClipDataset:
    """Clips (N, F, C, H, W) in [-1, 1], optional labels (N,) and class names."""

    clips: Tensor
    labels: Tensor | None
    class_names: list[str] | None


@dataclass(frozen=True)
class MovingDigits(ClipDataset):
    """Moving digits with their motion: ``positions`` (N, D, F, 2) of each digit's top-left corner as (x, y) per
    frame and ``velocities`` (N, D, 2) at the first frame, in pixels per frame."""

    positions: Tensor
    velocities: Tensor


def is_clip_dataset(spec: object) -> bool:
    """Whether a dataset spec names clips: ``moving_digits``, ``moving_digits:<1|2>`` or ``clips:<folder>``."""
    if not isinstance(spec, str):
        return False
    key = spec.strip().lower().partition(":")[0]
    return key in ("moving_digits", "clips")


def bounce(start: Tensor, velocity: Tensor, frames: int, high: int) -> Tensor:
    """Positions (..., frames) of a point moving at ``velocity`` from ``start`` and reflected at 0 and ``high``
    (a ball bouncing between two walls): p_t is p_0 + v t folded into [0, high] with period 2 high."""
    t = torch.arange(frames, dtype=start.dtype)
    free = start[..., None] + velocity[..., None] * t
    folded = torch.remainder(free, 2 * high)
    return torch.where(folded > high, 2 * high - folded, folded)


def moving_digits(
    n: int = 2048, frames: int = _DEFAULT_FRAMES, num_digits: int = 1, seed: int = 0, split: str = "train"
) -> MovingDigits:
    """``n`` clips of ``frames`` 32x32 frames: ``num_digits`` 16x16 digits of one class (drawn from the embedded
    digits' ``split``) start at integer positions with integer velocities of 1 to 3 pixels per frame on each
    axis (either sign) and bounce off the frame's edges; overlapping digits take the brighter pixel."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"moving digits: n={n!r} must be a positive integer.")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= 64:
        raise DataError(f"moving digits: frames={frames!r} must be an integer from 2 to 64.")
    if num_digits not in (1, 2):
        raise DataError(f"moving digits: {num_digits!r} digits; expected 1 or 2 (the spec moving_digits:2).")
    source = load_digits_dataset(_DIGIT, split=split)
    digits, digit_labels = (source.images + 1) / 2, source.labels  # (M, 1, 16, 16) in [0, 1]
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(10, (n,), generator=gen)
    high = MOVING_DIGITS_FRAME - _DIGIT
    starts = torch.randint(high + 1, (n, num_digits, 2), generator=gen)
    speeds = torch.randint(1, 4, (n, num_digits, 2), generator=gen)
    signs = torch.randint(2, (n, num_digits, 2), generator=gen) * 2 - 1
    velocities = speeds * signs
    by_class = [torch.nonzero(digit_labels == c).flatten() for c in range(10)]
    picks = torch.stack(
        [by_class[int(c)][torch.randint(len(by_class[int(c)]), (num_digits,), generator=gen)] for c in labels]
    )
    positions = bounce(starts, velocities, frames, high).permute(0, 1, 3, 2)  # (N, D, F, 2)
    clips = torch.zeros(n, frames, 1, MOVING_DIGITS_FRAME, MOVING_DIGITS_FRAME)
    for i in range(n):
        for d in range(num_digits):
            glyph = digits[picks[i, d], 0]
            for f in range(frames):
                x, y = (int(v) for v in positions[i, d, f])
                window = clips[i, f, 0, y : y + _DIGIT, x : x + _DIGIT]
                torch.maximum(window, glyph, out=window)
    names = [str(c) for c in range(10)]
    return MovingDigits(clips * 2 - 1, labels, names, positions, velocities)


def read_clip(source: str | os.PathLike[str], channels: int | None = None) -> Tensor:
    """One clip as (F, C, H, W) float32 in [0, 1]: an animated GIF / WebP file, or a folder of frame images read
    in name order. C is ``channels`` (1 or 3), else 1 when every frame is gray and 3 otherwise."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_image(p))
        if not files:
            raise DataError(f"clip folder '{path}' holds no frame images (.png, .jpg, ...).")
        frames = [_frame_file(p) for p in files]
    elif path.is_file() and path.suffix.lower() in MOVIE_EXTENSIONS:
        frames = _movie_frames(path)
    elif path.is_file() and path.suffix.lower() in CLIP_EXTENSIONS:
        frames = _animation_frames(path)
    elif path.is_file():
        raise DataError(f"'{path}' is not a clip; expected a {' or '.join(CLIP_EXTENSIONS)} file or a frame folder.")
    else:
        raise DataError(f"clip '{path}' does not exist.")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise DataError(f"clip '{path}' has frames of different sizes {sorted(sizes)}; expected one size.")
    gray = channels == 1 or (channels is None and all(f.mode in ("1", "L", "LA") for f in frames))
    arrays = [np.asarray(f.convert("L" if gray else "RGB"), dtype=np.uint8) for f in frames]
    array = np.stack(arrays)
    array = array[..., None] if array.ndim == 3 else array
    return torch.from_numpy(array.astype(np.float32) / np.float32(255)).permute(0, 3, 1, 2).contiguous()


def _frame_file(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            _check_header(img, f"frame '{path}'")
            img.load()
            return img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.copy()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read frame '{path}' ({err}).") from None


def _movie_frames(path: Path) -> list[Image.Image]:
    """The frames of a movie file (MP4, WebM, ...) decoded by PyAV, as RGB images; one DataError for a file it
    cannot decode, or when PyAV is not installed."""
    try:
        import av
    except ImportError:
        raise DataError(
            f"reading '{path.name}' needs PyAV: pip install 'diffusionlab[video]' (GIF, WebP and frame folders need "
            "nothing more)."
        ) from None
    frames: list[Image.Image] = []
    most = limits().max_image_pixels
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"'{path}' has no video stream.")
            for frame in container.decode(video=0):
                image = frame.to_image()
                if (len(frames) + 1) * image.size[0] * image.size[1] > most:
                    raise DataError(f"clip '{path}' has more than {most:,} pixels in all; it is refused.")
                frames.append(image.convert("RGB"))
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"cannot decode movie '{path}' ({err}).") from None
    if not frames:
        raise DataError(f"movie '{path}' has no frames.")
    return frames


def _animation_frames(path: Path) -> list[Image.Image]:
    """The frames of an animation; a frame shown k times as long as the shortest one is read as k frames (GIF
    writers, Pillow's among them, merge repeated frames into one of a longer duration)."""
    frames: list[Image.Image] = []
    durations: list[float] = []
    try:
        with Image.open(path) as img:
            _check_header(img, f"clip '{path}'")
            most = limits().max_image_pixels
            for frame in ImageSequence.Iterator(img):
                if (len(frames) + 1) * img.size[0] * img.size[1] > most:
                    raise DataError(f"clip '{path}' has more than {most:,} pixels in all; it is refused.")
                rgb = frame.convert("RGB")
                array = np.asarray(rgb)
                gray = bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())
                frames.append(rgb.convert("L") if gray else rgb)
                durations.append(float(frame.info.get("duration") or 0))
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"cannot read clip '{path}' ({err}).") from None
    shortest = min((d for d in durations if d > 0), default=0.0)
    if shortest <= 0:
        return frames
    repeats = [max(1, round(d / shortest)) if abs(d / shortest - round(d / shortest)) < 0.01 else 1 for d in durations]
    if sum(repeats) * img.size[0] * img.size[1] > most:
        raise DataError(f"clip '{path}' has more than {most:,} pixels in all; it is refused.")
    return [f for f, k in zip(frames, repeats, strict=True) for _ in range(k)]


def _clips_in(folder: Path) -> list[Path]:
    """The clips directly in a folder: GIF / WebP files and sub-folders of frame images."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in CLIP_EXTENSIONS:
            found.append(p)
        elif p.is_dir() and any(_is_image(q) for q in p.iterdir()):
            found.append(p)
    return found


def load_clip_folder(
    folder: str | os.PathLike[str], image_size: int, frames: int | None = None, channels: int | None = None
) -> ClipDataset:
    """Every clip of a folder (GIF / WebP files and frame-image folders; or class sub-folders of them, labelled by
    the sorted folder names), each cut to its first ``frames`` frames (default: the shortest clip's) and resized to
    ``image_size`` x ``image_size`` (bilinear, antialiased when shrinking), as [-1, 1]."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"clip folder '{root}' does not exist or is not a folder; expected clips:<folder>.")
    loose = _clips_in(root)
    classes = [
        (d.name, found)
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d not in loose and (found := _clips_in(d))
    ]
    if loose and classes:
        raise DataError(f"clip folder '{root}' mixes loose clips with class sub-folders; expected one or the other.")
    items = [(p, None) for p in loose] + [(p, k) for k, (_, found) in enumerate(classes) for p in found]
    if not items:
        raise DataError(
            f"clip folder '{root}' holds no clips; expected {' / '.join(CLIP_EXTENSIONS)} files or folders of "
            "frame images (directly or in class sub-folders)."
        )
    clips = [read_clip(p, channels) for p, _ in items]
    c = channels or (1 if all(x.shape[1] == 1 for x in clips) else 3)
    shortest = min(len(x) for x in clips)
    count = shortest if frames is None else frames
    if count > shortest:
        short = next(p for (p, _), x in zip(items, clips, strict=True) if len(x) == shortest)
        raise DataError(f"frames={count}, but clip '{short}' has only {shortest}; lower --frames.")
    resized = []
    for x in clips:
        x = x[:count].expand(-1, c, -1, -1) if x.shape[1] != c else x[:count]
        shrinking = image_size < min(x.shape[-2:])
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrinking
        )
        resized.append(x.clamp(0, 1) * 2 - 1)
    labels = torch.tensor([k for _, k in items]) if classes else None
    return ClipDataset(torch.stack(resized), labels, [name for name, _ in classes] if classes else None)


def load_clip_dataset(
    spec: str, image_size: int, frames: int | None = None, channels: int | None = None
) -> ClipDataset:
    """A clip dataset by its spec: ``moving_digits`` (one digit), ``moving_digits:2`` (two) or
    ``clips:<folder>``; one DataError naming the spec otherwise."""
    key, _, rest = spec.strip().partition(":")
    if key.lower() == "moving_digits":
        if rest not in ("", "1", "2"):
            raise DataError(f"dataset {spec!r}: moving_digits takes 1 or 2 digits (moving_digits:2), not {rest!r}.")
        if channels not in (None, 1):
            raise DataError(f"moving digits are grayscale; channels={channels} is not available.")
        return moving_digits(frames=frames or _DEFAULT_FRAMES, num_digits=int(rest or 1))
    if key.lower() == "clips" and rest:
        return load_clip_folder(rest, image_size, frames, channels)
    raise DataError(f"unknown clip dataset {spec!r}; expected {', '.join(CLIP_DATASET_FORMS)}.")
