"""Time grids for sampling: decreasing times from t_max to the data at t = 0, any number of steps.

A grid of ``steps`` solver steps has ``steps + 1`` entries; the last is 0 (the data). Grids are plain tensors
(float64), so a sampler is a pure function of (denoiser, x, grid).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes import DiscreteVPProcess, GaussianProcess

__all__ = ["SPACINGS", "time_grid", "few_step_grid", "check_steps", "default_spacing"]

SPACINGS = ("uniform", "leading", "trailing", "linspace", "karras", "log_snr")
TUNED = "tuned"  # a model's own grid (config.sample.tuned_grids), resolved by the request; never built here
REQUEST_SPACINGS = (*SPACINGS, TUNED)  # what a request may name
_DISCRETE_ONLY = ("leading", "trailing", "linspace")


def default_spacing(process: GaussianProcess) -> str:
    """The grid a process samples best with by default: EDM's Karras grid for the variance-exploding processes
    (uniform t is far too coarse at small sigma there), uniform t for the rest (DDIM's choice)."""
    return process.default_spacing


def check_steps(steps: int) -> int:
    """Raise one clear error unless ``steps`` is a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps={steps!r} must be a positive integer.")
    return steps


def time_grid(process: GaussianProcess, steps: int, spacing: str = "uniform", rho: float = 7.0) -> Tensor:
    """Sampling times for ``steps`` steps under a spacing.

    uniform: t uniform from t_max to t_min (DDIM, Song et al. 2021a). leading / trailing / linspace: DDPM
    timestep spacings of Lin et al. 2024 (table 2), for discrete DDPM processes only. karras: EDM's
    sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho (Karras et al. 2022, eq. 5) on the
    VE noise level sigma/alpha. log_snr: uniform in lambda (Lu et al. 2022, DPM-Solver, sec. 3.3).
    """
    check_steps(steps)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not known; expected one of {SPACINGS}.")
    if spacing == TUNED:
        raise ValueError("spacing='tuned' is a model's own grid: sample through the model (its request resolves it).")
    zero = torch.zeros(1, dtype=torch.float64)
    if spacing in _DISCRETE_ONLY:
        if not isinstance(process, DiscreteVPProcess):
            raise ValueError(
                f"spacing={spacing!r} needs a discrete DDPM process (process='ddpm'); this is {process.name!r}. "
                f"Use one of {[s for s in SPACINGS if s not in _DISCRETE_ONLY]}."
            )
        T = process.num_steps
        if steps > T:
            raise ValueError(f"steps={steps} exceeds the process's {T} discrete steps for spacing={spacing!r}.")
        if spacing == "leading":
            k = torch.arange(steps, dtype=torch.float64).mul(T // steps).flip(0)
        elif spacing == "trailing":
            # T - i T/steps for i < steps; a float arange(T, 0, -T/steps) can yield steps + 1 entries
            k = (T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round() - 1
        else:
            k = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
        return torch.cat([(k + 1) / T, zero])
    t_max, t_min = float(process.t_max), float(process.t_min)
    if steps == 1:
        return torch.tensor([t_max, 0.0], dtype=torch.float64)
    if spacing == "uniform":
        return torch.cat([torch.linspace(t_max, t_min, steps, dtype=torch.float64), zero])
    lam_max = float(process.log_snr(t_min))
    lam_min = max(float(process.log_snr(t_max)), -40.0)  # clip where the prior is exactly noise (flow at t=1)
    if spacing == "log_snr":
        lam = torch.linspace(lam_min, lam_max, steps, dtype=torch.float64)
    else:
        s_max, s_min = math.exp(-0.5 * lam_min), math.exp(-0.5 * lam_max)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        sig = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lam = -2.0 * torch.log(sig)
    t = process.t_from_log_snr(lam).to(torch.float64)
    t[-1] = t_min  # exact endpoints despite the round trip through lambda
    if lam_min > -40.0:
        t[0] = t_max
    return torch.cat([t, zero])


def few_step_grid(process: GaussianProcess, steps: int, spacing: str = "karras") -> Tensor:
    """``spacing``'s grid of ``steps + 1`` noise levels with t_min left out: ``steps`` real levels from t_max,
    then 0. For students that map any level to the data in one call (consistency models, Song et al. 2023, Algorithm
    1; reflowed flows, Liu et al. 2023), whose last step must start from a real noise level: on ``time_grid``'s
    t_max -> t_min -> 0, a second step from t_min changes almost nothing."""
    grid = time_grid(process, check_steps(steps) + 1, spacing)
    return torch.cat([grid[:-2], grid[-1:]])
