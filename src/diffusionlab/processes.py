"""Gaussian diffusion processes in continuous time: ``x_t = alpha(t) x_0 + sigma(t) eps``.

Every schedule of the field is one of these: DDPM's discrete betas (linear, cosine, geometric) evaluated as a
continuous process, the VP / sub-VP / VE SDEs of Song et al. (2021), EDM's ``sigma = t`` and flow matching.
Samplers, losses and likelihoods only ever ask a process for ``alpha``, ``sigma``, their derivatives, the
log-SNR and the SDE coefficients, so each formula is written once.

This module is floor 1: it imports torch and nothing else of ours.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "GaussianProcess",
    "DiscreteVPProcess",
    "VPProcess",
    "SubVPProcess",
    "VEProcess",
    "EDMProcess",
    "FlowProcess",
    "MonotoneLogSNR",
    "LearnedVPProcess",
    "PROCESSES",
    "make_process",
    "linear_betas",
    "cosine_betas",
    "geometric_betas",
    "scaled_linear_betas",
    "broadcast_like",
]


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)


class GaussianProcess(ABC):
    """A forward process with marginals ``q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I)`` for t in [0, t_max].

    ``t = 0`` is the data itself (alpha = 1, sigma = 0). ``t_min`` is the smallest time a network is trained
    and evaluated at; sampling grids run from ``t_max`` down to ``t_min`` and then step to the data at 0.
    """

    name: str = "process"
    default_spacing: str = "uniform"  # the sampling grid it does best with by default (sampling.grids)
    t_min: float = 0.0
    t_max: float = 1.0

    @abstractmethod
    def alpha(self, t: Tensor | float) -> Tensor:
        """Signal scale alpha(t)."""

    @abstractmethod
    def sigma(self, t: Tensor | float) -> Tensor:
        """Noise scale sigma(t)."""

    @abstractmethod
    def d_alpha(self, t: Tensor | float) -> Tensor:
        """Time derivative d alpha / dt."""

    @abstractmethod
    def d_sigma(self, t: Tensor | float) -> Tensor:
        """Time derivative d sigma / dt."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """Inverse of ``log_snr``: the time at which the process reaches a given log-SNR."""

    def config(self) -> dict[str, Any]:
        """Plain-data description, enough for ``make_process(**config)`` to rebuild the process."""
        return {"name": self.name}

    def log_snr(self, t: Tensor | float) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2) (Kingma et al. 2021, VDM eq. 3)."""
        t = _as_tensor(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def ve_sigma(self, t: Tensor | float) -> Tensor:
        """Noise level of the equivalent variance-exploding process, sigma / alpha (EDM, Karras et al. eq. 4)."""
        return self.sigma(t) / self.alpha(t)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) in closed form: x_t = alpha(t) x_0 + sigma(t) eps (Ho et al. 2020 eq. 4)."""
        a, s = self.alpha(t), self.sigma(t)
        return broadcast_like(a, x0) * x0 + broadcast_like(s, x0) * noise

    def drift_coefficient(self, t: Tensor | float) -> Tensor:
        """f(t) of the forward SDE dx = f(t) x dt + g(t) dw: f = d log alpha / dt (VDM, appendix)."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion_coefficient_sq(self, t: Tensor | float) -> Tensor:
        """g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2 (Kingma et al. 2021, eq. 31; Song et al. 2021 eq. 5)."""
        s = self.sigma(t)
        return 2.0 * s * self.d_sigma(t) - 2.0 * self.drift_coefficient(t) * s * s

    def posterior(self, t: Tensor | float, s: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients of q(x_s | x_t, x_0) for s < t: (coef of x_t, coef of x_0, variance).

        VDM (Kingma et al. 2021) eq. 29-31 with alpha_{t|s} = alpha_t / alpha_s and
        sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2.
        """
        a_t, s_t, a_s, s_s = self.alpha(t), self.sigma(t), self.alpha(s), self.sigma(s)
        a_ts = a_t / a_s
        var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp(min=0.0)
        coef_xt = a_ts * s_s**2 / s_t**2
        coef_x0 = a_s * var_ts / s_t**2
        var = var_ts * s_s**2 / s_t**2
        return coef_xt, coef_x0, var

    def for_network(self, network: nn.Module) -> GaussianProcess:
        """The process a denoiser of ``network`` runs: itself, unless its schedule is learned with the network."""
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def broadcast_like(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (or scalar) coefficient to broadcast against a batch ``x``."""
    c = c.to(device=x.device, dtype=x.dtype)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


# ---------------------------------------------------------------------------------------------------------
# Discrete-time DDPM schedules, evaluated as continuous processes
# ---------------------------------------------------------------------------------------------------------


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """Linear betas of DDPM (Ho et al. 2020, sec. 4), scaled so any step count keeps the same endpoints' SNR."""
    scale = 1000.0 / num_steps
    return torch.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of improved DDPM (Nichol & Dhariwal 2021, eq. 17), betas clipped at ``max_beta``."""

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    i = torch.arange(num_steps, dtype=torch.float64)
    betas = 1 - f((i + 1) / num_steps) / f(i / num_steps)
    return betas.clamp(max=max_beta)


def geometric_betas(num_steps: int = 1000, beta: float = 0.01) -> Tensor:
    """Geometric betas ``beta_t = beta (1 - beta)^(T-1-t)`` (diffusionlab seed 000), growing towards t = T-1."""
    i = torch.arange(num_steps, dtype=torch.float64)
    return beta * (1 - beta) ** (num_steps - 1 - i)


def scaled_linear_betas(num_steps: int = 1000, beta_start: float = 8.5e-4, beta_end: float = 1.2e-2) -> Tensor:
    """Latent diffusion's betas, linear in sqrt(beta) (Rombach et al. 2022; Stable Diffusion's schedule), computed
    in float32 as diffusers' ``beta_schedule="scaled_linear"`` does, so an imported model sees the same betas."""
    root = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32)
    return (root**2).to(torch.float64)


_BETA_SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "geometric": geometric_betas,
    "scaled_linear": scaled_linear_betas,
}


class DiscreteVPProcess(GaussianProcess):
    """A DDPM beta schedule as a continuous VP process.

    Step k = 0..T-1 of the discrete chain sits at time t_k = (k + 1) / T, where alpha(t_k)^2 equals DDPM's
    alpha-bar_k = prod_{j<=k} (1 - beta_j) exactly (Ho et al. 2020, eq. 4). Between grid points log alpha^2 is
    linear in t, i.e. the process is the VP SDE with a piecewise-constant beta(t) = -T log(1 - beta_k).
    """

    name = "ddpm"

    def __init__(self, schedule: str = "linear", num_steps: int = 1000, **schedule_kwargs: float) -> None:
        if schedule not in _BETA_SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is not known; expected one of {sorted(_BETA_SCHEDULES)}.")
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be a positive integer.")
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.schedule_kwargs = dict(schedule_kwargs)
        self.betas = _BETA_SCHEDULES[schedule](num_steps, **schedule_kwargs)
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError(f"the {schedule} schedule with {schedule_kwargs} gives betas outside (0, 1).")
        # knots of log alpha^2 at t = 0, 1/T, ..., 1; slopes per interval
        self._log_a2 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-self.betas), 0)])
        self._rate = -torch.log1p(-self.betas) * num_steps  # beta(t) on each interval
        self.t_min = 1.0 / num_steps
        self.t_max = 1.0

    @property
    def alphas_cumprod(self) -> Tensor:
        """DDPM's alpha-bar_k for k = 0..T-1, as diffusers' schedulers name it."""
        return torch.exp(self._log_a2[1:])

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule, "num_steps": self.num_steps, **self.schedule_kwargs}

    def timestep(self, t: Tensor | float) -> Tensor:
        """Continuous time -> DDPM's integer-valued step index k = t T - 1 (fractional between knots)."""
        return _as_tensor(t) * self.num_steps - 1

    def _interval(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = t.to(torch.float64).clamp(0.0, 1.0) * self.num_steps
        k = u.floor().clamp(max=self.num_steps - 1).long()
        return k, u - k

    def _log_alpha_sq(self, t: Tensor) -> Tensor:
        k, frac = self._interval(t)
        return self._log_a2[k] - frac * self._rate[k] / self.num_steps

    def alpha(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return torch.exp(0.5 * self._log_alpha_sq(t)).to(_float_dtype(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return torch.sqrt(-torch.expm1(self._log_alpha_sq(t))).to(_float_dtype(t))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        k, _ = self._interval(t)
        return (-0.5 * self._rate[k] * torch.exp(0.5 * self._log_alpha_sq(t))).to(_float_dtype(t))

    def d_sigma(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        k, _ = self._interval(t)
        a2 = torch.exp(self._log_alpha_sq(t))
        return (0.5 * self._rate[k] * a2 / torch.sqrt(1 - a2)).to(_float_dtype(t))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        lam = _as_tensor(log_snr).to(torch.float64)
        log_a2 = -torch.nn.functional.softplus(-lam)  # alpha^2 = sigmoid(lambda) for VP
        # log alpha^2 decreases along the knots; find the interval and invert the linear piece
        knots = -self._log_a2  # increasing
        k = torch.searchsorted(knots, -log_a2.reshape(-1), right=True).clamp(1, self.num_steps) - 1
        k = k.reshape(lam.shape)
        frac = (self._log_a2[k] - log_a2) / (self._rate[k] / self.num_steps)
        return ((k + frac) / self.num_steps).clamp(0.0, 1.0)


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


# ---------------------------------------------------------------------------------------------------------
# SDEs of Song et al. (2021)
# ---------------------------------------------------------------------------------------------------------


class VPProcess(GaussianProcess):
    """Variance-preserving SDE with linear beta(t) (Song et al. 2021, eq. 11 and appendix B).

    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, sigma^2 = 1 - alpha^2.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"beta_min={beta_min}, beta_max={beta_max}: expected 0 < beta_min < beta_max.")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def beta(self, t: Tensor | float) -> Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + _as_tensor(t) * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.exp(self._log_alpha(_as_tensor(t)))

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(_as_tensor(t))))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t: Tensor | float) -> Tensor:
        a = self.alpha(t)
        return 0.5 * self.beta(t) * a**2 / self.sigma(t)

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        # log alpha = -log(1 + e^-lambda) / 2 ; solve the quadratic in t
        lam = _as_tensor(log_snr)
        log_a = -0.5 * torch.nn.functional.softplus(-lam)
        a2, b1 = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b1 + torch.sqrt(b1**2 - 4 * a2 * log_a)) / (2 * a2)


class SubVPProcess(VPProcess):
    """sub-VP SDE (Song et al. 2021, eq. 12): alpha as VP, sigma = 1 - alpha^2, whose variance stays below VP's."""

    name = "subvp"

    def sigma(self, t: Tensor | float) -> Tensor:
        return -torch.expm1(2 * self._log_alpha(_as_tensor(t)))

    def d_sigma(self, t: Tensor | float) -> Tensor:
        return self.beta(t) * self.alpha(t) ** 2

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        # SNR = a^2 / (1 - a^2)^2; solve for a^2 = u: u e^-lam = (1-u)^2  ->  take the root in (0, 1)
        lam = _as_tensor(log_snr)
        c = torch.exp(-lam)
        u = ((2 + c) - torch.sqrt((2 + c) ** 2 - 4)) / 2
        log_a = 0.5 * torch.log(u)
        a2, b1 = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b1 + torch.sqrt(b1**2 - 4 * a2 * log_a)) / (2 * a2)


class VEProcess(GaussianProcess):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    NCSN's geometric noise levels (Song & Ermon 2019) are this process on a uniform grid of t. By our
    convention t = 0 is the clean data, so sigma(0) = 0; the geometric curve holds on (0, 1].
    """

    name = "ve"
    default_spacing = "karras"  # uniform t is far too coarse at small sigma here

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"sigma_min={sigma_min}, sigma_max={sigma_max}: expected 0 < sigma_min < sigma_max.")
        self.sigma_min, self.sigma_max, self.t_min = float(sigma_min), float(sigma_max), float(t_min)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return torch.where(t > 0, self.sigma_min * torch.exp(t * self._log_ratio), torch.zeros_like(t))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        return torch.zeros_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def d_sigma(self, t: Tensor | float) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        return (-0.5 * _as_tensor(log_snr) - math.log(self.sigma_min)) / self._log_ratio


class EDMProcess(GaussianProcess):
    """EDM's process (Karras et al. 2022, table 1): alpha = 1, sigma = t, for t in [sigma_min, sigma_max]."""

    name = "edm"
    default_spacing = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"sigma_min={sigma_min}, sigma_max={sigma_max}: expected 0 < sigma_min < sigma_max.")
        self.t_min, self.t_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.t_min, "sigma_max": self.t_max, "sigma_data": self.sigma_data}

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return t.to(_float_dtype(t))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        return torch.zeros_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def d_sigma(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        return torch.exp(-0.5 * _as_tensor(log_snr))


class FlowProcess(GaussianProcess):
    """Flow matching / rectified flow path (Lipman et al. 2023; Liu et al. 2023): alpha = 1 - t, sigma = t."""

    name = "flow"

    def __init__(self, t_min: float = 1e-4) -> None:
        self.t_min = float(t_min)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "t_min": self.t_min}

    def alpha(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return (1.0 - t).to(_float_dtype(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return t.to(_float_dtype(t))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        return -torch.ones_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def d_sigma(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_as_tensor(t), dtype=_float_dtype(_as_tensor(t)))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        # (1 - t) / t = e^{lambda / 2}
        return torch.sigmoid(-0.5 * _as_tensor(log_snr))


# ---------------------------------------------------------------------------------------------------------
# VDM: a learned monotone log-SNR
# ---------------------------------------------------------------------------------------------------------


class MonotoneLogSNR(nn.Module):
    """gamma_eta(t) = -log SNR(t), monotone increasing in t, learned (Kingma et al. 2021, VDM sec. 3.4 and appendix
    H): gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t)))) with positive weights (1 -> 1, 1 -> ``hidden``, ``hidden`` ->
    1), normalised to the learned endpoints: gamma(t) = gamma_0 + (gamma_1 - gamma_0) (gamma~(t) - gamma~(0)) /
    (gamma~(1) - gamma~(0)). At initialisation gamma is nearly linear from ``gamma_min`` to ``gamma_max``."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 1024) -> None:
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_min)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_max)))
        self.w1, self.b1 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
        self.w2 = nn.Parameter(torch.randn(hidden, generator=torch.Generator().manual_seed(0)))
        self.b2 = nn.Parameter(torch.zeros(hidden))
        self.w3 = nn.Parameter(torch.full((hidden,), 1e-3))

    def _raw(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """gamma~(t) and d gamma~ / dt (weights taken in absolute value: monotone)."""
        dtype = torch.promote_types(t.dtype, torch.float32)
        w1, b1 = self.w1.abs().to(dtype), self.b1.to(dtype)
        w2, b2, w3 = self.w2.abs().to(dtype), self.b2.to(dtype), self.w3.abs().to(dtype)
        l1 = w1 * t.to(dtype)
        h = torch.sigmoid(l1[..., None] * w2 + b2)
        raw = l1 + b1 + (h * w3).sum(-1)
        slope = w1 + ((h * (1 - h)) * w2 * w3).sum(-1) * w1
        return raw, slope

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """gamma(t) and gamma'(t), in t's precision (at least float32)."""
        ends, _ = self._raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        raw, slope = self._raw(t)
        g0, g1 = self.gamma_0.to(raw.dtype), self.gamma_1.to(raw.dtype)
        scale = (g1 - g0) / (ends[1] - ends[0])
        return g0 + scale * (raw - ends[0]), scale * slope


class LearnedVPProcess(GaussianProcess):
    """A variance-preserving process whose log-SNR is learned with the network (VDM, Kingma et al. 2021, eq. 3-4):
    alpha^2 = sigmoid(-gamma(t)), sigma^2 = sigmoid(gamma(t)). The schedule's weights live in the network (a
    module with a ``schedule`` attribute); ``for_network`` binds the process to one network's schedule, so the
    EMA network samples with its own. Unbound, it is the initial (untrained) schedule."""

    name = "vdm"
    default_spacing = "uniform"
    t_min = 1e-5  # gamma(0) is finite (sigma_0 > 0): the ODE and the grids may start next to it

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, schedule: MonotoneLogSNR | None = None):
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.schedule = schedule if schedule is not None else MonotoneLogSNR(gamma_min, gamma_max).requires_grad_(False)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "gamma_min": self.gamma_min, "gamma_max": self.gamma_max}

    def for_network(self, network: nn.Module) -> LearnedVPProcess:
        inner = getattr(network, "module", network)  # DDP
        inner = getattr(inner, "_orig_mod", inner)  # torch.compile
        schedule = getattr(inner, "schedule", None)
        if not isinstance(schedule, MonotoneLogSNR):
            raise ValueError("a vdm process needs a network with its learned schedule (network.learned_schedule).")
        return LearnedVPProcess(self.gamma_min, self.gamma_max, schedule)

    def gamma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """gamma(t) = -log SNR(t) and its time derivative."""
        t = _as_tensor(t)
        return self.schedule(t.to(next(self.schedule.parameters()).device))

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.sigmoid(-self.gamma(t)[0]).sqrt()

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sigmoid(self.gamma(t)[0]).sqrt()

    def log_snr(self, t: Tensor | float) -> Tensor:
        return -self.gamma(t)[0]

    def d_alpha(self, t: Tensor | float) -> Tensor:
        """d alpha / dt = -alpha sigma^2 gamma' / 2."""
        g, dg = self.gamma(t)
        return -0.5 * torch.sigmoid(-g).sqrt() * torch.sigmoid(g) * dg

    def d_sigma(self, t: Tensor | float) -> Tensor:
        """d sigma / dt = sigma alpha^2 gamma' / 2."""
        g, dg = self.gamma(t)
        return 0.5 * torch.sigmoid(g).sqrt() * torch.sigmoid(-g) * dg

    @torch.no_grad()
    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """The inverse of the monotone gamma by bisection (60 halvings of [0, 1]), clamped to the ends."""
        target = -_as_tensor(log_snr).to(torch.float64)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.gamma(mid)[0].to(torch.float64).cpu() < target.cpu()
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2


PROCESSES: dict[str, type[GaussianProcess]] = {
    "ddpm": DiscreteVPProcess,
    "vp": VPProcess,
    "subvp": SubVPProcess,
    "ve": VEProcess,
    "edm": EDMProcess,
    "flow": FlowProcess,
    "vdm": LearnedVPProcess,
}


def make_process(name: str, **kwargs: Any) -> GaussianProcess:
    """Build a process from its name and keyword options (the inverse of ``process.config()``)."""
    if name not in PROCESSES:
        raise ValueError(f"process={name!r} is not known; expected one of {sorted(PROCESSES)}.")
    try:
        return PROCESSES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options {kwargs} for the {name!r} process: {err}") from None
