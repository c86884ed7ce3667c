"""Probability-flow ODE solvers: Euler and Heun (EDM), DPM-Solver-2, DPM-Solver++(2M, 3M) and UniPC.

Each is a pure function ``(denoiser, x, ts, *, cond, noise, progress, callback, **options) -> x`` like those of
``solvers.py``; nothing is kept between calls. All are written for a general process
``x_t = alpha(t) x_0 + sigma(t) eps``:

- Euler and Heun integrate the ODE of the equivalent variance-exploding process, x~ = x / alpha against
  sigma~ = sigma / alpha: dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ = eps_hat (Karras et al. 2022, eq. 4-6
  with s(t) = alpha, sigma(t) = sigma~).
- DPM-Solver, DPM-Solver++ and UniPC are exponential integrators in Lu et al.'s lambda = log(alpha / sigma)
  (half the log-SNR of ``process.log_snr``), derived in the papers for any alpha, sigma.

The last step of a grid lands on t = 0 (sigma = 0, lambda = +inf). There every solver takes a first-order step,
which returns the data estimate x0_hat itself (k-diffusion and diffusers do the same): Heun skips its correction,
DPM-Solver-2 its midpoint, the multistep solvers use order 1. A step that starts where alpha = 0 (flow's t = 1,
sigma~ = inf, lambda = -inf) is first order too: there is no finite midpoint or trapezoid to take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..processes import GaussianProcess
from .solvers import Noise, StepCallback, _noise_like, _report, _steps

__all__ = [
    "euler",
    "heun",
    "dpm_2s",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "ipndm",
    "deis",
    "lagrange_weights",
    "check_churn",
    "two_stage_nfe",
    "UNIPC_VARIANTS",
]

Cond = Mapping[str, Tensor] | None


# ---------------------------------------------------------------------------------------------------------
# coefficients as Python floats (float64), safe at the ends of the grid
# ---------------------------------------------------------------------------------------------------------


def _alpha_sigma(process: GaussianProcess, t: Tensor) -> tuple[float, float]:
    return float(process.alpha(t)), float(process.sigma(t))


def _lam(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma) (Lu et al. 2022a, sec. 3.1): +inf at the data, -inf where alpha = 0."""
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


def _ve(alpha: float, sigma: float) -> float:
    """The VE noise level sigma~ = sigma / alpha (Karras et al. 2022, eq. 4)."""
    return math.inf if alpha == 0.0 else sigma / alpha


def _time_at_lam(process: GaussianProcess, lam: float) -> Tensor:
    """The time at which lambda = log(alpha / sigma) takes a value (``t_from_log_snr`` takes 2 lambda)."""
    t = process.t_from_log_snr(torch.tensor(2.0 * lam, dtype=torch.float64)).to(torch.float64)
    return t.clamp(0.0, float(process.t_max))


# ---------------------------------------------------------------------------------------------------------
# Euler and Heun on the probability-flow ODE (Karras et al. 2022)
# ---------------------------------------------------------------------------------------------------------


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    """Raise one clear error unless EDM's stochasticity options are sensible (Karras et al. 2022, Algorithm 2)."""
    if not float(s_churn) >= 0.0:
        raise ValueError(f"s_churn={s_churn} must be >= 0 (0 = deterministic; EDM uses 0 to 80).")
    if not float(s_noise) >= 0.0:
        raise ValueError(f"s_noise={s_noise} must be >= 0 (1 = unit noise; EDM uses 1.0 to 1.007).")
    if not 0.0 <= float(s_tmin) <= float(s_tmax):
        raise ValueError(f"s_tmin={s_tmin}, s_tmax={s_tmax}: expected 0 <= s_tmin <= s_tmax (VE noise levels).")


def _churn(
    process: GaussianProcess,
    x: Tensor,
    t: Tensor,
    steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise: Noise | None,
) -> tuple[Tensor, Tensor]:
    """EDM Algorithm 2, lines 4-6: raise the VE noise level sigma~ to sigma^ = (1 + gamma) sigma~ by adding fresh
    noise, gamma = min(S_churn / N, sqrt(2) - 1) for sigma~ in [S_tmin, S_tmax]. Never above the process's t_max.
    Returns the noised x at its time t^ (x, t unchanged when gamma = 0)."""
    a, s = _alpha_sigma(process, t)
    ve = _ve(a, s)
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= ve <= s_tmax else 0.0
    if gamma <= 0.0 or not math.isfinite(ve):
        return x, t
    t_hat = _time_at_lam(process, -math.log(ve * (1.0 + gamma)))
    a_hat, s_hat = _alpha_sigma(process, t_hat)
    ve_hat = _ve(a_hat, s_hat)  # the level actually reached (t^ <= t_max)
    if ve_hat <= ve:
        return x, t
    x_ve = x / a + math.sqrt(ve_hat**2 - ve**2) * s_noise * _noise_like(noise, x)
    return a_hat * x_ve, t_hat


def euler(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler on the probability-flow ODE in the VE frame (Karras et al. 2022, Algorithm 2 without line 9-11):

    x~_{i+1} = x~ + (sigma~_{i+1} - sigma^) d,  d = (x~ - D(x~; sigma^)) / sigma^ = eps_hat.

    With ``s_churn = 0`` (the default) this is deterministic, and the same map as DDIM with eta = 0. With
    ``s_churn > 0`` each step first adds noise to raise sigma~ by (1 + gamma) (EDM's churn); ``s_tmin``,
    ``s_tmax`` bound the VE noise levels sigma / alpha where it does, ``s_noise`` scales the added noise.
    """
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    process, n = denoiser.process, len(ts) - 1
    for i in _steps(ts, progress, "euler"):
        x, t_hat = _churn(process, x, ts[i], n, s_churn, s_tmin, s_tmax, s_noise, noise)
        a_next, s_next = _alpha_sigma(process, ts[i + 1])
        pred = denoiser(x, t_hat, cond)
        d = pred.eps  # (x~ - D) / sigma^
        # x~ + (sigma~_{i+1} - sigma^) d, written with x~ = D + sigma^ d so that sigma^ = inf (flow's t = 1) is exact
        x = a_next * (pred.x0 + _ve(a_next, s_next) * d)
        _report(callback, i, ts[i + 1], x, pred.x0)
    return x


def heun(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 and, with
    ``s_churn > 0``, the stochastic Algorithm 2), in the VE frame x~ = x / alpha, sigma~ = sigma / alpha:

    x' = x~ + (sigma~_{i+1} - sigma^) d,  x~_{i+1} = x~ + (sigma~_{i+1} - sigma^) (d + d') / 2,  d' = eps_hat(x').

    The correction is skipped when sigma~_{i+1} = 0 (the step into the data, as in EDM) and when sigma^ = inf
    (a start at alpha = 0); so a grid ending at 0 costs 2 steps - 1 evaluations. Options as for ``euler``.
    """
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    process, n = denoiser.process, len(ts) - 1
    for i in _steps(ts, progress, "heun"):
        x, t_hat = _churn(process, x, ts[i], n, s_churn, s_tmin, s_tmax, s_noise, noise)  # lines 4-6
        a_hat, s_hat = _alpha_sigma(process, t_hat)
        a_next, s_next = _alpha_sigma(process, ts[i + 1])
        ve_hat, ve_next = _ve(a_hat, s_hat), _ve(a_next, s_next)
        pred = denoiser(x, t_hat, cond)
        d = pred.eps  # line 7
        x_next = pred.x0 + ve_next * d  # line 8: x~ + (sigma~_{i+1} - sigma^) d
        if ve_next != 0.0 and math.isfinite(ve_hat):  # line 9
            d_next = denoiser(a_next * x_next, ts[i + 1], cond).eps  # line 10
            x_next = x / a_hat + (ve_next - ve_hat) * (0.5 * d + 0.5 * d_next)  # line 11
        x = a_next * x_next
        _report(callback, i, ts[i + 1], x, pred.x0)
    return x


# ---------------------------------------------------------------------------------------------------------
# DPM-Solver-2 (Lu et al. 2022a) and DPM-Solver++ multistep (Lu et al. 2022b)
# ---------------------------------------------------------------------------------------------------------


def dpm_2s(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM-Solver-2, singlestep (Lu et al. 2022a, Algorithm 1; Algorithm 4 with r1 = 1/2), noise prediction:

    s = t_lambda((lambda_t + lambda_{t'}) / 2),  u = (alpha_s / alpha_t) x - sigma_s (e^{r1 h} - 1) eps(x, t),
    x' = (alpha_t' / alpha_t) x - sigma_t' (e^h - 1) eps(x, t) - sigma_t' / (2 r1) (e^h - 1) (eps(u, s) - eps(x, t)).

    r1 is recomputed from the midpoint time actually reached, so the step stays second order. The first-order part
    is written as DDIM's alpha_s x0_hat + sigma_s eps_hat (the same number, Lu et al. 2022a sec. 4.1), which keeps
    float32 accurate where alpha_t is tiny. Two evaluations per step; the step into t = 0 takes one.
    """
    process = denoiser.process
    for i in _steps(ts, progress, "dpm_2s"):
        t, t_next = ts[i], ts[i + 1]
        a, s = _alpha_sigma(process, t)
        a_next, s_next = _alpha_sigma(process, t_next)
        lam, lam_next = _lam(a, s), _lam(a_next, s_next)
        h = lam_next - lam
        pred = denoiser(x, t, cond)
        if not math.isfinite(h):  # into the data, or out of alpha = 0: DPM-Solver-1 (= DDIM)
            x = a_next * pred.x0 + s_next * pred.eps
        else:
            t_mid = _time_at_lam(process, lam + 0.5 * h)
            a_mid, s_mid = _alpha_sigma(process, t_mid)
            r1 = (_lam(a_mid, s_mid) - lam) / h
            u = a_mid * pred.x0 + s_mid * pred.eps  # = (alpha_s / alpha_t) x - sigma_s (e^{r1 h} - 1) eps
            eps_mid = denoiser(u, t_mid, cond).eps
            x = a_next * pred.x0 + s_next * pred.eps - s_next / (2.0 * r1) * math.expm1(h) * (eps_mid - pred.eps)
        _report(callback, i, t_next, x, pred.x0)
    return x


def _multistep_order(order: int, i: int, n: int, s_next: float) -> int:
    """Order of step i of n: warm up from 1 (the first steps have no history), first order into the data, and
    with fewer than 15 steps lower order at the last two steps (diffusers' ``lower_order_final``)."""
    if s_next == 0.0:
        return 1
    k = min(order, i + 1)
    return min(k, n - i) if n < 15 else k


def dpmpp_2m(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022b, Algorithm 2): with h = lambda_{t'} - lambda_t,
    r = h_prev / h,

    D = (1 + 1/(2r)) x0_hat(t) - 1/(2r) x0_hat(t_prev),  x' = (sigma_t' / sigma_t) x - alpha_t' (e^{-h} - 1) D.

    The first step (no history) and the step into t = 0 are first order; one evaluation per step.
    """
    process, n = denoiser.process, len(ts) - 1
    x0_prev, h_prev = None, math.nan
    for i in _steps(ts, progress, "dpmpp_2m"):
        a, s = _alpha_sigma(process, ts[i])
        a_next, s_next = _alpha_sigma(process, ts[i + 1])
        h = _lam(a_next, s_next) - _lam(a, s)
        x0 = denoiser(x, ts[i], cond).x0
        if x0_prev is None or _multistep_order(2, i, n, s_next) == 1:
            d = x0
        else:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (s_next / s) * x - a_next * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
        _report(callback, i, ts[i + 1], x, x0)
    return x


def dpmpp_3m(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM-Solver++(3M), data prediction: the third-order member of the multistep DPM-Solver++ family (Lu et al.
    2022b, sec. 4; the 3M update of their code), from their exponential-integrator form of the PF-ODE:

    x' = (sigma_t' / sigma_t) x + sigma_t' int e^lambda x0_hat(lambda) dlambda with x0_hat Taylor-expanded to
    second order: with m0, m1, m2 the last three x0_hat, h = lambda_{t'} - lambda_t, r0 = h0 / h, r1 = h1 / h,
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) ~ h x0',
    D2 = (D1_0 - D1_1) / (r0 + r1) ~ h^2 x0'' / 2, phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2:

    x' = (sigma_t' / sigma_t) x - alpha_t' phi_1 m0 + alpha_t' phi_2 D1 - 2 alpha_t' phi_3 D2.

    The factor 2 on the last term is the Taylor coefficient of x0'' (alpha_t' (h^2/2 - h - phi_1) x0''). The
    3M of diffusers (and of k-diffusion's dpmpp_3m_sde, the same formula) weighs D2 by alpha_t' phi_3 alone, half
    of it, which leaves it second order as the steps shrink; this one is third order (tests/test_ode_samplers.py).
    Orders 1, 2 at the first two steps, 1 into t = 0 (and 2, 1 at the last two steps of a grid under 15 steps,
    as diffusers' ``lower_order_final``); second-order steps are DPM-Solver++(2M)'s. One evaluation per step.
    """
    process, n = denoiser.process, len(ts) - 1
    m: list[Tensor] = []  # x0_hat at the last steps, newest last
    hs: list[float] = []  # their lambda steps
    for i in _steps(ts, progress, "dpmpp_3m"):
        a, s = _alpha_sigma(process, ts[i])
        a_next, s_next = _alpha_sigma(process, ts[i + 1])
        h = _lam(a_next, s_next) - _lam(a, s)
        m = [*m[-2:], denoiser(x, ts[i], cond).x0]
        order = _multistep_order(3, i, n, s_next)
        phi = math.expm1(-h)
        x = (s_next / s) * x - a_next * phi * m[-1]
        if order == 2:
            r = hs[-1] / h
            x = x - a_next * phi * (0.5 / r) * (m[-1] - m[-2])
        elif order == 3:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d1_0, d1_1 = (m[-1] - m[-2]) / r0, (m[-2] - m[-3]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi / h + 1.0
            phi_3 = phi_2 / h - 0.5
            x = x + a_next * phi_2 * d1 - 2.0 * a_next * phi_3 * d2
        hs = [*hs[-1:], h]
        _report(callback, i, ts[i + 1], x, m[-1])
    return x


# ---------------------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023)
# ---------------------------------------------------------------------------------------------------------


UNIPC_VARIANTS = ("bh1", "bh2")


def _unipc_b(h: float, variant: str = "bh2") -> tuple[float, float, float, float]:
    """(h phi_1(-h) = e^{-h} - 1, B(h), b_1, b_2): B(h) = -h ("bh1") or e^{-h} - 1 ("bh2"), and the right-hand sides
    b_k = k! (-h) phi_{k+1}(-h) / B(h), k = 1, 2, of UniPC's order conditions (Zhao et al. 2023, sec. 3 and eq. 7-8;
    data prediction, so hh = -h), computed as diffusers does."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_2 = h_phi_1 / hh - 1.0
    h_phi_3 = h_phi_2 / hh - 0.5
    return h_phi_1, b_h, h_phi_2 / b_h, 2.0 * h_phi_3 / b_h


def check_unipc_variant(variant: str) -> str:
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"variant={variant!r} is not a UniPC variant; expected one of {', '.join(UNIPC_VARIANTS)}.")
    return variant


def unipc(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    variant: str = "bh2",
) -> Tensor:
    """UniPC-2 with B(h) = e^{-h} - 1 ("bh2", the default) or B(h) = -h ("bh1", which the authors advise at the
    fewest steps), data prediction (Zhao et al. 2023, sec. 3 and appendix): at each
    step the new x0_hat first corrects the point it was evaluated at (UniC), then predicts the next one (UniP-2).
    The model is not re-run at the corrected point, so UniC costs no evaluation; one evaluation per step.

    UniP-2: x' = (sigma_t' / sigma_t) x - alpha_t' (e^{-h} - 1) m0 - alpha_t' B(h) 1/2 D1,  D1 = (m_prev - m0) / r,
    r = (lambda_prev - lambda_t) / h  (with bh2 this is DPM-Solver++(2M)'s step).
    UniC-p: the same step from the previous point with the new x0_hat m' added as one more difference:
    x'_c = (sigma_t' / sigma_t) x - alpha_t' (e^{-h} - 1) m0 - alpha_t' B(h) (sum_k rho_k D1_k + rho_p (m' - m0)),
    where the rho solve R rho = b (rho = 1/2 for p = 1).

    As diffusers' ``UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, solver_order=2)``: order 1 at the
    first step and into t = 0 (``lower_order_final``), the corrector has the order of the predictor it corrects,
    and there is no corrector after the last step.
    """
    check_unipc_variant(variant)
    process = denoiser.process
    n = len(ts) - 1
    lams: list[float] = []  # lambda at the evaluated points, newest last
    m: list[Tensor] = []  # x0_hat there
    x_prev, order_prev = x, 0  # the point the last predictor started from, and its order
    for i in _steps(ts, progress, "unipc"):
        a, s = _alpha_sigma(process, ts[i])
        a_next, s_next = _alpha_sigma(process, ts[i + 1])
        lam, lam_next = _lam(a, s), _lam(a_next, s_next)
        m_new = denoiser(x, ts[i], cond).x0
        if i > 0:  # UniC: correct x_i with m_new
            a_prev, s_prev = _alpha_sigma(process, ts[i - 1])
            h = lam - lams[-1]
            h_phi_1, b_h, b1, b2 = _unipc_b(h, variant)
            corr = 0.5 * (m_new - m[-1])
            if order_prev == 2:
                r = (lams[-2] - lams[-1]) / h
                rho0 = (b1 - b2) / (1.0 - r)  # R rho = b with R = [[1, 1], [r, 1]], solved in closed form
                rho1 = b1 - rho0
                corr = rho0 * (m[-2] - m[-1]) / r + rho1 * (m_new - m[-1])
            x = (s / s_prev) * x_prev - a * h_phi_1 * m[-1] - a * b_h * corr
        lams, m = [*lams[-1:], lam], [*m[-1:], m_new]
        order = 1 if s_next == 0.0 else min(2, i + 1, n - i)  # warm-up and lower_order_final
        h = lam_next - lam
        h_phi_1 = math.expm1(-h)
        b_h = -h if variant == "bh1" else h_phi_1
        x_prev, order_prev = x, order
        x = (s_next / s) * x - a_next * h_phi_1 * m[-1]  # UniP-1 (= DDIM)
        if order == 2:
            r = (lams[-2] - lam) / h
            x = x - a_next * b_h * 0.5 * (m[-2] - m[-1]) / r
        _report(callback, i, ts[i + 1], x, m_new)
    return x


# ---------------------------------------------------------------------------------------------------------
# iPNDM and DEIS: Adams-Bashforth on the noise prediction in the VE frame (Zhang & Chen 2023)
# ---------------------------------------------------------------------------------------------------------

# Adams-Bashforth weights of eps_hat at the newest, previous, ... points, for equal steps (orders 1-4)
_AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _check_order(order: int, most: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= most:
        raise ValueError(f"order={order!r} must be a whole number from 1 to {most}.")
    return order


def lagrange_weights(rhos: list[float], start: float, end: float) -> list[float]:
    """The integrals from ``start`` to ``end`` of the Lagrange basis polynomials through the nodes ``rhos``
    (newest first): int P(rho) drho = sum_j w_j eps_j for the polynomial P through (rho_j, eps_j) (DEIS eq. 14)."""
    import numpy as np

    out = []
    for j, node in enumerate(rhos):
        others = [r for k, r in enumerate(rhos) if k != j]
        basis = np.poly1d(np.poly(others) if others else [1.0]) / float(np.prod([node - r for r in others]))
        antiderivative = basis.integ()
        out.append(float(antiderivative(end) - antiderivative(start)))
    return out


def _ve_multistep(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    weights: Callable[[list[float], float, int], list[float]],
    order: int,
    cond: Cond,
    progress: bool,
    callback: StepCallback | None,
    name: str,
) -> Tensor:
    """Multistep integration of the probability-flow ODE in the VE frame, dx~/drho = eps_hat with rho = sigma~
    (Karras et al. 2022, eq. 4-6): x~' = x~ + sum_j w_j eps_j over the last ``order`` evaluations, w from
    ``weights(rhos newest first, rho', order)``. Lower orders while the history fills, first order into t = 0
    (the step returns x0_hat) and from alpha = 0 (flow's t = 1, a DDIM step)."""
    process = denoiser.process
    rhos: list[float] = []
    epss: list[Tensor] = []
    for i in _steps(ts, progress, name):
        a, s = _alpha_sigma(process, ts[i])
        a_next, s_next = _alpha_sigma(process, ts[i + 1])
        pred = denoiser(x, ts[i], cond)
        if a == 0.0 or s_next == 0.0:  # no finite VE frame at alpha = 0; the data estimate at the end
            x = a_next * pred.x0 + s_next * pred.eps
            rhos, epss = [], []
        else:
            rhos, epss = [_ve(a, s), *rhos][:order], [pred.eps, *epss][:order]
            w = weights(rhos, _ve(a_next, s_next), len(rhos))
            step = sum(wj * ej for wj, ej in zip(w, epss, strict=False))
            x = a_next * (x / a + step)
        _report(callback, i, ts[i + 1], x, pred.x0)
    return x


def _ipndm_weights(rhos: list[float], rho_next: float, order: int) -> list[float]:
    return [(rho_next - rhos[0]) * c for c in _AB[order - 1]]


def _deis_weights(rhos: list[float], rho_next: float, order: int) -> list[float]:
    return lagrange_weights(rhos, rhos[0], rho_next)


def ipndm(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    order: int = 4,
) -> Tensor:
    """iPNDM (Zhang & Chen 2023, sec. 4 and app. "iPNDM"): the pseudo-linear multistep method of PNDM with its
    Runge-Kutta warm-up replaced by lower-order Adams-Bashforth steps, on dx~/drho = eps_hat (rho = sigma~):
    x~' = x~ + (rho' - rho) sum_j c_j eps_j with the equal-step Adams-Bashforth weights c of order 1..4
    (1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24). One evaluation per step."""
    _check_order(order, 4)
    return _ve_multistep(denoiser, x, ts, _ipndm_weights, order, cond, progress, callback, "ipndm")


def deis(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    order: int = 3,
) -> Tensor:
    """DEIS, rho-AB form (Zhang & Chen 2023, eq. 14-15 with the VE reparameterisation of sec. 4): eps_hat is
    extrapolated by the Lagrange polynomial in rho = sigma~ through the last ``order`` evaluations and integrated
    exactly over the step, x~' = x~ + sum_j (int_rho^rho' l_j) eps_j; unlike iPNDM's fixed weights this is exact
    for any spacing of the grid. One evaluation per step."""
    _check_order(order, 4)
    return _ve_multistep(denoiser, x, ts, _deis_weights, order, cond, progress, callback, "deis")


def two_stage_nfe(steps: int, **options: object) -> int:
    """Evaluations of ``heun`` and ``dpm_2s`` on a grid that ends at t = 0 (every ``time_grid`` does): two per
    step, one for the first-order step into the data. A grid that starts where alpha = 0 (flow's t = 1 on a
    uniform grid) makes the first step first order too: one evaluation fewer than this."""
    return 2 * steps - 1
