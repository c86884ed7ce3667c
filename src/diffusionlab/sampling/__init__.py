"""Sampling: time grids, per-sample noise, solvers (pure functions) and guidance (floor 3)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from .grids import SPACINGS, check_steps, default_spacing, time_grid
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, check_guidance_interval, null_conditioning
from .noise import NoiseSource, sample_seed
from .ode import dpm_2s, dpmpp_2m, dpmpp_3m, euler, heun, two_stage_nfe, unipc
from .sde import annealed_langevin, annealed_langevin_nfe, dpmpp_2m_sde, euler_ancestral, euler_maruyama, pc, pc_nfe
from .solvers import StepCallback, check_eta, ddim, ddpm
from .thresholding import THRESHOLDINGS, Thresholded, dynamic_threshold

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "sample",
    "time_grid",
    "check_steps",
    "default_spacing",
    "check_eta",
    "StepCallback",
    "NoiseSource",
    "sample_seed",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "check_guidance_interval",
    "null_conditioning",
    "THRESHOLDINGS",
    "Thresholded",
    "dynamic_threshold",
    "ddpm",
    "ddim",
    "euler",
    "heun",
    "dpm_2s",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "euler_ancestral",
    "euler_maruyama",
    "pc",
    "annealed_langevin",
    "dpmpp_2m_sde",
    "nfe",
]

SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpm_2s": dpm_2s,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "unipc": unipc,
    "euler_ancestral": euler_ancestral,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "annealed_langevin": annealed_langevin,
    "dpmpp_2m_sde": dpmpp_2m_sde,
}
# evaluations per step, or a function (steps, **options) -> evaluations where the options change the count
_NFE_PER_STEP: dict[str, int | Callable[..., int]] = {
    "ddpm": 1,
    "ddim": 1,
    "euler": 1,
    "heun": two_stage_nfe,
    "dpm_2s": two_stage_nfe,
    "dpmpp_2m": 1,
    "dpmpp_3m": 1,
    "unipc": 1,
    "euler_ancestral": 1,
    "euler_maruyama": 1,
    "pc": pc_nfe,
    "annealed_langevin": annealed_langevin_nfe,
    "dpmpp_2m_sde": 1,
}


def nfe(sampler: str, steps: int, **options: Any) -> int:
    """Network evaluations a sampler spends for ``steps`` steps with ``options`` (guidance doubles the batch,
    not the count). Exact for grids that end at t = 0, as every ``time_grid`` does: heun and dpm_2s take one
    evaluation for the first-order step into the data, 2 steps - 1 in all (one fewer again from flow's t = 1 on a
    uniform grid, where alpha = 0 makes their first step first order too)."""
    count = _NFE_PER_STEP[check_sampler(sampler)]
    steps = check_steps(steps)
    return count(steps, **options) if callable(count) else count * steps


def check_sampler(name: str) -> str:
    """Raise one clear error unless ``name`` is a known sampler."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not known; expected one of {sorted(SAMPLERS)}.")
    return name


def sample(
    denoiser: DenoiserLike,
    sample_shape: Sequence[int],
    *,
    num_samples: int | None = None,
    indices: Sequence[int] | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str | None = None,
    seed: int = 0,
    cond: Mapping[str, Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: StepCallback | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples: start from N(0, (alpha^2 + sigma^2) I) at t_max and run a solver down a time grid.

    Sample i uses the noise stream of ``(seed, indices[i])`` (indices default to 0..num_samples-1), so a sample
    is the same at any batch size and position. ``options`` go to the solver (e.g. ``eta`` for DDIM).
    """
    fn = SAMPLERS[check_sampler(sampler)]
    allowed = [
        p
        for p in inspect.signature(fn).parameters
        if p not in ("denoiser", "x", "ts", "cond", "noise", "progress", "callback")
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"option(s) {unknown} are not known to sampler {sampler!r}; it takes {allowed}.")
    if indices is None:
        if num_samples is None or num_samples <= 0:
            raise ValueError(f"num_samples={num_samples!r} must be a positive integer.")
        indices = range(num_samples)
    ts = time_grid(denoiser.process, steps, spacing or default_spacing(denoiser.process))
    noise = NoiseSource(seed, indices, device)
    process = denoiser.process
    init_std = float(torch.sqrt(process.alpha(ts[0]) ** 2 + process.sigma(ts[0]) ** 2))
    x = init_std * noise(sample_shape)
    with torch.no_grad():
        return fn(denoiser, x, ts, cond=cond, noise=noise, progress=progress, callback=callback, **options)
