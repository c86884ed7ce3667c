"""Denoisers: a network's raw output turned into every quantity a sampler or loss may ask for.

A network predicts one thing (``eps``, ``x0``, ``v``, EDM's ``F`` or a flow ``velocity``); the denoiser wraps
it with a process and answers ``x0``, ``eps``, ``score``, ``v`` and the probability-flow velocity at any time.
Samplers talk to denoisers, never to networks (floor 2: imports processes only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .processes import EDMProcess, GaussianProcess, broadcast_like

__all__ = [
    "PARAMETERISATIONS",
    "Prediction",
    "DenoiserLike",
    "Denoiser",
    "CallableDenoiser",
    "noise_conditioning",
    "convert_output",
]

PARAMETERISATIONS = ("eps", "x0", "v", "edm", "velocity")

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


def convert_output(
    parameterisation: str,
    out: Tensor,
    x: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    d_alpha: Tensor | None = None,
    d_sigma: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn a raw output in a parameterisation into (x0, eps), given x = alpha x0 + sigma eps.

    eps: x0 = (x - sigma eps) / alpha (Ho et al. 2020, eq. 11). x0: eps = (x - alpha x0) / sigma.
    v (normalised, n = sqrt(alpha^2 + sigma^2)): x0 = (alpha x - sigma n v) / n^2, eps = (sigma x + alpha n v) / n^2
    (Salimans & Ho 2022, sec. 4). velocity u = alpha' x0 + sigma' eps (flow matching, Lipman et al. 2023):
    solve the 2x2 system with x. (EDM's F is handled by the Denoiser, which knows the preconditioning.)
    """
    if parameterisation == "eps":
        return (x - sigma * out) / alpha, out
    if parameterisation == "x0":
        return out, (x - alpha * out) / sigma
    if parameterisation == "v":
        n = torch.sqrt(alpha**2 + sigma**2)
        return (alpha * x - sigma * n * out) / n**2, (sigma * x + alpha * n * out) / n**2
    if parameterisation == "velocity":
        if d_alpha is None or d_sigma is None:
            raise ValueError("the velocity parameterisation needs d_alpha and d_sigma.")
        det = alpha * d_sigma - sigma * d_alpha
        return (d_sigma * x - sigma * out) / det, (alpha * out - d_alpha * x) / det
    raise ValueError(f"parameterisation={parameterisation!r} is not known; expected one of {PARAMETERISATIONS}.")


class Denoiser(nn.Module):
    """A network plus a process plus a parameterisation; ``denoiser(x, t, cond)`` returns a ``Prediction``.

    The network is called as ``network(c_in * x, c_noise, **cond)``. For ``eps``/``x0``/``v``/``velocity``,
    c_in = 1 / sqrt(alpha^2 + sigma^2) (1 for VP processes, so DDPM networks see x_t as usual). For ``edm``,
    EDM's preconditioning is applied in the equivalent VE frame (Karras et al. 2022, table 1 and eq. 7):
    x0 = c_skip x/alpha + c_out F(c_in x/alpha, c_noise).
    """

    def __init__(
        self, network: nn.Module, process: GaussianProcess, parameterisation: str = "eps", sigma_data: float = 0.5
    ) -> None:
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"parameterisation={parameterisation!r} is not known; expected one of {PARAMETERISATIONS}."
            )
        self.network = network
        self.process = process
        self.parameterisation = parameterisation
        self.sigma_data = float(sigma_data)

    def edm_coefficients(self, ve_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """EDM preconditioning (Karras et al. 2022, table 1): c_skip, c_out, c_in for a VE noise level."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (ve_sigma**2 + sd2)
        c_out = ve_sigma * self.sigma_data / torch.sqrt(ve_sigma**2 + sd2)
        c_in = 1.0 / torch.sqrt(ve_sigma**2 + sd2)
        return c_skip, c_out, c_in

    def forward_raw(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> tuple[Tensor, Prediction]:
        """Run the network once; return its raw output (the training target's space) and the prediction."""
        t = _times(t, x)
        alpha, sigma = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        c_noise = noise_conditioning(self.process, t).to(torch.float32)
        cond = dict(cond or {})
        if self.parameterisation == "edm":
            ve = sigma / alpha
            c_skip, c_out, c_in = self.edm_coefficients(ve)
            out = self.network(c_in * (x / alpha), c_noise, **cond)
            x0 = c_skip * (x / alpha) + c_out * out
            eps = (x - alpha * x0) / sigma
            return out, Prediction(x, x0, eps, alpha, sigma)
        c_in = 1.0 / torch.sqrt(alpha**2 + sigma**2)
        out = self.network(c_in * x, c_noise, **cond)
        d_alpha = d_sigma = None
        if self.parameterisation == "velocity":
            d_alpha, d_sigma = broadcast_like(self.process.d_alpha(t), x), broadcast_like(self.process.d_sigma(t), x)
        x0, eps = convert_output(self.parameterisation, out, x, alpha, sigma, d_alpha, d_sigma)
        return out, Prediction(x, x0, eps, alpha, sigma)

    def forward(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> Prediction:
        return self.forward_raw(x, t, cond)[1]

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the raw output should equal for clean data x0 and noise eps at time t (the regression target)."""
        alpha, sigma = broadcast_like(self.process.alpha(t), x0), broadcast_like(self.process.sigma(t), x0)
        if self.parameterisation == "eps":
            return eps
        if self.parameterisation == "x0":
            return x0
        if self.parameterisation == "v":
            return (alpha * eps - sigma * x0) / torch.sqrt(alpha**2 + sigma**2)
        if self.parameterisation == "velocity":
            d_alpha, d_sigma = broadcast_like(self.process.d_alpha(t), x0), broadcast_like(self.process.d_sigma(t), x0)
            return d_alpha * x0 + d_sigma * eps
        # edm: F_target = (x0 - c_skip x~) / c_out with x~ = x / alpha (Karras et al. 2022, eq. 8)
        ve = sigma / alpha
        c_skip, c_out, _ = self.edm_coefficients(ve)
        return (x0 - c_skip * (x0 + ve * eps)) / c_out

    def target_weight(self, t: Tensor, like: Tensor) -> Tensor:
        """(d target / d x0_hat)^2 at fixed x: an error of e in x0 is an error of sqrt(w) e in the target space.

        Used to express any loss weighting, which the literature writes on the x0 error, in the target's space.
        """
        alpha, sigma = broadcast_like(self.process.alpha(t), like), broadcast_like(self.process.sigma(t), like)
        snr = (alpha / sigma) ** 2
        if self.parameterisation == "eps":
            return snr
        if self.parameterisation == "x0":
            return torch.ones_like(snr)
        if self.parameterisation == "v":
            return (alpha**2 + sigma**2) / sigma**2
        if self.parameterisation == "velocity":
            d_alpha, d_sigma = (
                broadcast_like(self.process.d_alpha(t), like),
                broadcast_like(self.process.d_sigma(t), like),
            )
            return (d_alpha - d_sigma * alpha / sigma) ** 2
        _, c_out, _ = self.edm_coefficients(sigma / alpha)
        return 1.0 / c_out**2


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
