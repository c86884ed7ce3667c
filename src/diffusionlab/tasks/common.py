"""What the tasks share: image files, input checks, the request and batched run, truncated time grids (floor 5).

Tasks take and return images in [0, 1] with shape (N, C, H, W) in pixel space and talk to a model only through
``pipe.encode``, ``pipe.decode``, ``pipe.sample_shape`` and ``pipe.guided_denoiser``, so they work unchanged on
latent models, whose model space is not the pixel space.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..conditioning import iter_batches
from ..denoisers import DenoiserLike
from ..images import read_image_array, save_png, to_pil
from ..pipeline import Pipeline, check_finite_samples
from ..processes import GaussianProcess
from ..sampling import NoiseSource, sample_seed, solve
from ..sampling.request import SampleRequest, SamplerSpec, precision

__all__ = [
    "read_image",
    "save_image",
    "pixel_shape",
    "check_images",
    "check_count",
    "task_request",
    "TaskRun",
    "grid_below",
    "run_solver",
    "auxiliary_noise",
]


def read_image(source: str | os.PathLike[str] | bytes) -> Tensor:
    """One image file (a path, or its bytes) as (C, H, W) float32 in [0, 1] at its own size: C = 1 for grayscale
    files, else 3 (RGB). An alpha channel is dropped; 16-bit files are divided by 65535; nothing is resized, so
    every pixel is the file's own. The header is checked (pixel limit, mode) before decoding; errors are DataError.
    """
    return torch.from_numpy(read_image_array(source)).permute(2, 0, 1)


def save_image(image: Tensor, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Save one (C, H, W) image in [0, 1] as an 8-bit PNG of the same size, atomically."""
    save_png(to_pil(image), path, metadata)


@torch.no_grad()
def pixel_shape(pipe: Pipeline) -> tuple[int, int, int]:
    """(C, H, W) of the images the model makes: what ``pipe.decode`` gives for one sample of ``pipe.sample_shape``."""
    shape = tuple(pipe.sample_shape)
    if len(shape) == 3:  # decoded: a spectrogram model's samples are 2-D, but it makes audio clips (C, L)
        shape = tuple(pipe.decode(torch.zeros(1, *shape, device=pipe.device)).shape[1:])
    if len(shape) != 3:
        raise ValueError(f"this model makes samples of shape {shape}, not images; the tasks need an image model.")
    return int(shape[0]), int(shape[1]), int(shape[2])


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


def check_count(name: str, value: int) -> int:
    """Raise one clear error naming ``name`` unless value is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    return value


def task_request(
    pipe: Pipeline,
    request: SampleRequest | None,
    settings: dict[str, Any],
    sampler: str | None = None,
    thresholding: str | None = None,
) -> SampleRequest:
    """A task's request resolved once against the model's defaults: ``request``, or one built from ``settings`` by
    name (``sampler_options`` is the solver's ``options``). An unset sampler is the task's own ``sampler``, if any,
    else the model's; ``thresholding`` (if given) is the task's and replaces the request's."""
    given = {k: v for k, v in settings.items() if v is not None}
    if request is not None and given:
        raise ValueError(f"give request= or the settings {sorted(given)} by name, not both.")
    if request is None:
        options = given.pop("sampler_options", None)
        if options:
            given["options"] = {**(given.get("options") or {}), **options}
        request = SampleRequest.from_settings(**given)
    if sampler is not None and request.sampler.sampler is None:
        request = request.model_copy(update={"sampler": request.sampler.model_copy(update={"sampler": sampler})})
    if thresholding is not None:
        guidance = request.guidance.model_copy(update={"thresholding": thresholding})
        request = request.model_copy(update={"guidance": guidance})
    return request.resolve(pipe.config.sample)


@dataclass(frozen=True)
class TaskRun:
    """One task's run: the resolved request, the guided denoiser and the conditioning of its n inputs (on the CPU)."""

    pipe: Pipeline
    request: SampleRequest
    denoiser: DenoiserLike
    cond: dict[str, Tensor] | None

    @classmethod
    def start(cls, pipe: Pipeline, n: int, request: SampleRequest) -> TaskRun:
        """The run of n inputs: ``pipe.guided_denoiser`` for the (resolved) request."""
        denoiser, cond = pipe.guided_denoiser(n, request)
        return cls(pipe, request, denoiser, cond)

    @property
    def spec(self) -> SamplerSpec:
        """The resolved sampler: name, steps, spacing and options."""
        return self.request.sampler

    def noise(self, indices: Sequence[int]) -> NoiseSource:
        """The noise streams (seed, i) of the inputs ``indices``, so input i's result does not depend on batching."""
        return NoiseSource(self.request.seed, indices, self.pipe.device)

    def map(
        self, fn: Callable[[list[int], dict[str, Tensor] | None], Tensor], indices: Sequence[int], batch_size: int
    ) -> Tensor:
        """``fn(idx, cond)`` over batches of ``indices`` (``conditioning.iter_batches``), without gradients and under
        the request's precision; the results concatenated in the order of ``indices``."""
        with precision(self.request.guidance.mixed_precision), torch.no_grad():
            out = [fn(idx, cond) for idx, cond in iter_batches(indices, batch_size, self.cond, self.pipe.device)]
        return check_finite_samples(torch.cat(out), self.request)


def grid_below(process: GaussianProcess, t: float, spec: SamplerSpec) -> Tensor:
    """A decreasing grid from t to the data at 0: t, then the times of the sampler's full grid below t.

    So ``spec.steps`` counts the steps of a run from t_max; a run from t takes the part of that grid below it.
    """
    full = spec.grid(process)
    t64 = torch.tensor([float(t)], dtype=torch.float64)
    return torch.cat([t64, full[full < float(t) - 1e-12]])


def run_solver(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    spec: SamplerSpec,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    progress: bool = False,
) -> Tensor:
    """``sampling.solve`` with the sampler and options of ``spec``: from x at ts[0] down the grid ts."""
    sampler = spec.sampler or "ddim"
    return solve(denoiser, x, ts, sampler=sampler, cond=cond, noise=noise, progress=progress, **spec.options)


def auxiliary_noise(seed: int, indices: Sequence[int], device: torch.device, stream: int) -> NoiseSource:
    """A per-sample noise source independent of the sampler's (seed, index) streams, numbered by ``stream``."""
    return NoiseSource(sample_seed(seed, 2**40 + stream), indices, device)
