"""Adaptive and higher-order stochastic solvers (floor 3): an embedded Runge-Kutta ODE solver with error control
(Dormand-Prince 5(4)), the adaptive reverse-SDE solver of Jolicoeur-Martineau et al. 2021, and a stochastic
Runge-Kutta scheme of strong order 1.5 for the reverse SDE (Rossler 2010, SRA1).

All work in the VE frame of the process, x~ = x / alpha against sigma~ = sigma / alpha (Karras et al. 2022,
eq. 4), where the probability-flow ODE is dx~/du = x~ - D(x~; sigma~) with u = log sigma~, and the reverse SDE of
EDM's eq. 6 (beta = 1 / sigma~) in the increasing variable s = -sigma~ is

    dx~ = 2 (D(x~; sigma~) - x~) / sigma~ ds + sqrt(2 sigma~) dW_s,

whose noise is additive (it does not depend on x~). Each sample has its own step sizes (its own time, passed to
the denoiser per sample), so a sample never depends on the others in its batch: the same seed gives the same
sample at any batch size. The grid ``ts`` gives the start (ts[0]) and the last noise level (ts[-2]); from there the
final step returns the data estimate x0_hat, as every other solver's last step does. ``steps`` (len(ts) - 1) sets
the first step size (the span over the steps); the rest follows the error control, so the number of network
evaluations is known only after a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..denoisers import DenoiserLike
from ..processes import GaussianProcess, broadcast_like
from .solvers import Noise, StepCallback, _noise_like, _report

__all__ = ["rk45", "adaptive_sde", "sra", "sra_step", "MAX_ITERATIONS"]

Cond = Mapping[str, Tensor] | None
MAX_ITERATIONS = 10_000  # attempted steps of one run, a guard against a tolerance too tight to ever meet

# Dormand & Prince 1980, the 5(4) pair of scipy's RK45 and MATLAB's ode45: nodes c, stages A, 5th-order weights b,
# and the difference e = b - b* to the embedded 4th-order solution
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _check_tolerance(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{name}={value!r} must be a number in (0, 1).")
    return float(value)


class _VEFrame:
    """The process seen in the VE frame, per sample: times at noise levels sigma~ and the data estimate there."""

    def __init__(self, denoiser: DenoiserLike, cond: Cond) -> None:
        self.denoiser, self.cond, self.process = denoiser, cond, denoiser.process

    def time(self, ve: Tensor) -> Tensor:
        """The time of each sample's VE noise level (lambda = -log sigma~, the process's log-SNR is 2 lambda)."""
        p: GaussianProcess = self.process
        return p.t_from_log_snr(-2.0 * torch.log(ve)).to(torch.float64).clamp(0.0, float(p.t_max))

    def x0(self, y: Tensor, ve: Tensor) -> Tensor:
        """D(x~; sigma~) for a batch at per-sample VE levels: the network sees x = alpha x~ at the matching time."""
        t = self.time(ve)
        alpha = broadcast_like(self.process.alpha(t), y).to(y.dtype)
        return self.denoiser(alpha * y, t, self.cond).x0


FIRST_VE = 1e3  # from alpha = 0 (flow's t = 1), a DDIM step to this VE level (or ts[1], if later) first


def _start(denoiser: DenoiserLike, x: Tensor, ts: Tensor, cond: Cond) -> tuple[Tensor, float, float, int]:
    """(x~ at the start, sigma~ there, sigma~ at the last noise level, evaluations spent): from alpha = 0 (flow's
    t = 1) one DDIM step first, to sigma~ = 1000 (its error is O(1 / 1000^2) there), or to ts[1] if it is later."""
    if len(ts) < 3:
        raise ValueError("an adaptive solver needs steps >= 2 (a start and a last noise level above zero).")
    p = denoiser.process
    a0, s0 = float(p.alpha(ts[0])), float(p.sigma(ts[0]))
    a_end, s_end = float(p.alpha(ts[-2])), float(p.sigma(ts[-2]))
    spent = 0
    if a0 == 0.0:
        pred = denoiser(x, ts[0], cond)
        t1 = max(float(ts[1]), float(_VEFrame(denoiser, cond).time(torch.tensor([FIRST_VE], dtype=torch.float64))))
        t1_ = torch.tensor(t1, dtype=torch.float64)
        a1, s1 = float(p.alpha(t1_)), float(p.sigma(t1_))
        x, a0, s0, spent = a1 * pred.x0 + s1 * pred.eps, a1, s1, 1
    return x / a0, s0 / a0, s_end / a_end, spent


def _finish(frame: _VEFrame, y: Tensor, ve_end: float, callback: StepCallback | None, step: int) -> Tensor:
    """The last step into the data: x0_hat at the last noise level (reported as step ``step``, at t = 0)."""
    x = frame.x0(y, torch.full((len(y),), ve_end, dtype=torch.float64))
    _report(callback, step, torch.zeros((), dtype=torch.float64), x, x)
    return x


def _report_state(frame: _VEFrame, callback: StepCallback | None, step: int, ve: Tensor, y: Tensor, x0: Tensor) -> None:
    """An adaptive solver's state after attempt ``step``: x = alpha x~ per sample, at the latest time of the batch
    (samples move at their own pace)."""
    if callback is None:
        return
    t = frame.time(ve)
    x = broadcast_like(frame.process.alpha(t), y).to(y.dtype) * y
    _report(callback, step, t.max(), x, x0)


def _rms(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).mean(1).sqrt()


def _lerp_shape(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def rk45(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> Tensor:
    """The probability-flow ODE by the Dormand-Prince 5(4) pair with error control (Dormand & Prince 1980; Hairer
    et al., Solving ODEs I, sec. II.4): in u = log sigma~, dx~/du = x~ - D(x~; sigma~); a step is accepted when the
    RMS of (x5 - x4) / (atol + rtol max(|x~|, |x~'|)) is at most 1, and the next step is h (0.9 err^-1/5) within
    [0.2 h, 10 h]. The last stage is the next step's first (FSAL): six evaluations per accepted step."""
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    frame = _VEFrame(denoiser, cond)
    y, ve0, ve_end, _ = _start(denoiser, x, ts, cond)
    n = len(y)
    u = torch.full((n,), math.log(ve0), dtype=torch.float64)
    u_end = math.log(ve_end)
    h = torch.full((n,), (u_end - u[0].item()) / (len(ts) - 1), dtype=torch.float64)  # negative: u decreases
    x0 = frame.x0(y, u.exp())
    k1 = y - x0
    for it in range(MAX_ITERATIONS):
        active = u > u_end + 1e-12
        if not bool(active.any()):
            break
        h = torch.where(active, torch.maximum(h, u_end - u), torch.zeros_like(h))
        ks = [k1]
        for stage in range(1, 6):
            yi = y + sum(_lerp_shape(h * a, y) * k for a, k in zip(_A[stage], ks, strict=False))
            ks.append(yi - frame.x0(yi, (u + _C[stage] * h).exp()))
        y5 = y + sum(_lerp_shape(h * b, y) * k for b, k in zip(_B, ks, strict=True))
        x0_new = frame.x0(y5, (u + h).exp())
        ks.append(y5 - x0_new)
        err = sum(_lerp_shape(h * e, y) * k for e, k in zip(_E, ks, strict=True))
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        ratio = _rms(err / scale).to(torch.float64)
        accept = active & (ratio <= 1.0)
        keep = _lerp_shape(accept.to(torch.float64), y).bool()
        y = torch.where(keep, y5, y)
        k1 = torch.where(keep, ks[-1], k1)
        x0 = torch.where(keep, x0_new, x0)
        u = torch.where(accept, u + h, u)
        factor = (0.9 * ratio.clamp_min(1e-10) ** -0.2).clamp(0.2, 10.0)
        h = torch.where(active, h * factor, h)
        _report_state(frame, callback, it, u.exp(), y, x0)
    return _finish(frame, y, ve_end, callback, it)


class _BrownianStack:
    """The future of one sample's Brownian path that a rejected step already drew (Rackauckas & Nie 2017, RSwM1):
    a rejected increment is split by the Brownian bridge, so a retried smaller step sees the same path and the
    rejections do not bias the noise. Entries are (duration, increment), the next one last."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Tensor]] = []

    def take(self, h: float, z: Tensor) -> tuple[float, Tensor]:
        """(step, increment) for a step of at most h, with z a fresh N(0, 1) draw (used or not)."""
        if not self.pending:
            return h, math.sqrt(h) * z
        duration, increment = self.pending.pop()
        if h >= duration * (1 - 1e-12):
            return duration, increment
        return self.split(duration, increment, h, z)

    def split(self, duration: float, increment: Tensor, h: float, z: Tensor) -> tuple[float, Tensor]:
        """The increment over the first h of (duration, increment), drawn from the bridge; the rest is kept."""
        part = (h / duration) * increment + math.sqrt(h * (duration - h) / duration) * z
        self.pending.append((duration - h, increment - part))
        return h, part

    def reject(self, h: float, increment: Tensor) -> None:
        """A step (h, increment) was refused: its path stays for the retry."""
        self.pending.append((h, increment))


def adaptive_sde(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    abs_tol: float = 0.0078,
    rel_tol: float = 0.05,
    safety: float = 0.9,
    exponent: float = 0.9,
) -> Tensor:
    """The reverse SDE with adaptive steps (Jolicoeur-Martineau et al. 2021, Algorithm 1): from x~ at s with the
    Brownian increment dW, x'_EM = x~ + h a(x~) + b(s) dW (Euler-Maruyama) and x'' = x~ + h a(x'_EM at s + h) +
    b(s + h) dW; the improved-Euler x' = (x'_EM + x'') / 2 is accepted when E = RMS((x'_EM - x') / delta) <= 1 with
    delta = max(abs_tol, rel_tol max(|x'_EM|, |x'_prev|)) (x'_prev the last accepted EM proposal); then
    h <- min(rest, safety h E^-exponent). Their defaults for data in [-1, 1]: abs_tol 1/128, rel_tol 0.05. Unlike
    their algorithm, a rejected step keeps its Brownian path (``_BrownianStack``, RSwM1): redrawing it would favour
    the noise that passes the test and bias the samples. Two evaluations per attempt."""
    abs_tol, rel_tol = _check_tolerance("abs_tol", abs_tol), _check_tolerance("rel_tol", rel_tol)
    _check_tolerance("safety", safety)
    if not 0 < exponent <= 1:
        raise ValueError(f"exponent={exponent!r} must be in (0, 1].")
    frame = _VEFrame(denoiser, cond)
    y, ve0, ve_end, _ = _start(denoiser, x, ts, cond)
    n = len(y)
    ve = torch.full((n,), ve0, dtype=torch.float64)
    want = [(ve0 - ve_end) / (len(ts) - 1)] * n  # the next step each sample asks for, in s = -sigma~
    paths = [_BrownianStack() for _ in range(n)]
    y_prev = y
    x0 = y
    for it in range(MAX_ITERATIONS):
        active = ve > ve_end * (1 + 1e-12)
        if not bool(active.any()):
            break
        z = _noise_like(noise, y)  # one draw per attempt per sample, used or not: a sample's own stream
        steps, increments = [], []
        for i in range(n):
            rest = float(ve[i]) - ve_end
            if not bool(active[i]):
                steps.append(0.0)
                increments.append(torch.zeros_like(y[i]))
                continue
            h_i, dw_i = paths[i].take(min(want[i], rest), z[i])
            steps.append(h_i)
            increments.append(dw_i)
        h = torch.tensor(steps, dtype=torch.float64)
        dw = torch.stack(increments)
        x0 = frame.x0(y, ve)
        drift = 2.0 * (x0 - y) / _lerp_shape(ve, y)
        y_em = y + _lerp_shape(h, y) * drift + _lerp_shape((2.0 * ve).sqrt(), y) * dw
        ve_next = (ve - h).clamp_min(ve_end)
        x0_em = frame.x0(y_em, ve_next)
        drift_em = 2.0 * (x0_em - y_em) / _lerp_shape(ve_next, y)
        y_2 = y + _lerp_shape(h, y) * drift_em + _lerp_shape((2.0 * ve_next).sqrt(), y) * dw
        y_heun = 0.5 * (y_em + y_2)
        delta = torch.maximum(torch.full_like(y, abs_tol), rel_tol * torch.maximum(y_em.abs(), y_prev.abs()))
        err = _rms((y_em - y_heun) / delta).to(torch.float64)
        accept = active & (err <= 1.0)
        keep = _lerp_shape(accept.to(torch.float64), y).bool()
        y = torch.where(keep, y_heun, y)
        y_prev = torch.where(keep, y_em, y_prev)
        ve = torch.where(accept, ve_next, ve)
        for i in range(n):
            if not bool(active[i]):
                continue
            want[i] = safety * steps[i] * float(err[i].clamp_min(1e-10)) ** -exponent
            if not bool(accept[i]):
                paths[i].reject(steps[i], increments[i])
        _report_state(frame, callback, it, ve, y, x0)
    return _finish(frame, y, ve_end, callback, it)


def sra_step(
    drift: Callable[[float, Tensor], Tensor],
    diffusion: Callable[[float], float | Tensor],
    x: Tensor,
    s: float,
    h: float,
    dw: Tensor,
    dz: Tensor,
) -> Tensor:
    """One step of SRA1 (Rossler 2010, table 2; strong order 1.5 for additive noise) for dx = a(s, x) ds + b(s) dW:
    with dW = W(s + h) - W(s) and dZ = int_s^{s+h} (W(r) - W(s)) dr,

    H = x + 3/4 h a(s, x) + 3/2 b(s + h) dZ / h,
    x' = x + h (1/3 a(s, x) + 2/3 a(s + 3/4 h, H)) + b(s + h) (dW - dZ / h) + b(s) dZ / h."""
    a0 = drift(s, x)
    b0, b1 = diffusion(s), diffusion(s + h)
    stage = x + 0.75 * h * a0 + 1.5 * b1 * dz / h
    return x + h * (a0 / 3.0 + 2.0 * drift(s + 0.75 * h, stage) / 3.0) + b1 * (dw - dz / h) + b0 * dz / h


def brownian_increments(z1: Tensor, z2: Tensor, h: float) -> tuple[Tensor, Tensor]:
    """(dW, dZ) over a step h from two independent N(0, 1) draws: dW = sqrt(h) z1, dZ = h^1.5 (z1 + z2 / sqrt 3) / 2,
    the joint normal law with Var dW = h, Var dZ = h^3 / 3 and Cov(dW, dZ) = h^2 / 2 (Kloeden & Platen, sec. 10.4)."""
    return math.sqrt(h) * z1, 0.5 * h**1.5 * (z1 + z2 / math.sqrt(3.0))


def sra(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    *,
    cond: Cond = None,
    noise: Noise | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """The reverse SDE by the stochastic Runge-Kutta scheme SRA1 (``sra_step``; Rossler 2010) on the grid's noise
    levels: in s = -sigma~, a(s, x~) = 2 (D(x~; sigma~) - x~) / sigma~ and b(s) = sqrt(2 sigma~). Two evaluations
    per step and two noise draws (dW and the iterated integral dZ); the last step into the data returns x0_hat."""
    p = denoiser.process
    frame = _VEFrame(denoiser, cond)
    y, ve0, ve_end, _ = _start(denoiser, x, ts, cond)
    levels = [ve0]
    for t in ts[1:-1]:
        a, s = float(p.alpha(t)), float(p.sigma(t))
        if a > 0 and s / a < levels[-1]:
            levels.append(s / a)
    n = len(y)

    seen: list[Tensor] = []  # the data estimates of the current step, the first at (sigma~, x~)

    def drift(s_: float, v: Tensor) -> Tensor:
        ve = -s_
        seen.append(frame.x0(v, torch.full((n,), ve, dtype=torch.float64)))
        return 2.0 * (seen[-1] - v) / ve

    def diffusion(s_: float) -> float:
        return math.sqrt(2.0 * max(-s_, 0.0))

    for i in range(len(levels) - 1):
        h = levels[i] - levels[i + 1]
        dw, dz = brownian_increments(_noise_like(noise, y), _noise_like(noise, y), h)
        seen.clear()
        y = sra_step(drift, diffusion, y, -levels[i], h, dw, dz)
        _report(callback, i, ts[i + 1], float(p.alpha(ts[i + 1])) * y, seen[0])
    return _finish(frame, y, ve_end, callback, len(levels) - 1)
