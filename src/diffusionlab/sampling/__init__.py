"""Sampling: time grids, per-sample noise, solvers (pure functions) and guidance (floor 3)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..processes import GaussianProcess
from .adaptive import adaptive_sde, rk45, sra
from .grids import REQUEST_SPACINGS, SPACINGS, check_steps, default_spacing, time_grid
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, check_guidance_interval, null_conditioning
from .noise import NoiseSource, sample_seed
from .ode import deis, dpm_2s, dpmpp_2m, dpmpp_3m, euler, heun, ipndm, two_stage_nfe, unipc
from .sde import annealed_langevin, annealed_langevin_nfe, dpmpp_2m_sde, euler_ancestral, euler_maruyama, pc, pc_nfe
from .solvers import StepCallback, check_eta, consistency, ddim, ddim_step, ddpm
from .thresholding import THRESHOLDINGS, Thresholded, dynamic_threshold

__all__ = [
    "SAMPLERS",
    "TOKEN_SAMPLER_OPTIONS",
    "SPACINGS",
    "REQUEST_SPACINGS",
    "sample",
    "solve",
    "prior_std",
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
    "ddim_step",
    "euler",
    "heun",
    "dpm_2s",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "consistency",
    "ipndm",
    "deis",
    "rk45",
    "adaptive_sde",
    "sra",
    "ADAPTIVE_SAMPLERS",
    "euler_ancestral",
    "euler_maruyama",
    "pc",
    "annealed_langevin",
    "dpmpp_2m_sde",
    "nfe",
    "check_options",
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
    "ipndm": ipndm,
    "deis": deis,
    "rk45": rk45,
    "euler_ancestral": euler_ancestral,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "annealed_langevin": annealed_langevin,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "sra": sra,
    "adaptive_sde": adaptive_sde,
    "consistency": consistency,
}
ADAPTIVE_SAMPLERS = ("rk45", "adaptive_sde")  # their steps follow a tolerance: evaluations known after a run
# the discrete family's samplers (diffusionlab.discrete.sampling.TOKEN_SAMPLERS) and the options each takes: named
# here so that a request is checked before any model is loaded (that module imports this one)
TOKEN_SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {"ancestral": ("temperature", "top_p", "cache")}
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
    "ipndm": 1,
    "deis": 1,
    "sra": two_stage_nfe,
    "consistency": 1,
    "euler_ancestral": 1,
    "ancestral": 1,
    "euler_maruyama": 1,
    "pc": pc_nfe,
    "annealed_langevin": annealed_langevin_nfe,
    "dpmpp_2m_sde": 1,
}


def nfe(sampler: str, steps: int, **options: Any) -> int | None:
    """Network evaluations a sampler spends for ``steps`` steps with ``options`` (guidance doubles the batch,
    not the count); None for the adaptive samplers, whose count follows their tolerance. Exact for grids that end
    at t = 0, as every ``time_grid`` does: heun, dpm_2s and sra take one evaluation for the first-order step into
    the data, 2 steps - 1 in all (one fewer again from flow's t = 1 on a uniform grid, where alpha = 0 makes their
    first step first order too)."""
    if check_sampler(sampler) in ADAPTIVE_SAMPLERS:
        check_steps(steps)
        return None
    count = _NFE_PER_STEP[sampler]
    steps = check_steps(steps)
    return count(steps, **options) if callable(count) else count * steps


_NOT_OPTIONS = ("denoiser", "x", "ts", "cond", "noise", "progress", "callback")  # what every solver takes


def check_sampler(name: str) -> str:
    """Raise one clear error unless ``name`` is a known sampler (of Gaussian or of discrete models)."""
    if name not in SAMPLERS and name not in TOKEN_SAMPLER_OPTIONS:
        raise ValueError(
            f"sampler={name!r} is not known; expected one of {sorted([*SAMPLERS, *TOKEN_SAMPLER_OPTIONS])}."
        )
    return name


def check_options(sampler: str, options: Mapping[str, Any]) -> str:
    """The sampler's name, after one clear error for an unknown sampler or an option its solver does not take."""
    if check_sampler(sampler) in TOKEN_SAMPLER_OPTIONS:
        allowed = list(TOKEN_SAMPLER_OPTIONS[sampler])
    else:
        allowed = [p for p in inspect.signature(SAMPLERS[sampler]).parameters if p not in _NOT_OPTIONS]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"option(s) {unknown} are not known to sampler {sampler!r}; it takes {allowed}.")
    return sampler


def prior_std(process: GaussianProcess, t: Tensor | float) -> float:
    """Standard deviation sqrt(alpha_t^2 + sigma_t^2) of x_t = alpha_t x0 + sigma_t eps for data of unit variance
    (Ho et al. 2020, eq. 4): the std of the Gaussian prior every run starts from at t = ts[0]."""
    return float(torch.sqrt(process.alpha(t) ** 2 + process.sigma(t) ** 2))


def solve(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    sampler: str = "ddim",
    cond: Mapping[str, Tensor] | None = None,
    noise: NoiseSource | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    **options: Any,
) -> Tensor:
    """Run the named solver from x at ts[0] down the grid ts, without gradients; ``options`` (e.g. ``eta``) are
    checked against the solver's own, one clear error naming any it does not take."""
    fn = SAMPLERS[check_options(sampler, options)]
    with torch.no_grad():
        return fn(denoiser, x, ts, cond=cond, noise=noise, progress=progress, callback=callback, **options)


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
    times: Sequence[float] | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples: start from N(0, (alpha^2 + sigma^2) I) at t_max and run a solver down a time grid.

    Sample i uses the noise stream of ``(seed, indices[i])`` (indices default to 0..num_samples-1), so a sample
    is the same at any batch size and position. ``options`` go to the solver (e.g. ``eta`` for DDIM). ``times``
    is the grid itself (a tuned one), in place of ``steps`` and ``spacing``.
    """
    if indices is None:
        if num_samples is None or num_samples <= 0:
            raise ValueError(f"num_samples={num_samples!r} must be a positive integer.")
        indices = range(num_samples)
    if times is not None:
        ts = torch.tensor(list(times), dtype=torch.float64)
    else:
        ts = time_grid(denoiser.process, steps, spacing or default_spacing(denoiser.process))
    noise = NoiseSource(seed, indices, device)
    x = prior_std(denoiser.process, ts[0]) * noise(sample_shape)
    return solve(
        denoiser, x, ts, sampler=sampler, cond=cond, noise=noise, progress=progress, callback=callback, **options
    )
