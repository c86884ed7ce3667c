"""Time grids tuned to a model (floor 3): the grid on which an ODE solver, at a fixed number of steps, lands
closest to the converged solution of the probability-flow ODE from the same noise, on a calibration batch of the
model's own trajectories.

In the spirit of Align Your Steps (Sabour et al. 2024) and GITS (Chen et al. 2024), which both optimise a sampler's
few time points for one model; here the objective is the one the bench reports, the RMS error of the solver's
result against a fine reference solve from the same noise, and it is minimised directly by Nelder-Mead (Nelder &
Mead 1965, scipy) over the shares of the span in log sigma~ (sigma~ = sigma / alpha, the VE noise level) that the
steps take, a softmax of free weights, so every trial grid is decreasing, once from each standard grid (karras,
log_snr, uniform: their basins differ). The first point (t_max), the last noise level (t_min) and the final 0 stay
where the process puts them; a grid that does not beat the best standard one is not kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from ..denoisers import DenoiserLike
from ..processes import GaussianProcess
from .grids import time_grid

__all__ = ["TunedGrid", "tune_grid", "TUNABLE_SAMPLERS", "START_SPACINGS", "grid_key"]

START_SPACINGS = ("karras", "log_snr", "uniform")  # the standard grids a search starts from, one search each
MIN_SHARE = 1e-4  # the least share of the span in log sigma~ one step may take

# deterministic solvers of the probability-flow ODE (stochastic ones have no single answer to tune towards)
TUNABLE_SAMPLERS = ("ddim", "euler", "heun", "dpm_2s", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "deis")


def grid_key(sampler: str, steps: int) -> str:
    """The key of a tuned grid in ``config.sample.tuned_grids``."""
    return f"{sampler}:{steps}"


@dataclass(frozen=True)
class TunedGrid:
    """A tuned grid (steps + 1 decreasing times ending at 0), the RMS error against the reference on the best
    standard grid it started from (``start_spacing``) and after tuning."""

    times: list[float]
    error_before: float
    error_after: float
    start_spacing: str
    solves: int


def _times_at(process: GaussianProcess, log_ve: Tensor) -> Tensor:
    """Times at VE levels exp(log_ve): lambda = -log sigma~, and the process's log-SNR is 2 lambda."""
    return process.t_from_log_snr(-2.0 * log_ve).to(torch.float64).clamp(0.0, float(process.t_max))


def _log_ve(process: GaussianProcess, t: Tensor) -> Tensor:
    return -0.5 * process.log_snr(t).to(torch.float64)


def tune_grid(
    denoiser: DenoiserLike,
    x: Tensor,
    solve: Callable[[Tensor], Tensor],
    steps: int,
    reference: Tensor,
    *,
    start_spacing: str | Sequence[str] = START_SPACINGS,
    evaluations: int | None = None,
) -> TunedGrid:
    """Tune the ``steps``-step grid of ``solve`` (grid -> result from the calibration noise ``x``) towards
    ``reference`` (the converged result from the same noise): a local search from each of ``start_spacing``'s
    grids, ``evaluations`` solves in all (default 40 per free point and start), the best grid kept (a standard
    one when no search beats it); ``error_before`` is the best standard grid's."""
    process: GaussianProcess = denoiser.process
    solves = [0]

    def error(ts: Tensor) -> float:
        solves[0] += 1
        try:
            with torch.no_grad():
                out = solve(ts)
        except (ZeroDivisionError, ValueError):  # a degenerate trial grid: the worst score, never a crash
            return math.inf
        value = float((out.double() - reference.double()).pow(2).mean().sqrt())
        return value if math.isfinite(value) else math.inf

    names = [start_spacing] if isinstance(start_spacing, str) else list(start_spacing)
    tried = {name: error(time_grid(process, steps, name)) for name in names}
    best_name = min(tried, key=tried.get)
    best = TunedGrid(time_grid(process, steps, best_name).tolist(), tried[best_name], tried[best_name], best_name, 0)
    budget = max(1, (evaluations or 40 * max(1, steps - 2) * len(names)) // len(names))
    for name in names:  # a local search from each standard grid: their basins differ
        found = _search(process, time_grid(process, steps, name), steps, error, budget)
        if found is not None and found[1] < best.error_after:
            best = TunedGrid(found[0].tolist(), tried[best_name], found[1], name, 0)
    return TunedGrid(best.times, best.error_before, best.error_after, best.start_spacing, solves[0])


def _search(
    process: GaussianProcess, start: Tensor, steps: int, error: Callable[[Tensor], float], budget: int
) -> tuple[Tensor, float] | None:
    """Nelder-Mead from ``start`` over the shares of the span in log sigma~ the free steps take; the best grid
    and its error, or None when no point is free to move."""
    v = _log_ve(process, start[:-1])  # log sigma~ of t_max .. t_min (t_max may be +inf: alpha = 0)
    first = 1 if not math.isfinite(float(v[0])) else 0  # the first finite point stays, as does t_min
    top, bottom = float(v[first]), float(v[steps - 1])
    if len(v) - 1 - first < 2:
        return None

    def grid(w: np.ndarray) -> Tensor:
        share = np.exp(np.clip(w - w.max(), -30.0, 0.0))
        share = np.maximum(share / share.sum(), MIN_SHARE)  # no step shrinks to nothing (two equal times)
        inner = top + (bottom - top) * np.cumsum(share / share.sum())[:-1]
        ts = start.clone()
        ts[first + 1 : steps - 1] = _times_at(process, torch.tensor(inner, dtype=torch.float64))
        return ts

    w0 = np.log(np.maximum(np.diff(v[first:].numpy()) / (bottom - top), 1e-9))
    fit = minimize(
        lambda w: error(grid(w)), w0, method="Nelder-Mead", options={"maxfev": budget, "xatol": 1e-3, "fatol": 1e-7}
    )
    return grid(fit.x), float(fit.fun)


def solver(
    sampler_fn: Callable[..., Tensor], denoiser: DenoiserLike, x: Tensor, cond: Mapping[str, Tensor] | None, **options
) -> Callable[[Tensor], Tensor]:
    """``ts -> sampler_fn(denoiser, x, ts, cond=cond, **options)`` without gradients."""

    def run(ts: Tensor) -> Tensor:
        with torch.no_grad():
            return sampler_fn(denoiser, x, ts, cond=cond, **options)

    return run
