"""Denoising losses: time sampling, weightings, and DDPM's variational-bound terms (floor 3).

The loss is a mean-squared error in the network's own target space (eps, x0, v, EDM's F, velocity); a
weighting written on the x0 error in the literature is converted with ``Denoiser.target_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .denoisers import Denoiser
from .processes import DiscreteVPProcess, GaussianProcess, broadcast_like

__all__ = [
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "sample_times",
    "x0_weight",
    "denoising_loss",
    "gaussian_kl",
    "ddpm_vlb_term",
]

TIME_SAMPLINGS = ("uniform", "lognormal")
WEIGHTINGS = ("uniform", "min_snr", "edm")


def sample_times(
    process: GaussianProcess,
    n: int,
    method: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> Tensor:
    """Draw n training times.

    uniform: t ~ U[t_min, t_max]; for a discrete DDPM process, uniform over its T grid times (Ho et al. 2020,
    Algorithm 1). lognormal: ln sigma_VE ~ N(p_mean, p_std^2) mapped to the process's time through its
    log-SNR (Karras et al. 2022, table 1, "noise distribution"), valid for every process.
    """
    if method == "uniform":
        if isinstance(process, DiscreteVPProcess):
            k = torch.randint(0, process.num_steps, (n,), generator=generator)
            return ((k + 1).double() / process.num_steps).to(device)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (process.t_min + u * (process.t_max - process.t_min)).to(device)
    if method == "lognormal":
        log_sigma = p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float64)
        t = process.t_from_log_snr(-2.0 * log_sigma)
        return t.clamp(process.t_min, process.t_max).to(device)
    raise ValueError(f"time_sampling={method!r} is not known; expected one of {TIME_SAMPLINGS}.")


def x0_weight(
    process: GaussianProcess, t: Tensor, weighting: str, denoiser: Denoiser, like: Tensor, gamma: float = 5.0
) -> Tensor:
    """Weight on the squared x0 error for a named weighting.

    uniform: uniform in the network's target space (DDPM's L_simple for eps). min_snr: min(SNR, gamma)
    (Hang et al. 2023, eq. 10). edm: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    (Karras et al. 2022, table 1).
    """
    if weighting == "uniform":
        return denoiser.target_weight(t, like)
    alpha, sigma = broadcast_like(process.alpha(t), like), broadcast_like(process.sigma(t), like)
    if weighting == "min_snr":
        return ((alpha / sigma) ** 2).clamp(max=gamma)
    if weighting == "edm":
        ve, sd = sigma / alpha, denoiser.sigma_data
        return (ve**2 + sd**2) / (ve * sd) ** 2
    raise ValueError(f"weighting={weighting!r} is not known; expected one of {WEIGHTINGS}.")


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Mapping[str, Tensor] | None = None,
    time_sampling: str = "uniform",
    weighting: str = "uniform",
    generator: torch.Generator | None = None,
    min_snr_gamma: float = 5.0,
    t: Tensor | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    """Mean weighted denoising loss of a batch: noise x0 to time t, regress the network's target.

    ``t`` and ``eps`` are drawn (with ``generator``) unless given. Returns a scalar; per-sample losses are
    averaged over every dimension first (Ho et al. 2020, eq. 14).
    """
    process = denoiser.process
    if t is None:
        t = sample_times(process, x0.shape[0], time_sampling, generator=generator, device=x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = process.add_noise(x0, t, eps)
    out, _ = denoiser.forward_raw(x_t, t, cond)
    target = denoiser.target(x0, eps, t)
    w = x0_weight(process, t, weighting, denoiser, x0, min_snr_gamma) / denoiser.target_weight(t, x0)
    per_sample = (w * (out - target) ** 2).flatten(1).mean(1)
    return per_sample.mean()


def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def ddpm_vlb_term(
    process: GaussianProcess,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    s: Tensor,
    x0_hat: Tensor,
    var_interp: Tensor | None = None,
) -> Tensor:
    """L_{t-1} = KL(q(x_s | x_t, x0) || p(x_s | x_t)) per sample in bits/dim (Ho et al. 2020, eq. 5).

    p's mean is the posterior mean with x0 replaced by the model's x0_hat. Its variance is the posterior
    variance, or, given ``var_interp`` v in [0, 1] (a network output), improved DDPM's interpolation
    exp(v log beta + (1 - v) log beta_tilde) (Nichol & Dhariwal 2021, eq. 15), with beta = 1 - alpha_t^2/alpha_s^2
    (for VP processes). Adding this to the simple loss gives improved DDPM's hybrid objective.
    """
    coef_xt, coef_x0, var = process.posterior(t, s)
    coef_xt, coef_x0, var = (broadcast_like(c, x0) for c in (coef_xt, coef_x0, var))
    true_mean = coef_xt * x_t + coef_x0 * x0
    model_mean = coef_xt * x_t + coef_x0 * x0_hat
    log_var = torch.log(var.clamp(min=1e-20))
    if var_interp is None:
        model_log_var = log_var.expand_as(x0)
    else:
        a_t, a_s = broadcast_like(process.alpha(t), x0), broadcast_like(process.alpha(s), x0)
        log_beta = torch.log((1 - (a_t / a_s) ** 2).clamp(min=1e-20))
        model_log_var = var_interp * log_beta + (1 - var_interp) * log_var
    kl = gaussian_kl(true_mean, log_var.expand_as(x0), model_mean, model_log_var)
    return kl.flatten(1).mean(1) / math.log(2.0)
