"""Likelihood bounds of the discrete processes (floor 3): the continuous-time NELBO, its T-step discrete-time
counterpart for checking, and their summaries in bits per token and as a perplexity bound.

``model(x_t (B, L), t (B,), cond) -> logits (B, L, K)`` over the K clean classes; its softmax is x0_hat.
Everything is in nats per sequence; padding positions (``padding_mask`` False) count for nothing.

The NELBO of a process whose alpha(0) = 1 (both schedules here) has no reconstruction term, so
-log p(x0) <= KL(q(x_1 | x0) || p(x_1)) + diffusion term. The prior term uses p(x_1) = process.prior_probs()
(``prior_kl``: alpha(1) log K per token for absorbing, O(alpha(1)^2 K) for uniform); MDLM's eq. 10 drops it,
assuming alpha(1) = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .processes import AbsorbingProcess, DiscreteProcess, UniformProcess, check_times

__all__ = [
    "Model",
    "nelbo",
    "discrete_time_nelbo",
    "bits_per_token",
    "perplexity_bound",
    "token_count",
    "stratified_times",
]

Model = Callable[[Tensor, Tensor, Any], Tensor]


def _check_inputs(process: DiscreteProcess, x0: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """x0 with padded positions set to class 0 (their ids may lie outside the vocabulary), and the real-token mask."""
    if not isinstance(x0, Tensor) or x0.ndim != 2:
        raise ValueError(
            f"x0 must be a (batch, length) tensor of token ids, got shape {tuple(getattr(x0, 'shape', ()))}."
        )
    if padding_mask is None:
        real = torch.ones_like(x0, dtype=torch.bool)
    else:
        if padding_mask.shape != x0.shape or padding_mask.dtype != torch.bool:
            raise ValueError(
                f"padding_mask must be a bool tensor shaped like x0 {tuple(x0.shape)} (True = real token), got "
                f"{padding_mask.dtype} {tuple(padding_mask.shape)}."
            )
        real = padding_mask.to(x0.device)
    x0 = torch.where(real, x0, torch.zeros_like(x0))
    return process.check_tokens(x0, "x0"), real


def _log_probs(process: DiscreteProcess, model: Model, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
    """log x0_hat (B, L, K) in float32 or wider, after one clear error for logits of the wrong shape."""
    logits = model(x_t, t, cond)
    want = (*x_t.shape, process.num_classes)
    if not isinstance(logits, Tensor) or logits.shape != want:
        raise ValueError(
            f"the model returned logits of shape {tuple(getattr(logits, 'shape', ()))}; expected {want} "
            "(one logit per clean class for every token)."
        )
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _absorbing_integrand(process: AbsorbingProcess, x0: Tensor, x_t: Tensor, log_p: Tensor, t: Tensor) -> Tensor:
    """MDLM's continuous-time NELBO integrand per token (Sahoo et al. 2024, eq. 10-11, SUBS parameterisation):
    -alpha'(t) / (1 - alpha(t)) * (-log x0_hat[x0]) at masked positions, 0 at unmasked ones (carried over)."""
    t = t.to(torch.float64)  # 1 - alpha(t) for small t loses its digits in float32
    gap = process.schedule.one_minus_alpha(t)
    # at t = 0 nothing is masked: the weight is 0 there, never inf (inf * 0 would make the gradient NaN)
    weight = torch.where(gap > 0, -process.schedule.dalpha(t) / gap.clamp_min(1e-300), 0.0).to(log_p.dtype)
    ce = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return torch.where(x_t == process.mask_id, weight[:, None] * ce, torch.zeros_like(ce))


def _uniform_integrand(process: UniformProcess, x0: Tensor, x_t: Tensor, log_p: Tensor, t: Tensor) -> Tensor:
    """The uniform process's continuous-time NELBO integrand per token (UDLM, Schiff et al. 2024, sec. 4), the
    limit of D3PM's L_vb (Austin et al. 2021, eq. 1) as the step count T -> infinity. With m = q(x_t | x0) =
    alpha x0 + (1 - alpha) / K, m_hat the same with x0_hat, and i = x_t:

        -alpha' / (K alpha) * [ 1/m_hat_i - 1/m_i + sum_{j != i} (m_j/m_i) log((m_j/m_i) / (m_hat_j/m_hat_i)) ].

    Derivation: for s = t - dt, q(x_t | x_s) moves a token with probability eps = -alpha' dt / alpha, so the
    reverse posteriors (processes.UniformProcess.posterior) put mass eps m_j / (K m_i) on each j != i (m_hat for
    the model's), and their KL is eps / K times the bracket, up to O(eps^2). It is 0 when x0_hat = x0. With the
    process's cardinalities, K is each position's own and the sum runs over its own classes (m_j = 0 elsewhere)."""
    t = t.to(torch.float64)  # 1 - alpha(t) for small t loses its digits in float32
    alpha64 = process.alpha(t)
    k = process.classes(torch.float64, log_p.device)
    if isinstance(k, int):
        weight = (-process.schedule.dalpha(t) / (k * alpha64)).to(log_p.dtype)[:, None]
        noise = (process.schedule.one_minus_alpha(t) / k).to(log_p.dtype)[:, None, None]  # (1 - alpha) / K
    else:  # (B, L) weights and (B, L, K) noise, 0 on the classes a position does not have
        weight = (-process.schedule.dalpha(t)[:, None] / (k * alpha64[:, None])).to(log_p.dtype)
        noise = (process.schedule.one_minus_alpha(t)[:, None] / k).to(log_p.dtype)[..., None]
        noise = noise * process.valid(log_p.dtype, log_p.device)
    alpha = alpha64.to(log_p.dtype)[:, None, None]
    onehot = torch.nn.functional.one_hot(x0, process.num_classes).to(log_p.dtype)
    m = alpha * onehot + noise
    log_m_hat = torch.logaddexp(torch.log(alpha) + log_p, torch.log(noise))
    i = x_t.unsqueeze(-1)
    m_i, log_m_hat_i = m.gather(-1, i), log_m_hat.gather(-1, i)
    # 1/m_hat_i - 1/m_i = alpha (x0_i - x0_hat_i) / (m_i m_hat_i): no cancellation of two numbers near K
    inverse_gap = alpha * (onehot.gather(-1, i) - log_p.gather(-1, i).exp()) / (m_i * log_m_hat_i.exp())
    ratio = m / m_i  # the j = i term of the sum is 0 and may stay in it; xlogy makes 0 log 0 = 0 at alpha = 1
    others = torch.xlogy(ratio, ratio) - ratio * (log_m_hat - log_m_hat_i)
    return weight * (inverse_gap.squeeze(-1) + others.sum(-1))


def nelbo(
    process: DiscreteProcess,
    model: Model,
    x0: Tensor,
    t: Tensor | float,
    cond: Any = None,
    padding_mask: Tensor | None = None,
    *,
    x_t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The continuous-time NELBO in nats per sequence (B,), a one-sample estimate at the given times t (B,):
    its mean over t ~ U[0, 1] bounds -log p(x0). Absorbing: MDLM's weighted cross-entropy on masked positions
    (Sahoo et al. 2024, eq. 10-11); uniform: the UDLM bound (see ``_uniform_integrand``); plus the prior term.
    ``x_t`` evaluates at that corruption of x0 instead of drawing one (``generator`` draws it)."""
    x0, real = _check_inputs(process, x0, padding_mask)
    t = check_times(t, x0.shape[0]).to(x0.device)
    if x_t is None:
        x_t = process.corrupt(x0, t, generator)
    else:
        x_t = process.check_tokens(x_t, "x_t", allow_mask=True)
        if x_t.shape != x0.shape:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}; expected x0's {tuple(x0.shape)}.")
    log_p = _log_probs(process, model, x_t, t.to(torch.get_default_dtype()), cond)
    if isinstance(process, AbsorbingProcess):
        per_token = _absorbing_integrand(process, x0, x_t, log_p, t)
    elif isinstance(process, UniformProcess):
        per_token = _uniform_integrand(process, x0, x_t, log_p, t)
    else:
        raise ValueError(f"nelbo does not know the process {type(process).__name__}; expected absorbing or uniform.")
    per_token = per_token + torch.as_tensor(process.prior_kl(), dtype=per_token.dtype, device=per_token.device)
    return torch.where(real, per_token, torch.zeros_like(per_token)).sum(-1)


def _kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(q || p) over the last axis, with 0 log 0 = 0 (and +inf where q > 0 = p)."""
    return (torch.xlogy(q, q) - torch.xlogy(q, p)).sum(-1)


@torch.no_grad()
def discrete_time_nelbo(
    process: DiscreteProcess,
    model: Model,
    x0: Tensor,
    steps: int,
    cond: Any = None,
    padding_mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """D3PM's T-step bound L_vb (Austin et al. 2021, eq. 1) in nats per sequence (B,), on the grid t_k = k / T:
    KL(q(x_1 | x0) || p(x_1)) + sum_k KL(q(x_{t_{k-1}} | x_{t_k}, x0) || p_theta(x_{t_{k-1}} | x_{t_k})), with
    p_theta = process.posterior(x_t, x0_hat, ...) (D3PM eq. 4) and one draw of x_{t_k} per term. Since alpha(0) = 1
    the k = 1 term is D3PM's L_0 = -log p_theta(x0 | x_{t_1}). T model calls; in float64; for checking."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (the number of discrete-time steps T).")
    x0, real = _check_inputs(process, x0, padding_mask)
    batch = x0.shape[0]
    onehot = torch.nn.functional.one_hot(x0, process.num_classes).to(torch.float64)
    total = torch.zeros(x0.shape, dtype=torch.float64, device=x0.device) + torch.as_tensor(
        process.prior_kl(), dtype=torch.float64, device=x0.device
    )
    for k in range(steps, 0, -1):
        t = torch.full((batch,), k / steps, dtype=torch.float64, device=x0.device)
        s = torch.full((batch,), (k - 1) / steps, dtype=torch.float64, device=x0.device)
        x_t = process.corrupt(x0, t, generator)
        x0_hat = _log_probs(process, model, x_t, t.to(torch.get_default_dtype()), cond).to(torch.float64).exp()
        total += _kl(process.posterior(x_t, onehot, s, t), process.posterior(x_t, x0_hat, s, t))
    return torch.where(real, total, torch.zeros_like(total)).sum(-1)


def token_count(tokens: int | Tensor) -> int:
    """The number of real tokens: an int, per-sequence counts (B,), or a bool padding mask (True = real)."""
    if isinstance(tokens, Tensor):
        n = int(tokens.sum()) if tokens.dtype == torch.bool or not tokens.is_floating_point() else -1
    elif isinstance(tokens, int) and not isinstance(tokens, bool):
        n = tokens
    else:
        n = -1
    if n <= 0:
        raise ValueError(f"tokens={tokens!r} must count at least one real token (an int, counts, or a bool mask).")
    return n


def bits_per_token(nats: Tensor | float, tokens: int | Tensor) -> float:
    """Total NELBO nats over all sequences divided by the real token count and ln 2 (bits per character for a
    character tokenizer)."""
    return float(torch.as_tensor(nats, dtype=torch.float64).sum()) / (token_count(tokens) * math.log(2.0))


def perplexity_bound(nats: Tensor | float, tokens: int | Tensor) -> float:
    """exp(NELBO nats per token): an upper bound on the model's perplexity, since the NELBO bounds -log p."""
    return math.exp(float(torch.as_tensor(nats, dtype=torch.float64).sum()) / token_count(tokens))


def stratified_times(n: int, generator: torch.Generator | None = None, t_min: float = 1e-3) -> Tensor:
    """n times (float64) covering [t_min, 1] evenly from one random offset: MDLM's low-discrepancy sampler (Sahoo et
    al. 2024, sec. 3.5; Kingma et al. 2021, appendix I.1), the NELBO's integral over t with less variance."""
    offset = torch.rand(1, generator=generator, dtype=torch.float64)
    u = (offset + torch.arange(n, dtype=torch.float64) / n) % 1.0
    return t_min + u * (1 - t_min)
