"""Denoising losses: time sampling, weightings, and DDPM's variational-bound terms (floor 3).

The loss is a mean-squared error in the network's own target space (eps, x0, v, EDM's F, velocity); a
weighting written on the x0 error in the literature is converted with ``Denoiser.target_weight``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from .denoisers import Coefficients, Denoiser
from .processes import DiscreteVPProcess, GaussianProcess, broadcast_like

__all__ = [
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "TimeSampling",
    "UniformTimes",
    "LogNormalTimes",
    "LogitNormalTimes",
    "Weighting",
    "UniformWeighting",
    "MinSNRWeighting",
    "EDMWeighting",
    "make_time_sampling",
    "make_weighting",
    "sample_times",
    "x0_weight",
    "denoising_loss",
    "gaussian_kl",
    "ddpm_vlb_term",
]


class TimeSampling(ABC):
    """How training times are drawn: ``sampling(process, n, generator, device) -> t`` of shape (n,)."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(
        self,
        process: GaussianProcess,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor: ...


class UniformTimes(TimeSampling):
    """t ~ U[t_min, t_max]; for a discrete DDPM process, uniform over its T grid times (Ho et al. 2020, Alg. 1)."""

    name = "uniform"

    def __call__(self, process, n, generator=None, device="cpu"):  # type: ignore[no-untyped-def]
        if isinstance(process, DiscreteVPProcess):
            k = torch.randint(0, process.num_steps, (n,), generator=generator)
            return ((k + 1).double() / process.num_steps).to(device)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (process.t_min + u * (process.t_max - process.t_min)).to(device)


class LogNormalTimes(TimeSampling):
    """ln sigma_VE ~ N(p_mean, p_std^2), mapped to the process's time through its log-SNR (Karras et al. 2022,
    table 1, "noise distribution"); valid for every process."""

    name = "lognormal"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, process, n, generator=None, device="cpu"):  # type: ignore[no-untyped-def]
        log_sigma = self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64)
        t = process.t_from_log_snr(-2.0 * log_sigma)
        return t.clamp(process.t_min, process.t_max).to(device)


class LogitNormalTimes(TimeSampling):
    """Flow-matching time t = sigmoid(n), n ~ N(m, s^2) (Esser et al. 2024, SD3, eq. 19); mapped to any process
    through the log-SNR, which for flow's alpha = 1 - t, sigma = t is lambda = -2 logit(t) = -2 n."""

    name = "logit_normal"

    def __init__(self, m: float = 0.0, s: float = 1.0) -> None:
        self.m, self.s = m, s

    def __call__(self, process, n, generator=None, device="cpu"):  # type: ignore[no-untyped-def]
        logit = self.m + self.s * torch.randn(n, generator=generator, dtype=torch.float64)
        t = process.t_from_log_snr(-2.0 * logit)
        return t.clamp(process.t_min, process.t_max).to(device)


class Weighting(ABC):
    """A loss weighting, written as the weight on the squared x0 error: ``weighting(denoiser, t, like)``."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, denoiser: Denoiser, t: Tensor, like: Tensor) -> Tensor: ...


class UniformWeighting(Weighting):
    """Uniform in the network's target space (DDPM's L_simple for eps, Ho et al. 2020, eq. 14)."""

    name = "uniform"

    def __call__(self, denoiser: Denoiser, t: Tensor, like: Tensor) -> Tensor:
        return denoiser.target_weight(t, like)


class MinSNRWeighting(Weighting):
    """min(SNR, gamma) (Hang et al. 2023, eq. 10)."""

    name = "min_snr"

    def __init__(self, gamma: float = 5.0) -> None:
        self.gamma = gamma

    def __call__(self, denoiser: Denoiser, t: Tensor, like: Tensor) -> Tensor:
        c = Coefficients(denoiser.process, t, like)
        return ((c.alpha / c.sigma) ** 2).clamp(max=self.gamma)


class EDMWeighting(Weighting):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, table 1)."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = sigma_data

    def __call__(self, denoiser: Denoiser, t: Tensor, like: Tensor) -> Tensor:
        c = Coefficients(denoiser.process, t, like)
        ve, sd = c.sigma / c.alpha, self.sigma_data
        return (ve**2 + sd**2) / (ve * sd) ** 2


TIME_SAMPLINGS: dict[str, type[TimeSampling]] = {c.name: c for c in (UniformTimes, LogNormalTimes, LogitNormalTimes)}
WEIGHTINGS: dict[str, type[Weighting]] = {c.name: c for c in (UniformWeighting, MinSNRWeighting, EDMWeighting)}


def make_time_sampling(name: str | TimeSampling, p_mean: float = -1.2, p_std: float = 1.2) -> TimeSampling:
    """The time sampling a config names (an object passes through)."""
    if isinstance(name, TimeSampling):
        return name
    if name not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling={name!r} is not known; expected one of {tuple(TIME_SAMPLINGS)}.")
    if TIME_SAMPLINGS[name] is LogNormalTimes:
        return LogNormalTimes(p_mean, p_std)
    return TIME_SAMPLINGS[name]()


def make_weighting(name: str | Weighting, sigma_data: float = 0.5, gamma: float = 5.0) -> Weighting:
    """The weighting a config names (an object passes through)."""
    if isinstance(name, Weighting):
        return name
    if name not in WEIGHTINGS:
        raise ValueError(f"weighting={name!r} is not known; expected one of {tuple(WEIGHTINGS)}.")
    options = {MinSNRWeighting: (gamma,), EDMWeighting: (sigma_data,)}.get(WEIGHTINGS[name], ())
    return WEIGHTINGS[name](*options)


def sample_times(
    process: GaussianProcess,
    n: int,
    method: str | TimeSampling = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> Tensor:
    """Draw n training times with a named (or given) time sampling."""
    return make_time_sampling(method, p_mean, p_std)(process, n, generator, device)


def x0_weight(
    process: GaussianProcess,
    t: Tensor,
    weighting: str | Weighting,
    denoiser: Denoiser,
    like: Tensor,
    gamma: float = 5.0,
) -> Tensor:
    """Weight on the squared x0 error for a named (or given) weighting at times t."""
    sigma_data = getattr(denoiser.parameterisation, "sigma_data", 0.5)
    return make_weighting(weighting, sigma_data, gamma)(denoiser, t, like)


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Mapping[str, Tensor] | None = None,
    time_sampling: str | TimeSampling = "uniform",
    weighting: str | Weighting = "uniform",
    generator: torch.Generator | None = None,
    min_snr_gamma: float = 5.0,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean weighted denoising loss of a batch: noise x0 to time t, regress the network's target.

    ``t`` and ``eps`` are drawn (with ``generator``) unless given. Returns a scalar; per-sample losses are
    averaged over every dimension first (Ho et al. 2020, eq. 14). ``mask`` (x0's shape, True = counted) averages
    over the masked elements of the whole batch instead (CSDI's loss on the imputation targets, Tashiro et al.
    2021, Algorithm 1).
    """
    process = denoiser.process
    weigh = make_weighting(weighting, getattr(denoiser.parameterisation, "sigma_data", 0.5), min_snr_gamma)
    if t is None:
        t = make_time_sampling(time_sampling)(process, x0.shape[0], generator, x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = process.add_noise(x0, t, eps)
    out, _ = denoiser.forward_raw(x_t, t, cond)
    target = denoiser.target(x0, eps, t)
    w = weigh(denoiser, t, x0) / denoiser.target_weight(t, x0)
    squared = w * (out - target) ** 2
    if mask is not None:
        counted = mask.expand_as(squared).to(squared.dtype)
        return (squared * counted).sum() / counted.sum().clamp(min=1.0)
    return squared.flatten(1).mean(1).mean()


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
