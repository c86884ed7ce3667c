"""Solvers: each one a pure function ``(denoiser, x, ts, *, cond, noise, ...) -> x`` that reads like its paper.

``ts`` is a decreasing time grid ending at 0 (see ``grids.time_grid``); ``noise`` is a ``NoiseSource`` (or any
callable giving N(0, I) noise shaped like x) for the stochastic solvers; ``callback`` (a ``StepCallback``) sees
each step. Nothing is kept between calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..denoisers import DenoiserLike, Prediction
from ..processes import GaussianProcess

__all__ = ["ddpm", "ddim", "ddim_step", "consistency", "check_eta", "StepCallback"]

Noise = Callable[..., Tensor]


class StepCallback(Protocol):
    """Called once after each grid step i with the time reached ts[i + 1], the state x there and the data estimate
    x0 of the step's network evaluation (None if it made none). It must not modify the tensors in place."""

    def __call__(self, *, step: int, t: Tensor, x: Tensor, x0: Tensor | None) -> None: ...


def _report(callback: StepCallback | None, i: int, t: Tensor, x: Tensor, x0: Tensor | None) -> None:
    """Hand step i to the callback, if any; every solver reports through here."""
    if callback is not None:
        callback(step=i, t=t, x=x, x0=x0)


def check_eta(eta: float) -> float:
    """Raise one clear error unless 0 <= eta <= 1."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta={eta} must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM's ancestral noise).")
    return float(eta)


def _steps(ts: Tensor, progress: bool, name: str) -> range | tqdm:
    n = len(ts) - 1
    return tqdm(range(n), desc=name, unit="step", leave=False) if progress else range(n)


def _noise_like(noise: Noise | None, x: Tensor) -> Tensor:
    if noise is None:
        return torch.randn_like(x)
    return noise.like(x) if hasattr(noise, "like") else noise(x.shape[1:], x.dtype)


def ddim(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    eta: float = 0.0,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021a, eq. 12) on any process: from t to s,

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c = eta * sqrt(Var q(x_s | x_t, x0)).
    eta = 0 is the deterministic DDIM (the probability-flow ODE's first-order solver), eta = 1 is DDPM.
    """
    eta = check_eta(eta)
    for i in _steps(ts, progress, "ddim"):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        x = ddim_step(denoiser.process, pred, t, s, eta, noise)
        _report(callback, i, s, x, pred.x0)
    return x


def consistency(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) for a model whose x0_hat maps any point of a
    trajectory to its end (a consistency-distilled student): x0 = f(x, t_0), then at each later time of the grid
    x = alpha_t x0 + sigma_t z and x0 = f(x, t). One evaluation per step; the steps' noise is fresh."""
    x0 = x
    for i in _steps(ts, progress, "consistency"):
        t, s = ts[i], ts[i + 1]
        if i > 0:
            a, sg = float(denoiser.process.alpha(t)), float(denoiser.process.sigma(t))
            x = a * x0 + sg * _noise_like(noise, x0)
        x0 = denoiser(x, t, cond).x0
        _report(callback, i, s, x0, x0)  # the state of a consistency model is its estimate of the end
    return x0


def ddim_step(
    process: GaussianProcess, pred: Prediction, t: Tensor, s: Tensor, eta: float, noise: Noise | None
) -> Tensor:
    """One DDIM step from t down to s < t, given the denoiser's prediction at t (Song et al. 2021a, eq. 12):
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c = eta * sqrt(Var q(x_s | x_t, x0))."""
    a_s, s_s = float(process.alpha(s)), float(process.sigma(s))
    c = eta * math.sqrt(float(process.posterior(t, s)[2])) if eta > 0 else 0.0
    x = a_s * pred.x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * pred.eps
    if c > 0:
        x = x + c * _noise_like(noise, x)
    return x


def ddpm(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any grid and process: draw x_s from the
    posterior q(x_s | x_t, x0 = x0_hat) with its variance (VDM, Kingma et al. 2021, eq. 29-31)."""
    process = denoiser.process
    for i in _steps(ts, progress, "ddpm"):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        coef_xt, coef_x0, var = (float(c) for c in process.posterior(t, s))
        x = coef_xt * x + coef_x0 * pred.x0
        if var > 0:
            x = x + math.sqrt(var) * _noise_like(noise, x)
        _report(callback, i, s, x, pred.x0)
    return x
