"""What the tasks share: image files, input checks, batches, truncated time grids and sampler runs (floor 5).

Tasks take and return images in [0, 1] with shape (N, C, H, W) in pixel space and talk to a model only through
``pipe.encode``, ``pipe.decode``, ``pipe.sample_shape`` and ``pipe.guided_denoiser``, so they work unchanged on
latent models, whose model space is not the pixel space.
"""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import DataError
from ..denoisers import DenoiserLike
from ..images import save_png, to_pil
from ..pipeline import Pipeline
from ..processes import GaussianProcess
from ..sampling import SAMPLERS, NoiseSource, check_sampler, default_spacing, sample_seed, time_grid

__all__ = [
    "read_image",
    "save_image",
    "pixel_shape",
    "check_images",
    "batches",
    "guided",
    "slice_cond",
    "grid_below",
    "run_sampler",
    "auxiliary_noise",
    "initial_std",
]

_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read_image(source: str | os.PathLike[str] | bytes) -> Tensor:
    """One image file (a path, or its bytes) as (C, H, W) float32 in [0, 1] at its own size: C = 1 for grayscale
    files, else 3 (RGB). An alpha channel is dropped; nothing is resized, so every pixel is the file's own.
    """
    what = "the uploaded image" if isinstance(source, bytes) else f"image file '{Path(source)}'"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            img.load()
            img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read {what} ({err}).") from None
    array = np.asarray(img, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def save_image(image: Tensor, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Save one (C, H, W) image in [0, 1] as an 8-bit PNG of the same size, atomically."""
    save_png(to_pil(image), path, metadata)


@torch.no_grad()
def pixel_shape(pipe: Pipeline) -> tuple[int, int, int]:
    """(C, H, W) of the images the model makes: what ``pipe.decode`` gives for one sample of ``pipe.sample_shape``."""
    if len(pipe.sample_shape) != 3:
        raise ValueError(
            f"this model makes samples of shape {tuple(pipe.sample_shape)}, not images; the tasks need an image model."
        )
    shape = pipe.decode(torch.zeros(1, *pipe.sample_shape, device=pipe.device)).shape
    return int(shape[1]), int(shape[2]), int(shape[3])


def _describe(channels: int) -> str:
    return {1: "1 channel (grayscale)", 3: "3 channels (RGB)"}.get(channels, f"{channels} channels")


def check_images(pipe: Pipeline, images: Tensor, unit_range: bool = True) -> Tensor:
    """Images as a float (N, C, H, W) batch of the model's pixel shape, or one clear error naming what is off."""
    if not isinstance(images, Tensor) or images.ndim not in (3, 4) or not images.is_floating_point():
        got = f"{type(images).__name__} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) or (C, H, W), got {got}.")
    images = images[None] if images.ndim == 3 else images
    c, h, w = pixel_shape(pipe)
    if images.shape[1] != c:
        raise ValueError(f"the image has {_describe(images.shape[1])}; this model takes images with {_describe(c)}.")
    if tuple(images.shape[2:]) != (h, w):
        raise ValueError(
            f"the image is {images.shape[3]}x{images.shape[2]} (width x height); this model takes {w}x{h} images."
        )
    if len(images) == 0:
        raise ValueError("no images were given.")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("the images contain NaN or infinite values.")
    if unit_range and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"image values must lie in [0, 1], got [{float(images.min()):.3g}, {float(images.max()):.3g}]."
        )
    return images.float()


def batches(n: int, batch_size: int) -> list[list[int]]:
    """Indices 0..n-1 cut into consecutive batches of at most ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]


def guided(
    pipe: Pipeline,
    n: int,
    labels: Sequence[int] | Tensor | int | None,
    guidance: float | None,
    thresholding: str | None,
    use_ema: bool,
    conditioning: Mapping[str, Any],
) -> tuple[DenoiserLike, dict[str, Tensor] | None]:
    """``pipe.guided_denoiser`` for n images, passing any further conditioning (e.g. prompts) through."""
    settings = {"labels": labels, "guidance": guidance, "thresholding": thresholding, "use_ema": use_ema}
    return pipe.guided_denoiser(n, **settings, **dict(conditioning))


def slice_cond(cond: Mapping[str, Tensor] | None, idx: Sequence[int], device: torch.device) -> dict[str, Tensor] | None:
    """The conditioning of the samples ``idx``, on ``device``."""
    return {k: v[list(idx)].to(device) for k, v in cond.items()} if cond is not None else None


def grid_below(process: GaussianProcess, t: float, steps: int, spacing: str | None = None) -> Tensor:
    """A decreasing grid from t to the data at 0: t, then the times of the full ``steps``-step grid below t.

    So ``steps`` counts the steps of a run from t_max; a run from t takes the part of that grid below it.
    """
    full = time_grid(process, steps, spacing or default_spacing(process))
    t64 = torch.tensor([float(t)], dtype=torch.float64)
    return torch.cat([t64, full[full < float(t) - 1e-12]])


def run_sampler(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    sampler: str,
    cond: Mapping[str, Tensor] | None,
    noise: NoiseSource,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Tensor:
    """Run a named sampler from x at ts[0] down the grid ts, with its options checked by name."""
    fn = SAMPLERS[check_sampler(sampler)]
    allowed = [
        p for p in inspect.signature(fn).parameters if p not in ("denoiser", "x", "ts", "cond", "noise", "progress")
    ]
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ValueError(f"option(s) {unknown} are not known to sampler {sampler!r}; it takes {allowed}.")
    with torch.no_grad():
        return fn(denoiser, x, ts, cond=cond, noise=noise, progress=progress, **dict(options or {}))


def auxiliary_noise(seed: int, indices: Sequence[int], device: torch.device, stream: int) -> NoiseSource:
    """A per-sample noise source independent of the sampler's (seed, index) streams, numbered by ``stream``."""
    return NoiseSource(sample_seed(seed, 2**40 + stream), indices, device)


def initial_std(process: GaussianProcess, t: Tensor | float) -> float:
    """Standard deviation of the prior at t, sqrt(alpha^2 + sigma^2), as ``sampling.sample`` starts from it."""
    return float(torch.sqrt(process.alpha(t) ** 2 + process.sigma(t) ** 2))
