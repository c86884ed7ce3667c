"""Denoisers: a network's raw output turned into every quantity a sampler or loss may ask for.

A network predicts one thing (``eps``, ``x0``, ``v``, EDM's ``F`` or a flow ``velocity``), each a
``Parameterisation`` class chosen once from the config; the denoiser wraps it with a process and answers
``x0``, ``eps``, ``score``, ``v`` and the probability-flow velocity at any time.
Samplers talk to denoisers, never to networks (floor 2: imports processes only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .processes import EDMProcess, GaussianProcess, MonotoneLogSNR, broadcast_like

__all__ = [
    "PARAMETERISATIONS",
    "Parameterisation",
    "EpsPrediction",
    "X0Prediction",
    "VPrediction",
    "EDMPreconditioning",
    "FlowVelocity",
    "make_parameterisation",
    "Coefficients",
    "Prediction",
    "DenoiserLike",
    "Denoiser",
    "CallableDenoiser",
    "noise_conditioning",
]

Conditioning = Mapping[str, Tensor] | None


@dataclass
class Prediction:
    """The denoiser's answer at (x, t): the data estimate and the noise estimate, consistent with
    ``x = alpha x0 + sigma eps``. ``alpha`` and ``sigma`` are shaped to broadcast against ``x``."""

    x: Tensor
    x0: Tensor
    eps: Tensor
    alpha: Tensor
    sigma: Tensor

    @property
    def score(self) -> Tensor:
        """grad_x log p_t(x) = -eps / sigma (Song et al. 2021, Vincent 2011)."""
        return -self.eps / self.sigma

    @property
    def v(self) -> Tensor:
        """v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2) (Salimans & Ho 2022, eq. 9, normalised)."""
        return (self.alpha * self.eps - self.sigma * self.x0) / torch.sqrt(self.alpha**2 + self.sigma**2)

    def with_x0(self, x0: Tensor) -> Prediction:
        """The prediction with a replaced data estimate (e.g. clipped), eps recomputed to stay consistent."""
        return Prediction(self.x, x0, (self.x - self.alpha * x0) / self.sigma, self.alpha, self.sigma)


@runtime_checkable
class DenoiserLike(Protocol):
    """Anything a sampler can call: ``denoiser(x, t, cond) -> Prediction`` with a ``process`` attribute."""

    process: GaussianProcess

    def __call__(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> Prediction: ...


def noise_conditioning(process: GaussianProcess, t: Tensor) -> Tensor:
    """The network's noise-level input: c_noise = -lambda(t) / 8, i.e. EDM's ln(sigma) / 4 (Karras et al. 2022,
    table 1) in every process, so a network sees the same input for the same noise level whatever the
    time parameterisation. The log-SNR is clipped to [-20, 20] so pure noise and pure data stay finite."""
    return -process.log_snr(t).clamp(-20.0, 20.0) / 8.0


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    t = t if isinstance(t, Tensor) else torch.tensor(float(t))
    t = t.to(device=x.device, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class Coefficients:
    """alpha(t), sigma(t) (and on demand their time derivatives) of a process, shaped to broadcast against x."""

    def __init__(self, process: GaussianProcess, t: Tensor, like: Tensor) -> None:
        self.process, self.t, self.like = process, t, like
        self.alpha = broadcast_like(process.alpha(t), like)
        self.sigma = broadcast_like(process.sigma(t), like)

    @cached_property
    def d_alpha(self) -> Tensor:
        """d alpha / dt."""
        return broadcast_like(self.process.d_alpha(self.t), self.like)

    @cached_property
    def d_sigma(self) -> Tensor:
        """d sigma / dt."""
        return broadcast_like(self.process.d_sigma(self.t), self.like)


class Parameterisation(ABC):
    """What a network predicts, and how its raw output turns into (x0, eps) given x = alpha x0 + sigma eps.

    Every parameterisation except EDM's feeds the network c_in x with c_in = 1 / sqrt(alpha^2 + sigma^2)
    (1 for VP processes, so DDPM networks see x_t as usual).
    """

    name: ClassVar[str]

    def network_input(self, x: Tensor, c: Coefficients) -> Tensor:
        """The network's input for the noisy sample x."""
        return 1.0 / torch.sqrt(c.alpha**2 + c.sigma**2) * x

    @abstractmethod
    def prediction(self, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        """(x0, eps) from the network's raw output ``out`` at x."""

    @abstractmethod
    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        """What the raw output should equal for clean data x0 and noise eps (the regression target)."""

    @abstractmethod
    def target_weight(self, c: Coefficients) -> Tensor:
        """(d target / d x0_hat)^2 at fixed x: an error e in x0 is an error sqrt(w) e in the target space.

        Used to express any loss weighting, which the literature writes on the x0 error, in the target's space.
        """

    def config(self) -> dict[str, Any]:
        """Plain data that ``make_parameterisation(**config)`` turns back into this object."""
        return {"name": self.name}


class EpsPrediction(Parameterisation):
    """The network predicts the noise: x0 = (x - sigma eps) / alpha (Ho et al. 2020, eq. 11)."""

    name = "eps"

    def prediction(self, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        return (x - c.sigma * out) / c.alpha, out

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        return eps

    def target_weight(self, c: Coefficients) -> Tensor:
        return (c.alpha / c.sigma) ** 2  # the SNR


class X0Prediction(Parameterisation):
    """The network predicts the data: eps = (x - alpha x0) / sigma."""

    name = "x0"

    def prediction(self, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        return out, (x - c.alpha * out) / c.sigma

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        return x0

    def target_weight(self, c: Coefficients) -> Tensor:
        return torch.ones_like((c.alpha / c.sigma) ** 2)


class VPrediction(Parameterisation):
    """v = (alpha eps - sigma x0) / n, n = sqrt(alpha^2 + sigma^2) (Salimans & Ho 2022, sec. 4, normalised):
    x0 = (alpha x - sigma n v) / n^2, eps = (sigma x + alpha n v) / n^2."""

    name = "v"

    def prediction(self, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        n = torch.sqrt(c.alpha**2 + c.sigma**2)
        return (c.alpha * x - c.sigma * n * out) / n**2, (c.sigma * x + c.alpha * n * out) / n**2

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        return (c.alpha * eps - c.sigma * x0) / torch.sqrt(c.alpha**2 + c.sigma**2)

    def target_weight(self, c: Coefficients) -> Tensor:
        return (c.alpha**2 + c.sigma**2) / c.sigma**2


class FlowVelocity(Parameterisation):
    """The flow-matching velocity u = alpha' x0 + sigma' eps (Lipman et al. 2023, eq. 20): (x0, eps) solve the
    2x2 system of u and x = alpha x0 + sigma eps."""

    name = "velocity"

    def prediction(self, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        det = c.alpha * c.d_sigma - c.sigma * c.d_alpha
        return (c.d_sigma * x - c.sigma * out) / det, (c.alpha * out - c.d_alpha * x) / det

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        return c.d_alpha * x0 + c.d_sigma * eps

    def target_weight(self, c: Coefficients) -> Tensor:
        return (c.d_alpha - c.d_sigma * c.alpha / c.sigma) ** 2


class EDMPreconditioning(Parameterisation):
    """EDM's F with its preconditioning, in the equivalent VE frame x~ = x / alpha, sigma~ = sigma / alpha:
    x0 = c_skip x~ + c_out F(c_in x~, c_noise) (Karras et al. 2022, table 1 and eq. 7)."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = float(sigma_data)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_data": self.sigma_data}

    def coefficients(self, ve_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """c_skip, c_out, c_in for a VE noise level (Karras et al. 2022, table 1)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (ve_sigma**2 + sd2)
        c_out = ve_sigma * self.sigma_data / torch.sqrt(ve_sigma**2 + sd2)
        c_in = 1.0 / torch.sqrt(ve_sigma**2 + sd2)
        return c_skip, c_out, c_in

    def network_input(self, x: Tensor, c: Coefficients) -> Tensor:
        return self.coefficients(c.sigma / c.alpha)[2] * (x / c.alpha)

    def prediction(self, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        c_skip, c_out, _ = self.coefficients(c.sigma / c.alpha)
        x0 = c_skip * (x / c.alpha) + c_out * out
        return x0, (x - c.alpha * x0) / c.sigma

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        # F_target = (x0 - c_skip x~) / c_out with x~ = x0 + sigma~ eps (Karras et al. 2022, eq. 8)
        ve = c.sigma / c.alpha
        c_skip, c_out, _ = self.coefficients(ve)
        return (x0 - c_skip * (x0 + ve * eps)) / c_out

    def target_weight(self, c: Coefficients) -> Tensor:
        return 1.0 / self.coefficients(c.sigma / c.alpha)[1] ** 2


PARAMETERISATIONS: dict[str, type[Parameterisation]] = {
    cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction, EDMPreconditioning, FlowVelocity)
}


def make_parameterisation(name: str, sigma_data: float = 0.5) -> Parameterisation:
    """The parameterisation a config names (the one place a name becomes an object)."""
    if name not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation={name!r} is not known; expected one of {tuple(PARAMETERISATIONS)}.")
    cls = PARAMETERISATIONS[name]
    return cls(sigma_data) if cls is EDMPreconditioning else cls()


class Denoiser(nn.Module):
    """A network plus a process plus a parameterisation; ``denoiser(x, t, cond)`` returns a ``Prediction``.

    The network is called as ``network(parameterisation.network_input(x), c_noise, **cond)``.
    """

    def __init__(
        self,
        network: nn.Module,
        process: GaussianProcess,
        parameterisation: Parameterisation | str = "eps",
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.network = network
        self.process = process.for_network(network)  # a learned schedule (VDM): the network's own
        self.parameterisation = (
            parameterisation
            if isinstance(parameterisation, Parameterisation)
            else make_parameterisation(parameterisation, sigma_data)
        )

    def forward_raw(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> tuple[Tensor, Prediction]:
        """Run the network once; return its raw output (the training target's space) and the prediction."""
        t = _times(t, x)
        c = Coefficients(self.process, t, x)
        c_noise = noise_conditioning(self.process, t).to(torch.float32)
        out = self.network(self.parameterisation.network_input(x, c), c_noise, **dict(cond or {}))
        x0, eps = self.parameterisation.prediction(out, x, c)
        return out, Prediction(x, x0, eps, c.alpha, c.sigma)

    def forward(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> Prediction:
        return self.forward_raw(x, t, cond)[1]

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the raw output should equal for clean data x0 and noise eps at time t (the regression target)."""
        return self.parameterisation.target(x0, eps, Coefficients(self.process, t, x0))

    def target_weight(self, t: Tensor, like: Tensor) -> Tensor:
        """(d target / d x0_hat)^2 at fixed x (see ``Parameterisation.target_weight``)."""
        return self.parameterisation.target_weight(Coefficients(self.process, t, like))


class ScheduledNetwork(nn.Module):
    """A network that carries its process's learned log-SNR schedule (VDM, Kingma et al. 2021): the schedule's
    weights are trained, averaged (EMA), saved and loaded with the network's; calls go to the network."""

    def __init__(self, network: nn.Module, schedule: MonotoneLogSNR) -> None:
        super().__init__()
        self.network, self.schedule = network, schedule

    def forward(self, x: Tensor, c_noise: Tensor, **cond: Any) -> Tensor:
        return self.network(x, c_noise, **cond)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["network"], name)  # the inner network's helpers (check_input_size, ...)


class CallableDenoiser(nn.Module):
    """Wrap any callable ``D(x, sigma) -> x0_hat`` in the variance-exploding form (as k-diffusion takes it).

    ``sigma`` is a per-sample tensor of noise levels; the process is EDM's (alpha = 1, sigma = t), so every
    sampler of ours drives a model brought from elsewhere.
    """

    def __init__(self, fn: Callable[..., Tensor], process: GaussianProcess | None = None, **fn_kwargs: Any) -> None:
        super().__init__()
        self.fn = fn
        self.process = process or EDMProcess()
        self.fn_kwargs = fn_kwargs

    def forward(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> Prediction:
        t = _times(t, x)
        alpha, sigma = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        ve = (self.process.sigma(t) / self.process.alpha(t)).to(x.dtype)
        x0 = self.fn(x / alpha, ve, **dict(cond or {}), **self.fn_kwargs)
        return Prediction(x, x0, (x - alpha * x0) / sigma, alpha, sigma)
