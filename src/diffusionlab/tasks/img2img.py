"""Image-to-image (SDEdit, Meng et al. 2022): noise an input part of the way and denoise it with any sampler.

``strength`` s in (0, 1] is the share of the sampler's time grid that is run: with a grid of ``steps`` steps,
the input is noised to the grid time ts[steps - ceil(s * steps)] (about s * t_max on a uniform grid) by
q(x_t | x0) (Meng et al. 2022, sec. 3) and the last ceil(s * steps) steps are run from there. Small s keeps the
input (realism traded for faithfulness, their fig. 3); s = 1 starts from the prior exactly as ``pipe.sample``
does, so it ignores the input and gives the same images as ``pipe.sample`` with the same seed (floor 5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..denoisers import DenoiserLike
from ..pipeline import Pipeline
from ..sampling import NoiseSource, check_steps, prior_std
from ..sampling.request import SampleRequest, SamplerSpec
from .common import TaskRun, check_images, run_solver, task_request

__all__ = ["check_strength", "start_index", "sdedit", "img2img"]


def check_strength(strength: float) -> float:
    """Raise one clear error unless 0 < strength <= 1."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < float(strength) <= 1.0:
        raise ValueError(
            f"strength={strength!r} must lie in (0, 1]: near 0 keeps the input, 1 ignores it and samples afresh."
        )
    return float(strength)


def start_index(strength: float, steps: int) -> int:
    """Index into a ``steps``-step grid where SDEdit starts: steps - ceil(strength * steps), at least one step run."""
    run = max(1, math.ceil(check_strength(strength) * check_steps(steps) - 1e-9))
    return steps - run


def sdedit(
    denoiser: DenoiserLike,
    x0: Tensor,
    strength: float,
    spec: SamplerSpec,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    progress: bool = False,
) -> Tensor:
    """SDEdit in the model space: x_t = alpha_t x0 + sigma_t eps at the start index for ``strength`` of the grid of
    ``spec`` (Meng et al. 2022, Algorithm 1 with its t0 = strength), then the sampler of ``spec`` down the rest."""
    process = denoiser.process
    ts = spec.grid(process)
    start = start_index(strength, len(ts) - 1)
    eps = noise.like(x0)
    if start == 0:  # the whole grid: start from the prior, as sampling.sample does
        x = prior_std(process, ts[0]) * eps
    else:
        x = process.add_noise(x0, ts[start], eps)
    return run_solver(denoiser, x, ts[start:], spec, cond=cond, noise=noise, progress=progress)


def img2img(
    pipe: Pipeline,
    images: Tensor,
    strength: float,
    *,
    request: SampleRequest | None = None,
    batch_size: int = 256,
    progress: bool = False,
    **settings: Any,
) -> Tensor:
    """Turn images (N, C, H, W) in [0, 1] into new images in [0, 1] that keep their layout at low ``strength``.

    ``settings`` are the request's fields by name, as for ``Pipeline.sample`` (``labels``, ``prompt``,
    ``guidance``, ``sampler``, ``steps``, ``spacing``, ``seed``, ``mixed_precision``, solver options such as ``eta``
    or ``sampler_options``, ...), or pass one ``request``; the sampler and its grid default to the model's. Image i
    uses the noise of (seed, i), so it does not depend on ``batch_size``.
    """
    strength = check_strength(strength)
    images = check_images(pipe, images)
    run = TaskRun.start(pipe, len(images), task_request(pipe, request, settings))

    def edit(idx: list[int], cond: dict[str, Tensor] | None) -> Tensor:
        x0 = pipe.encode(images[idx].to(pipe.device))
        x = sdedit(run.denoiser, x0, strength, run.spec, cond=cond, noise=run.noise(idx), progress=progress)
        return pipe.decode(x).cpu()

    return run.map(edit, range(len(images)), batch_size)
