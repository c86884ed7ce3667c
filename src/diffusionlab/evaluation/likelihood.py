"""Likelihood of data under a diffusion model, in bits per dimension (floor 3).

Two estimates:

- ``ode_log_likelihood`` / ``bits_per_dim``: the exact log-likelihood of the probability-flow ODE
  (Song et al. 2021, sec. 4.3 and appendix D.2), log p_0(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt, with
  the divergence from the Skilling-Hutchinson estimator (Rademacher or Gaussian probes, fixed along the path)
  or computed exactly (small dimensions), integrated with scipy's ``solve_ivp`` (RK45). 8-bit data is
  uniformly dequantised, as in score_sde.
- ``ddpm_vlb``: DDPM's variational bound L_vlb (Ho et al. 2020, eq. 5) of a discrete-time (``DiscreteVPProcess``)
  model: the prior term, the sum of the T - 1 KL terms, and the discretised Gaussian decoder L_0 (eq. 13).
- ``continuous_vlb``: the continuous-time VLB of any Gaussian process (Kingma et al. 2021, VDM eq. 17 with its
  prior and reconstruction terms): what VDM models train on, a bound for every model.

Data in the model's space lies in [-1, 1] and comes from 8-bit pixels. Every random draw (dequantisation,
probes, VLB noise) comes from the per-sample streams of ``NoiseSource(seed, index)``, so a result does not
depend on the batch size used to compute it (up to the ODE solver's tolerance, whose steps a batch shares).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator
from scipy.integrate import solve_ivp
from torch import Tensor
from tqdm.auto import tqdm

from diffusionlab.denoisers import DenoiserLike
from diffusionlab.losses import ddpm_vlb_term, gaussian_kl
from diffusionlab.processes import DiscreteVPProcess, GaussianProcess, broadcast_like
from diffusionlab.sampling import NoiseSource
from diffusionlab.sampling.request import FrozenSettings

__all__ = [
    "PROBES",
    "LikelihoodOptions",
    "Likelihood",
    "BitsPerDim",
    "VariationalBound",
    "probability_flow_velocity",
    "ode_log_likelihood",
    "quantize",
    "dequantize",
    "bits_per_dim",
    "discretized_gaussian_log_likelihood",
    "ddpm_vlb",
    "continuous_vlb",
    "continuous_vlb_terms",
]

PROBES = ("rademacher", "gaussian", "exact")
LEVELS = 256  # 8-bit data
# bits/dim of 8-bit data from a density on [-1, 1]: each of the 256 bins has width 2/256, so
# -log2 P(bin) ~ -log2 p(x) - log2(2/256) = -log2 p(x) + 7 per dimension (score_sde's offset for centred data)
_BIN_OFFSET_BITS = math.log2(LEVELS / 2)

Cond = Mapping[str, Tensor] | None


@dataclass
class Likelihood:
    """log p(x) in nats per sample (N,), its two parts (prior at t_max, integrated divergence) and the cost."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    nfe: int


@dataclass
class BitsPerDim:
    """Negative log-likelihood of 8-bit data in bits/dim per sample (N,), and the network evaluations spent."""

    bpd: Tensor
    nfe: int


@dataclass
class VariationalBound:
    """DDPM's L_vlb per sample (N,) in bits/dim, and its parts: prior L_T, diffusion sum L_1..L_{T-1}, decoder L_0."""

    bpd: Tensor
    prior: Tensor
    diffusion: Tensor
    decoder: Tensor


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point() or len(x) == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"data must be a non-empty float tensor (N, ...), got {got}.")


def _slice_cond(cond: Cond, lo: int, hi: int, device: torch.device) -> dict[str, Tensor] | None:
    return None if cond is None else {k: v[lo:hi].to(device) for k, v in cond.items()}


def probability_flow_velocity(denoiser: DenoiserLike, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
    """dx/dt of the probability-flow ODE, f(t) x - g(t)^2 / 2 * score (Song et al. 2021, eq. 13).

    With f = alpha'/alpha, g^2 = 2 sigma sigma' - 2 f sigma^2 and score = -eps/sigma this equals
    alpha' x0_hat + sigma' eps_hat (x = alpha x0_hat + sigma eps_hat), the form evaluated here: it stays finite
    where alpha = 0 (flow matching at t = 1), where f and g^2 do not.
    """
    process = denoiser.process
    pred = denoiser(x, t, cond)
    d_alpha = broadcast_like(process.d_alpha(t), x)
    d_sigma = broadcast_like(process.d_sigma(t), x)
    return d_alpha * pred.x0 + d_sigma * pred.eps


def _divergence(v: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """div_x v per sample: the Hutchinson estimate mean_k z_k^T (dv/dx) z_k (Hutchinson 1989; Skilling 1989), or,
    with ``probes=None``, exactly, one backward pass per dimension."""
    n = x.shape[0]
    if probes is None:
        flat_v = v.reshape(n, -1)
        div = torch.zeros(n, dtype=v.dtype, device=v.device)
        for i in range(flat_v.shape[1]):
            (g,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
            div = div + g.reshape(n, -1)[:, i]
        return div
    total = torch.zeros(n, dtype=v.dtype, device=v.device)
    for k in range(probes.shape[0]):
        z = probes[k]
        (vjp,) = torch.autograd.grad(v, x, grad_outputs=z, retain_graph=k < probes.shape[0] - 1)
        total = total + (vjp * z).reshape(n, -1).sum(1)
    return total / probes.shape[0]


class LikelihoodOptions(FrozenSettings):
    """How the likelihood ODE is solved: the divergence estimator (``probe``, ``num_probes``), the solver's
    tolerances and method, and the time interval (None: the process's own ends)."""

    probe: str = "rademacher"
    num_probes: int = 1
    rtol: float = Field(default=1e-5, gt=0)
    atol: float = Field(default=1e-5, gt=0)
    t_min: float | None = None
    t_max: float | None = None
    method: str = "RK45"

    @field_validator("probe")
    @classmethod
    def _probe(cls, v: str) -> str:
        if v not in PROBES:
            raise ValueError(f"probe={v!r} is not known; expected one of {PROBES}")
        return v

    @field_validator("num_probes", mode="before")
    @classmethod
    def _num_probes(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"num_probes={v!r} must be a positive integer")
        return v

    @classmethod
    def of(cls, options: LikelihoodOptions | None, settings: Mapping[str, object]) -> LikelihoodOptions:
        """``options`` as given, or built (and checked) from settings by name; not both."""
        if options is not None and settings:
            raise ValueError(f"give options or the settings {sorted(settings)}, not both.")
        return options if options is not None else cls.make(**settings)

    def interval(self, process: GaussianProcess) -> tuple[float, float]:
        """(t_min, t_max) of the integration, checked against the process's time range."""
        t0 = float(process.t_min if self.t_min is None else self.t_min)
        t1 = float(process.t_max if self.t_max is None else self.t_max)
        if not 0.0 < t0 < t1 <= float(process.t_max):
            raise ValueError(
                f"t_min={t0}, t_max={t1}: expected 0 < t_min < t_max <= {process.t_max} (the process's end)."
            )
        return t0, t1


def _draw_probes(options: LikelihoodOptions, x: Tensor, noise: NoiseSource | None) -> Tensor | None:
    """The Hutchinson probes (num_probes, N, ...), drawn once per sample and kept along the path; None if exact."""
    if noise is None or options.probe == "exact":
        return None
    if len(noise) != len(x):
        raise ValueError(f"the noise source has {len(noise)} streams for {len(x)} samples; give one per sample.")
    draws = torch.stack([noise(x.shape[1:], dtype=x.dtype) for _ in range(options.num_probes)])
    if options.probe == "gaussian":
        return draws.to(x.device)
    probes = torch.sign(draws).to(x.device)  # Rademacher: the signs of Gaussian draws
    probes[probes == 0] = 1.0
    return probes


def _augmented_dynamics(
    denoiser: DenoiserLike, like: Tensor, cond: Cond, probes: Tensor | None, tick: Callable[[], None]
) -> Callable[[float, np.ndarray], np.ndarray]:
    """d/dt of the flat state [x, log-density change] for ``solve_ivp``: [v(x, t), div v(x, t)] (Song et al.
    2021, eq. 39); ``like`` gives the batch's shape, dtype and device, ``tick`` counts the evaluations."""
    n, shape, dim = like.shape[0], tuple(like.shape), like[0].numel()

    def fun(t: float, state: np.ndarray) -> np.ndarray:
        tick()
        xt = torch.from_numpy(state[: n * dim]).reshape(shape).to(device=like.device, dtype=like.dtype)
        tt = torch.full((n,), float(t), dtype=torch.float64, device=like.device)
        with torch.enable_grad():
            xt.requires_grad_(True)
            v = probability_flow_velocity(denoiser, xt, tt, cond)
            div = _divergence(v, xt, probes)
        return np.concatenate([v.detach().double().cpu().numpy().reshape(-1), div.detach().double().cpu().numpy()])

    return fun


def _prior_log_prob(process: GaussianProcess, x_end: Tensor, t_end: float) -> Tensor:
    """log N(x_T; 0, (alpha^2 + sigma^2) I) per sample (N, D) of the ODE's end point: the prior at t_max."""
    t = torch.tensor(t_end, dtype=torch.float64)
    var = float(process.alpha(t) ** 2 + process.sigma(t) ** 2)
    return -0.5 * x_end.shape[1] * math.log(2.0 * math.pi * var) - (x_end**2).sum(1) / (2.0 * var)


def ode_log_likelihood(
    denoiser: DenoiserLike,
    x: Tensor,
    cond: Cond = None,
    *,
    options: LikelihoodOptions | None = None,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    noise: NoiseSource | None = None,
    progress: bool = False,
    **settings: object,
) -> Likelihood:
    """log p(x) (nats, per sample) of data x at t_min under the probability-flow ODE of a denoiser.

    Integrates [x, log-density change] from t_min (default: the process's) to t_max (default: its end) with
    ``solve_ivp`` and adds the prior log N(x_T; 0, (alpha^2 + sigma^2) I) at t_max (Song et al. 2021, eq. 39 and
    appendix D.2). ``options`` (or its fields by name: ``probe``, ``num_probes``, ``rtol``, ``atol``, ``t_min``,
    ``t_max``, ``method``): Rademacher or Gaussian probes drawn once per sample from ``NoiseSource(seed, indices)``
    or ``noise`` and kept along the path, or 'exact' (for low dimensions).
    """
    _check_x(x)
    opts = LikelihoodOptions.of(options, settings)
    process = denoiser.process
    t0, t1 = opts.interval(process)
    n, dim = x.shape[0], x[0].numel()
    if noise is None and opts.probe != "exact":
        noise = NoiseSource(seed, indices if indices is not None else range(n), x.device)
    probes = _draw_probes(opts, x, noise)
    nfe = 0
    bar = tqdm(desc="likelihood ODE", unit="nfe", disable=not progress, dynamic_ncols=True)

    def tick() -> None:
        nonlocal nfe
        nfe += 1
        bar.update(1)

    fun = _augmented_dynamics(denoiser, x, cond, probes, tick)
    start = np.concatenate([x.detach().double().cpu().numpy().reshape(-1), np.zeros(n)])
    try:
        solution = solve_ivp(fun, (t0, t1), start, method=opts.method, rtol=opts.rtol, atol=opts.atol)
    finally:
        bar.close()
    if not solution.success:
        raise RuntimeError(f"the likelihood ODE did not integrate from t={t0} to {t1}: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1])
    prior = _prior_log_prob(process, end[: n * dim].reshape(n, dim), t1)
    delta = end[n * dim :]
    return Likelihood(prior + delta, prior, delta, nfe)


def quantize(x: Tensor) -> Tensor:
    """Round data in [-1, 1] to the nearest of 256 levels 2k/255 - 1 (8-bit pixels in the model's space)."""
    return _levels(x) * (2.0 / (LEVELS - 1)) - 1.0


def _levels(x: Tensor) -> Tensor:
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * ((LEVELS - 1) / 2.0))


def dequantize(x: Tensor, uniform: Tensor) -> Tensor:
    """Uniform dequantisation of 8-bit data: level k -> 2 (k + u) / 256 - 1 with u ~ U[0, 1) (score_sde's
    ``(x * 255 + u) / 256`` in [0, 1], then centred; Theis et al. 2016, sec. 3.1)."""
    return (_levels(x) + uniform) * (2.0 / LEVELS) - 1.0


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")


def bits_per_dim(
    denoiser: DenoiserLike,
    x: Tensor,
    cond: Cond = None,
    *,
    options: LikelihoodOptions | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    **settings: object,
) -> BitsPerDim:
    """NLL in bits/dim of 8-bit data x in [-1, 1] (N, ...) through the probability-flow ODE, uniformly dequantised.

    bpd = -log p(x + u) / (D ln 2) + log2(256 / 2), the dequantisation bound on -log2 P(x) / D for bins of
    width 2/256 (Song et al. 2021, appendix D.2). ``options`` (or its fields by name) as ``ode_log_likelihood``'s.
    """
    _check_x(x)
    _check_batch_size(batch_size)
    opts = LikelihoodOptions.of(options, settings)
    dim = x[0].numel()
    out, nfe = [], 0
    for lo in range(0, len(x), batch_size):
        hi = min(lo + batch_size, len(x))
        noise = NoiseSource(seed, range(lo, hi), x.device)
        uniform = torch.special.ndtr(noise(x.shape[1:], dtype=torch.float64))  # Phi(z) ~ U(0, 1)
        xd = dequantize(x[lo:hi].double(), uniform.to(x.device)).to(x.dtype)
        c = _slice_cond(cond, lo, hi, x.device)
        result = ode_log_likelihood(denoiser, xd, c, options=opts, noise=noise, progress=progress)
        out.append(-result.log_prob / (dim * math.log(2.0)) + _BIN_OFFSET_BITS)
        nfe += result.nfe
    return BitsPerDim(torch.cat(out), nfe)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log P(x) per element for 8-bit data x in [-1, 1] under N(mean, std^2) integrated over x's bin
    [x - 1/255, x + 1/255], the outer bins reaching to -inf and +inf (Ho et al. 2020, eq. 13)."""
    x, mean, std = x.double(), mean.double(), std.double()
    half = 1.0 / (LEVELS - 1)
    upper, lower = (x - mean + half) / std, (x - mean - half) / std
    # the bin's mass, taken in the upper tail where both ends are positive, so it keeps its precision
    mass = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    inner = torch.log(mass.clamp(min=1e-300))
    first = torch.special.log_ndtr(upper)  # x = -1: P(X <= -1 + 1/255)
    last = torch.special.log_ndtr(-lower)  # x = +1: P(X >= 1 - 1/255)
    return torch.where(x < -1.0 + half, first, torch.where(x > 1.0 - half, last, inner))


@torch.no_grad()
def ddpm_vlb(
    denoiser: DenoiserLike,
    x: Tensor,
    cond: Cond = None,
    *,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = False,
) -> VariationalBound:
    """DDPM's variational bound in bits/dim of 8-bit data x in [-1, 1] (rounded to the 256 levels first).

    L_vlb = L_T + sum_{t=2}^T L_{t-1} + L_0 (Ho et al. 2020, eq. 5): L_T = KL(q(x_T | x_0) || N(0, I)), each
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) (``losses.ddpm_vlb_term``, one draw of x_t each) and
    L_0 = -log p(x_0 | x_1), a Gaussian of mean x0_hat and variance beta_1 discretised to the 8-bit bins (eq. 13).
    Costs T network evaluations per batch. An upper bound on the discrete NLL, in expectation over the draws.
    """
    process = denoiser.process
    if not isinstance(process, DiscreteVPProcess):
        raise ValueError(
            f"the DDPM variational bound needs a discrete-time process (process='ddpm'); this is {process.name!r}. "
            "Use bits_per_dim (the ODE likelihood) instead."
        )
    _check_x(x)
    _check_batch_size(batch_size)
    x0_all = quantize(x)
    total = process.num_steps * math.ceil(len(x) / batch_size)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    with tqdm(total=total, desc="vlb", disable=not progress, dynamic_ncols=True) as bar:
        for lo in range(0, len(x), batch_size):
            hi = min(lo + batch_size, len(x))
            noise = NoiseSource(seed, range(lo, hi), x.device)
            c = _slice_cond(cond, lo, hi, x.device)
            parts.append(_vlb_terms(denoiser, x0_all[lo:hi], c, noise, lambda: bar.update(1)))
    prior, diffusion, decoder = (torch.cat(p) for p in zip(*parts, strict=True))
    return VariationalBound(prior + diffusion + decoder, prior, diffusion, decoder)


def _vlb_terms(
    denoiser: DenoiserLike, x0: Tensor, cond: Cond, noise: NoiseSource, tick: Callable[[], None]
) -> tuple[Tensor, Tensor, Tensor]:
    """L_T, sum_{t=2}^T L_{t-1} and L_0 in bits/dim of one batch of quantised data x0 (N, ...) (Ho et al. 2020,
    eq. 5 and 13), every x_t drawn from ``noise``; ``tick`` is called once per network evaluation."""
    process: DiscreteVPProcess = denoiser.process  # type: ignore[assignment]
    steps, n, ln2 = process.num_steps, len(x0), math.log(2.0)

    def times(k: int) -> Tensor:
        """Continuous time of DDPM step k + 1 (the process's grid t_k = (k + 1) / T)."""
        return torch.full((n,), (k + 1) / steps, dtype=torch.float64, device=x0.device)

    # L_T: KL(N(alpha_T x0, sigma_T^2) || N(0, 1))
    t_end = times(steps - 1)
    a_end, s_end = broadcast_like(process.alpha(t_end), x0), broadcast_like(process.sigma(t_end), x0)
    zeros = torch.zeros_like(x0)
    prior = gaussian_kl(a_end * x0, torch.log(s_end**2).expand_as(x0), zeros, zeros).flatten(1).mean(1) / ln2
    diffusion = torch.zeros(n, dtype=torch.float64, device=x0.device)
    for k in range(steps - 1, 0, -1):
        t, s = times(k), times(k - 1)
        x_t = process.add_noise(x0, t, noise.like(x0))
        x0_hat = denoiser(x_t, t, cond).x0
        diffusion += ddpm_vlb_term(process, x0, x_t, t, s, x0_hat).double()
        tick()
    # L_0: p(x_0 | x_1) = N(x0_hat(x_1), beta_1), beta_1 = 1 - alpha(t_0)^2 (Ho et al. 2020, sec. 3.3)
    t_first = times(0)
    x_1 = process.add_noise(x0, t_first, noise.like(x0))
    x0_hat = denoiser(x_1, t_first, cond).x0
    beta_1 = 1.0 - broadcast_like(process.alpha(t_first), x0).double() ** 2
    log_p = discretized_gaussian_log_likelihood(x0, x0_hat, beta_1.sqrt().expand_as(x0))
    tick()
    return prior.double(), diffusion, -log_p.flatten(1).mean(1) / ln2


def continuous_vlb_terms(
    denoiser: DenoiserLike,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    cond: Cond = None,
    *,
    t0: float | None = None,
    discrete: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The continuous-time VLB's three parts per sample (N,), in nats, of 8-bit data x0 in [-1, 1] (Kingma et al.
    2021, eq. 11-17), one draw of t ~ U(t0, t_max) and eps each:

    - diffusion: (t_max - t0) * -(1/2) dlambda/dt ||eps - eps_hat(x_t, t)||^2, x_t = alpha x0 + sigma eps (eq. 17
      written with the log-SNR lambda = -gamma; an unbiased estimate of -(1/2) int SNR'(t) ||x0 - x0_hat||^2 dt);
    - prior: KL(q(x_{t_max} | x0) || N(0, (alpha^2 + sigma^2) I)) at t_max (eq. 13's first term);
    - reconstruction: -log p(x0 | x_{t0}), a Gaussian of mean x_{t0} / alpha_0 and std sigma_0 / alpha_0 integrated
      over each 8-bit bin (the discretised decoder of eq. 13, as ``discretized_gaussian_log_likelihood``), or
      with ``discrete=False`` its density (continuous data: the bound is then on -log p(x)).

    ``t0`` defaults to the process's t_min. Differentiable in the network and in a learned schedule's weights."""
    process = denoiser.process
    t0 = float(process.t_min) if t0 is None else float(t0)
    t_max = float(process.t_max)
    a, s = broadcast_like(process.alpha(t), x0), broadcast_like(process.sigma(t), x0)
    d_log_snr = 2.0 * (process.d_alpha(t) / process.alpha(t) - process.d_sigma(t) / process.sigma(t))
    eps_hat = denoiser(a * x0 + s * eps, t, cond).eps
    diffusion = -0.5 * (t_max - t0) * d_log_snr.to(x0.dtype) * (eps - eps_hat).pow(2).flatten(1).sum(1)
    ends = torch.tensor([t0, t_max], dtype=torch.float64, device=x0.device)
    alphas, sigmas = process.alpha(ends).to(x0.dtype), process.sigma(ends).to(x0.dtype)
    prior_var = alphas[1] ** 2 + sigmas[1] ** 2  # the sampler's prior (``sampling.prior_std``): 1 for VP
    zeros = torch.zeros_like(x0)
    prior = gaussian_kl(alphas[1] * x0, (sigmas[1] ** 2).log().expand_as(x0), zeros, prior_var.log().expand_as(x0))
    x_first = alphas[0] * x0 + sigmas[0] * torch.roll(eps, 1, dims=0)  # another draw: the next sample's noise
    mean, std = x_first / alphas[0], (sigmas[0] / alphas[0]).expand_as(x0)
    if discrete:
        log_p = discretized_gaussian_log_likelihood(x0, mean, std)
    else:
        log_p = -0.5 * ((x0 - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)
    return diffusion, prior.flatten(1).sum(1), -log_p.flatten(1).sum(1).to(x0.dtype)


@torch.no_grad()
def continuous_vlb(
    denoiser: DenoiserLike,
    x: Tensor,
    cond: Cond = None,
    *,
    draws: int = 16,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = False,
) -> VariationalBound:
    """The continuous-time VLB (``continuous_vlb_terms``) in bits/dim of 8-bit data x in [-1, 1] (rounded to the
    256 levels first), averaged over ``draws`` stratified times per sample (t_j = t0 + (j + u) (t_max - t0) /
    draws, one u per sample) and their noises; an upper bound on the discrete NLL in expectation."""
    _check_x(x)
    _check_batch_size(batch_size)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws={draws!r} must be a positive integer.")
    process, x0_all = denoiser.process, quantize(x)
    t0, t_max = float(process.t_min), float(process.t_max)
    dims, ln2 = x0_all[0].numel(), math.log(2.0)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    with tqdm(total=draws * math.ceil(len(x) / batch_size), desc="vlb", disable=not progress) as bar:
        for lo in range(0, len(x), batch_size):
            hi = min(lo + batch_size, len(x))
            noise, x0 = NoiseSource(seed, range(lo, hi), x.device), x0_all[lo:hi]
            c = _slice_cond(cond, lo, hi, x.device)
            u = torch.special.ndtr(noise((), dtype=torch.float64))  # one uniform per sample, from its own stream
            sums = [torch.zeros(hi - lo, dtype=torch.float64, device=x.device) for _ in range(3)]
            for j in range(draws):
                t = t0 + (j + u) * (t_max - t0) / draws
                terms = continuous_vlb_terms(denoiser, x0, t, noise.like(x0), c, t0=t0)
                for total, term in zip(sums, terms, strict=True):
                    total += term.double() / draws
                bar.update(1)
            parts.append(tuple(v / (dims * ln2) for v in sums))  # type: ignore[arg-type]
    diffusion, prior, decoder = (torch.cat(p) for p in zip(*parts, strict=True))
    return VariationalBound(prior + diffusion + decoder, prior, diffusion, decoder)
