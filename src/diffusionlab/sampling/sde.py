"""Stochastic samplers: reverse-time SDE solvers and Langevin dynamics, each one pure function.

Same contract as ``solvers.py``: ``(denoiser, x, ts, *, cond, noise, progress, callback, **options) -> x`` on a
decreasing grid ``ts`` ending at 0, for any process ``x_t = alpha(t) x_0 + sigma(t) eps``. Fresh noise is always drawn
through ``_noise_like(noise, x)``, so with a ``NoiseSource`` a sample does not depend on the batch it is in.

Where a formula lives in the equivalent variance-exploding frame (Karras et al. 2022, eq. 4:
``x~ = x / alpha``, ``sigma~ = sigma / alpha``) it is written there and mapped back with ``x = alpha x~``. Flow's
t = 1 has alpha = 0 (sigma~ and the SDE's f, g^2 are infinite there); each solver says how it handles it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..processes import GaussianProcess
from .solvers import Noise, StepCallback, _noise_like, _report, _steps

__all__ = [
    "euler_ancestral",
    "euler_maruyama",
    "pc",
    "annealed_langevin",
    "dpmpp_2m_sde",
    "PREDICTORS",
    "STEP_RULES",
    "pc_nfe",
    "annealed_langevin_nfe",
]

PREDICTORS = ("reverse_diffusion", "euler_maruyama")
STEP_RULES = ("snr", "sigma")


def _check_unit(name: str, value: float, meaning: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}={value} must lie in [0, 1] ({meaning}).")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not float(value) > 0 or not math.isfinite(float(value)):
        raise ValueError(f"{name}={value} must be a positive number.")
    return float(value)


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {kind}.")
    return value


def _ve_sigma(process: GaussianProcess, t: Tensor) -> float:
    """sigma~ = sigma / alpha as a float: 0 at the data, inf where alpha = 0 (flow's t = 1)."""
    return float(process.sigma(t).double() / process.alpha(t).double())


def _per_sample_norm(v: Tensor) -> Tensor:
    n = v.flatten(1).norm(dim=1)
    return n.reshape(-1, *([1] * (v.ndim - 1)))


def _posterior_step(
    process: GaussianProcess, x: Tensor, x0: Tensor, t: Tensor, s: Tensor, noise: Noise | None
) -> Tensor:
    """x_s ~ q(x_s | x_t, x0 = x0_hat), DDPM's ancestral step (VDM, Kingma et al. 2021, eq. 29-31)."""
    coef_xt, coef_x0, var = (float(c) for c in process.posterior(t, s))
    x = coef_xt * x + coef_x0 * x0
    return x + math.sqrt(var) * _noise_like(noise, x) if var > 0 else x


def _em_step(
    process: GaussianProcess, x: Tensor, x0: Tensor, score: Tensor, t: Tensor, s: Tensor, noise: Noise | None
) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE from t down to s (Song et al. 2021, eq. 6), coefficients at t.

    Where f(t) or g(t)^2 is infinite (alpha(t) = 0: flow's t = 1, where x_t is pure noise) no Euler step exists;
    there the step is the exact posterior step q(x_s | x_t, x0_hat), the limit every discretisation shares.
    """
    f, g2 = float(process.drift_coefficient(t)), float(process.diffusion_coefficient_sq(t))
    if not (math.isfinite(f) and math.isfinite(g2)):
        return _posterior_step(process, x, x0, t, s, noise)
    dt = float(t - s)  # > 0: time runs backwards
    x = x - (f * x - g2 * score) * dt
    return x + math.sqrt(max(g2, 0.0) * dt) * _noise_like(noise, x)


# ---------------------------------------------------------------------------------------------------------
# Euler ancestral
# ---------------------------------------------------------------------------------------------------------


def euler_ancestral(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    eta: float = 1.0,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``; diffusers' ``EulerAncestralDiscreteScheduler``).

    In the VE frame, a step from sigma~_t to sigma~_s splits into an Euler step of the probability-flow ODE
    dx~/dsigma~ = d = (x~ - x0_hat) / sigma~ down to sigma_down, then fresh noise of std sigma_up:

        sigma_up = min(sigma~_s, eta sigma~_s sqrt(1 - sigma~_s^2 / sigma~_t^2))
        sigma_down = sqrt(sigma~_s^2 - sigma_up^2)
        x~_s = x~_t + d (sigma_down - sigma~_t) + sigma_up z

    eta = 1 adds exactly the noise of DDPM's posterior (so it equals ``ddim`` with the same eta), eta = 0 is
    the deterministic Euler method. Since d = eps_hat, the Euler step is x0_hat + sigma_down eps_hat, which stays
    finite where alpha_t = 0 (sigma~_t = inf, flow's t = 1).
    """
    eta = _check_unit("eta", eta, "0 = deterministic Euler, 1 = full ancestral noise")
    process = denoiser.process
    for i in _steps(ts, progress, "euler_ancestral"):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        ve_t, ve_s = _ve_sigma(process, t), _ve_sigma(process, s)
        ratio_sq = (ve_s / ve_t) ** 2  # 0 where ve_t = inf
        sigma_up = min(ve_s, eta * ve_s * math.sqrt(max(1.0 - ratio_sq, 0.0)))
        sigma_down = math.sqrt(max(ve_s**2 - sigma_up**2, 0.0))
        x_ve = pred.x0 + sigma_down * pred.eps  # = x~_t + d (sigma_down - sigma~_t)
        if sigma_up > 0:
            x_ve = x_ve + sigma_up * _noise_like(noise, x)
        x = float(process.alpha(s)) * x_ve
        _report(callback, i, s, x, pred.x0)
    return x


# ---------------------------------------------------------------------------------------------------------
# Reverse-time SDE: Euler–Maruyama, predictor–corrector
# ---------------------------------------------------------------------------------------------------------


def euler_maruyama(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    denoise_final: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw (Song et al. 2021,
    eq. 6), from t to s < t with the coefficients at t:

        x_s = x_t - [f(t) x_t - g(t)^2 score] (t - s) + g(t) sqrt(t - s) z.

    ``denoise_final``: the last step (to t = 0) returns x0_hat = E[x0 | x_t] (Tweedie), score_sde's noise
    removal, instead of a noisy Euler step. Where alpha(t) = 0 (flow's t = 1) the step is the exact posterior one.
    """
    process = denoiser.process
    n = len(ts) - 1
    for i in _steps(ts, progress, "euler_maruyama"):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        if denoise_final and i == n - 1 and float(s) == 0.0:
            _report(callback, i, s, pred.x0, pred.x0)
            return pred.x0
        x = _em_step(process, x, pred.x0, pred.score, t, s, noise)
        _report(callback, i, s, x, pred.x0)
    return x


def _langevin_step(
    denoiser: DenoiserLike,
    x: Tensor,
    t: Tensor,
    cond: Mapping[str, Tensor] | None,
    noise: Noise | None,
    a_i: float,
    snr: float,
    step_rule: str,
) -> Tensor:
    """One Langevin corrector step x + e score + sqrt(2 e) z, e = 2 a_i (snr ratio)^2 with ratio ||z|| / ||score||
    per sample ("snr") or sigma_t ("sigma") (Song et al. 2021, Algorithm 5)."""
    score = denoiser(x, t, cond).score
    z = _noise_like(noise, x)
    if step_rule == "snr":  # ||z|| / ||score||, per sample
        ratio = _per_sample_norm(z) / _per_sample_norm(score).clamp(min=torch.finfo(score.dtype).tiny)
    else:
        ratio = torch.tensor(float(denoiser.process.sigma(t)), dtype=x.dtype, device=x.device)
    e = 2.0 * a_i * (snr * ratio) ** 2
    return x + e * score + torch.sqrt(2.0 * e) * z


def _reverse_diffusion_step(
    process: GaussianProcess, x: Tensor, score: Tensor, t: Tensor, s: Tensor, a_ts: float, noise: Noise | None
) -> Tensor:
    """The reverse-diffusion predictor t -> s (Song et al. 2021, appendix E) for any (alpha, sigma):
    x_s = (2 - a_ts) x_t + sigma_{t|s}^2 score + sigma_{t|s} z with a_ts = alpha_t / alpha_s."""
    var_ts = max(float(process.sigma(t)) ** 2 - a_ts**2 * float(process.sigma(s)) ** 2, 0.0)
    x = (2.0 - a_ts) * x + var_ts * score
    return x + math.sqrt(var_ts) * _noise_like(noise, x) if var_ts > 0 else x


def pc_nfe(steps: int, *, corrector_steps: int = 1, **_: Any) -> int:
    """Network evaluations of ``pc``: one predictor and ``corrector_steps`` Langevin steps per grid step."""
    return (1 + _check_count("corrector_steps", corrector_steps, minimum=0)) * steps


def pc(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    predictor: str = "reverse_diffusion",
    step_rule: str = "snr",
    denoise_final: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Algorithms 2 and 3) on any process.

    At each grid time t: ``corrector_steps`` Langevin steps x <- x + e score + sqrt(2 e) z with the step size of
    the signal-to-noise ratio r = ``snr``, e = 2 a (r ||z|| / ||score||)^2 (Algorithms 4 and 5), where
    a = alpha_t^2 / alpha_s^2 for the next grid time s (VP's alpha_i = 1 - beta_i; 1 for VE and EDM). Then one
    predictor step t -> s: ``reverse_diffusion`` (Song et al. 2021, appendix E, from the forward transition
    x_t = (alpha_t / alpha_s) x_s + sigma_{t|s} z):

        x_s = (2 - alpha_t / alpha_s) x_t + sigma_{t|s}^2 score + sigma_{t|s} z,

    or ``euler_maruyama`` (see that sampler). The corrector runs before the predictor, as in score_sde's code,
    so the last level it sees is t_min (no corrector can run at t = 0). ``denoise_final``: the last step
    returns x0_hat (Tweedie). Network evaluations: (1 + corrector_steps) per step.

    ``step_rule="snr"`` takes the norms per sample, as Algorithm 5 writes them (score_sde averages them over
    the batch, which would make a sample depend on its batch). A step size that depends on the sample tilts
    Langevin's stationary law towards large ||score||: about +2/d in variance for d comparable dimensions, on
    top of the step's own O(snr^2) bias. Small for images; in 2-3 dimensions samples come out several times
    too spread. ``step_rule="sigma"`` replaces ||z|| / ||score|| by sigma_t, its value where the noise
    dominates: one step size per level, e = 2 a (snr sigma_t)^2, unbiased as it shrinks, in any dimension.
    """
    snr = _check_positive("snr", snr)
    corrector_steps = _check_count("corrector_steps", corrector_steps, minimum=0)
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor={predictor!r} is not known; expected one of {PREDICTORS}.")
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule={step_rule!r} is not known; expected one of {STEP_RULES}.")
    process = denoiser.process
    n = len(ts) - 1
    for i in _steps(ts, progress, "pc"):
        t, s = ts[i], ts[i + 1]
        a_t, a_s = float(process.alpha(t)), float(process.alpha(s))
        for _ in range(corrector_steps):  # Langevin corrector (Algorithm 5)
            x = _langevin_step(denoiser, x, t, cond, noise, (a_t / a_s) ** 2, snr, step_rule)
        pred = denoiser(x, t, cond)
        if denoise_final and i == n - 1 and float(s) == 0.0:
            _report(callback, i, s, pred.x0, pred.x0)
            return pred.x0
        if predictor == "euler_maruyama":
            x = _em_step(process, x, pred.x0, pred.score, t, s, noise)
        else:
            x = _reverse_diffusion_step(process, x, pred.score, t, s, a_t / a_s, noise)
        _report(callback, i, s, x, pred.x0)
    return x


# ---------------------------------------------------------------------------------------------------------
# NCSN's annealed Langevin dynamics
# ---------------------------------------------------------------------------------------------------------


def annealed_langevin_nfe(steps: int, *, steps_per_level: int = 5, denoise_final: bool = True, **_: Any) -> int:
    """Network evaluations of ``annealed_langevin``: ``steps_per_level`` per level, plus one final denoising."""
    return _check_count("steps_per_level", steps_per_level) * steps + int(bool(denoise_final))


def annealed_langevin(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    step_size: float | None = None,
    steps_per_level: int = 5,
    denoise_final: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Algorithm 1), in the VE frame of any process.

    The noise levels are sigma~_i = sigma(t_i) / alpha(t_i) for the grid times t_i > 0, the score is that of the
    VE variable x~ = x / alpha, s~ = -eps_hat / sigma~. At each level, T = ``steps_per_level`` steps of

        x~ <- x~ + a_i s~(x~, sigma~_i) + sqrt(2 a_i) z,   a_i = e sigma~_i^2 / sigma~_L^2,

    with sigma~_L the smallest level and e = ``step_size`` (default: NCSN's e = 2e-5 at sigma_L = 0.01, scaled
    with sigma~_L^2, i.e. a_i = 0.2 sigma~_i^2). ``denoise_final`` adds one Tweedie step at the smallest level,
    x0 = x~ + sigma~_L^2 s~ (Jolicoeur-Martineau et al. 2021, as NCSNv2 does). A level with infinite
    sigma~ (alpha = 0: flow's t = 1) is skipped; the chain then starts at the next level from the same noise,
    rescaled to that level's prior std. Network evaluations: T per level, + 1 for the final denoising.
    ``callback`` gets each level's final state as the next level's input alpha(t_{i+1}) x~, the last the sample.
    """
    steps_per_level = _check_count("steps_per_level", steps_per_level)
    process = denoiser.process
    times = ts[:-1]
    ve = [_ve_sigma(process, t) for t in times]
    sigma_l = ve[-1]
    if not (math.isfinite(sigma_l) and sigma_l > 0):
        raise ValueError(f"annealed_langevin needs a finite noise level above 0 at t={float(times[-1])}.")
    eps = 2e-5 * (sigma_l / 0.01) ** 2 if step_size is None else _check_positive("step_size", step_size)
    first = next(i for i, v in enumerate(ve) if math.isfinite(v))
    # x ~ N(0, alpha_0^2 + sigma_0^2) at t_0; the VE variable at the first finite level has std sqrt(1 + sigma~^2)
    a_0, s_0 = float(process.alpha(times[0])), float(process.sigma(times[0]))
    x_ve = x / a_0 if first == 0 else x * math.sqrt(1.0 + ve[first] ** 2) / math.sqrt(a_0**2 + s_0**2)
    n = len(times)
    x0: Tensor | None = None  # the data estimate of the last evaluation (none yet at a skipped level)
    for i in _steps(ts, progress, "annealed_langevin"):
        if i >= first:
            t, a, sig = times[i], float(process.alpha(times[i])), ve[i]
            step = eps * sig**2 / sigma_l**2
            for _ in range(steps_per_level):
                pred = denoiser(a * x_ve, t, cond)
                score_ve = -pred.eps / sig  # score of x~ = alpha * score of x
                x_ve = x_ve + step * score_ve + math.sqrt(2.0 * step) * _noise_like(noise, x_ve)
            x0 = pred.x0
        if i < n - 1 and callback is not None:  # the state the next level starts from; the last step reports below
            _report(callback, i, ts[i + 1], float(process.alpha(ts[i + 1])) * x_ve, x0)
    out = x_ve  # at t = 0, alpha = 1: the VE frame is the data frame
    if denoise_final:
        t = times[-1]
        out = x0 = denoiser(float(process.alpha(t)) * x_ve, t, cond).x0  # Tweedie: x~ + sigma~_L^2 s~
    _report(callback, n - 1, ts[-1], out, x0)
    return out


# ---------------------------------------------------------------------------------------------------------
# DPM-Solver++(2M) SDE
# ---------------------------------------------------------------------------------------------------------


def dpmpp_2m_sde(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Mapping[str, Tensor] | None = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(2M), midpoint form (Lu et al. 2022b, DPM-Solver++; the SDE variant of its authors'
    diffusers ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)``).

    With lambda = log(alpha / sigma), h = lambda_s - lambda_t and the data predictions D0 = x0_hat(t),
    D1 = (D0 - x0_hat(t_prev)) / r, r = h_prev / h:

        x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) (D0 + D1 / 2) + sigma_s sqrt(1 - e^{-2h}) z.

    The first step and the step to t = 0 are first order (D1 = 0), as diffusers does; the latter returns x0_hat.
    e^{-h} = sigma~_s / sigma~_t, so a start where alpha = 0 (flow's t = 1) is finite.
    """
    process = denoiser.process
    n = len(ts) - 1
    prev_x0: Tensor | None = None
    h_prev = 0.0
    for i in _steps(ts, progress, "dpmpp_2m_sde"):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        ve_t, ve_s = _ve_sigma(process, t), _ve_sigma(process, s)
        e_h = ve_s / ve_t  # e^{-h}, 0 where ve_t = inf or ve_s = 0
        h = math.log(ve_t / ve_s) if 0.0 < e_h else math.inf
        a_s, sig_t, sig_s = float(process.alpha(s)), float(process.sigma(t)), float(process.sigma(s))
        d = pred.x0
        if prev_x0 is not None and i < n - 1:  # second order: D0 + D1 / 2 (midpoint)
            d = pred.x0 + 0.5 * (h / h_prev) * (pred.x0 - prev_x0)
        one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        x = (sig_s / sig_t * e_h) * x + a_s * one_minus * d
        if sig_s > 0 and one_minus > 0:
            x = x + sig_s * math.sqrt(one_minus) * _noise_like(noise, x)
        prev_x0, h_prev = pred.x0, h
        _report(callback, i, s, x, pred.x0)
    return x
