"""Image-to-image (SDEdit, Meng et al. 2022): noise an input part of the way and denoise it with any sampler.

``strength`` s in (0, 1] is the share of the sampler's time grid that is run: with a grid of ``steps`` steps,
the input is noised to the grid time ts[steps - ceil(s * steps)] (about s * t_max on a uniform grid) by
q(x_t | x0) (Meng et al. 2022, sec. 3) and the last ceil(s * steps) steps are run from there. Small s keeps the
input (realism traded for faithfulness, their fig. 3); s = 1 starts from the prior exactly as ``pipe.sample``
does, so it ignores the input and gives the same images as ``pipe.sample`` with the same seed (floor 5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..pipeline import Pipeline
from ..processes import broadcast_like
from ..sampling import NoiseSource, check_sampler, check_steps, default_spacing, time_grid
from .common import batches, check_images, guided, initial_std, run_sampler, slice_cond

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
    ts: Tensor,
    *,
    sampler: str = "ddim",
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource,
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Tensor:
    """SDEdit in the model space: x_t = alpha_t x0 + sigma_t eps at the grid's start index for ``strength``
    (Meng et al. 2022, Algorithm 1 with its t0 = strength), then ``sampler`` down the rest of the grid ``ts``."""
    start = start_index(strength, len(ts) - 1)
    process = denoiser.process
    eps = noise.like(x0)
    if start == 0:  # the whole grid: start from the prior, as sampling.sample does
        x = initial_std(process, ts[0]) * eps
    else:
        t0 = ts[start]
        x = broadcast_like(process.alpha(t0), x0) * x0 + broadcast_like(process.sigma(t0), x0) * eps
    return run_sampler(denoiser, x, ts[start:], sampler, cond, noise, options, progress)


def img2img(
    pipe: Pipeline,
    images: Tensor,
    strength: float,
    *,
    labels: Sequence[int] | Tensor | int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    thresholding: str | None = None,
    batch_size: int = 256,
    use_ema: bool = True,
    progress: bool = False,
    **conditioning: Any,
) -> Tensor:
    """Turn images (N, C, H, W) in [0, 1] into new images in [0, 1] that keep their layout at low ``strength``.

    ``labels`` (and ``guidance``, and further ``conditioning`` such as prompts) steer the result, through
    ``pipe.guided_denoiser``; ``sampler``, ``steps`` and ``spacing`` default to the model's. Image i uses the
    noise of (seed, i), so it does not depend on ``batch_size``.
    """
    strength = check_strength(strength)
    images = check_images(pipe, images)
    defaults = pipe.config.sample
    sampler = check_sampler(sampler or defaults.sampler)
    steps = check_steps(steps if steps is not None else defaults.steps)
    ts = time_grid(pipe.process, steps, spacing or defaults.spacing or default_spacing(pipe.process))
    denoiser, cond_all = guided(pipe, len(images), labels, guidance, thresholding, use_ema, conditioning)
    device = pipe.device
    out = []
    with torch.no_grad():
        for idx in batches(len(images), batch_size):
            x0 = pipe.encode(images[idx].to(device))
            noise = NoiseSource(seed, idx, device)
            cond = slice_cond(cond_all, idx, device)
            x = sdedit(
                denoiser,
                x0,
                strength,
                ts,
                sampler=sampler,
                cond=cond,
                noise=noise,
                options=sampler_options,
                progress=progress,
            )
            out.append(pipe.decode(x).cpu())
    return torch.cat(out)
