"""The discrete NELBOs with exact answers: on i.i.d. categorical data the optimal denoiser's bound is the entropy H(p)
plus the prior's small mismatch KL(q(x_1) || p(x_1)), exactly (by enumeration and quadrature) and in expectation
over random times and corruptions; the T-step D3PM bound approaches the continuous one from above as T grows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusionlab.discrete.losses import bits_per_token, discrete_time_nelbo, nelbo, perplexity_bound, token_count
from diffusionlab.discrete.processes import AbsorbingProcess, make_process

K = 5
P = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)
H = -(P * P.log()).sum().item()  # 1.4541... nats
PROCESSES = [(name, schedule) for name in ("absorbing", "uniform") for schedule in ("loglinear", "cosine")]
F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small tensors: one thread."""


def oracle(x_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
    """The optimal denoiser for i.i.d. positions: x0_hat = p whatever the context (the absorbing posterior of a
    masked token, and for uniform noise the x0_hat that makes D3PM's eq. 4 the exact reverse kernel)."""
    return P.log().float().expand(*x_t.shape, K)


def worse_with_noise(x_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
    """A time-dependent, imperfect denoiser: log p + 2 t z."""
    z = torch.tensor([-1.0, 0.5, 1.0, 0.2, -0.4])
    return (P.log().float() + 2 * t.float()[:, None, None] * z).expand(*x_t.shape, K).contiguous()


def _bound_of_the_oracle(process) -> float:
    """E[NELBO] of the oracle per token: H(p) + KL(q(x_1) || p(x_1)), q(x_1) = alpha_1 p + (1 - alpha_1) pi: the
    oracle reverses the forward process exactly, so only the prior's mismatch remains."""
    q1 = (P[:, None] * process.marginal(torch.arange(K)[:, None], 1.0)[:, 0]).sum(0)
    p1 = process.prior_probs(F64)
    return H + (torch.xlogy(q1, q1) - torch.xlogy(q1, p1)).sum().item()


def _exact_continuous(process, model, nodes: int = 64) -> float:
    """E over x0 ~ p, t ~ U[0, 1] and x_t ~ q(x_t | x0) of ``nelbo`` per token, by enumerating (x0, x_t) through its
    ``x_t`` argument and Gauss-Legendre quadrature in u, t = u^3 (smooth through the integrand's log t at 0)."""
    states = process.num_states
    u, w = np.polynomial.legendre.leggauss(nodes)
    u, w = torch.tensor((u + 1) / 2), torch.tensor(w / 2)
    t, dt = u**3, w * 3 * u**2
    x0 = torch.arange(K).repeat_interleave(states).repeat(nodes)
    x_t = torch.arange(states).repeat(K * nodes)
    tt = t.repeat_interleave(K * states)
    q = process.marginal(torch.arange(K).repeat(nodes)[:, None], t.repeat_interleave(K))[:, 0].view(nodes, K, states)
    weight = (dt[:, None, None] * P[None, :, None] * q).reshape(-1)
    possible = weight > 0
    values = nelbo(process, model, x0[possible, None], tt[possible], x_t=x_t[possible, None]).double()
    return (weight[possible] * values).sum().item()


def _exact_discrete(process, model, steps: int) -> float:
    """D3PM's L_vb per token in expectation, by enumeration: KL(q(x_1|x0) || p(x_1)) + sum over the grid of
    E_{x0, x_t} KL(q(x_s | x_t, x0) || posterior(x_t, x0_hat)), built here from process.posterior."""
    states = process.num_states
    k = torch.arange(1, steps + 1, dtype=F64)
    t, s = k / steps, (k - 1) / steps
    x0 = torch.arange(K).repeat_interleave(states).repeat(steps)
    x_t = torch.arange(states).repeat(K * steps)
    tt, ss = t.repeat_interleave(K * states), s.repeat_interleave(K * states)
    q = process.marginal(torch.arange(K).repeat(steps)[:, None], t.repeat_interleave(K))[:, 0].view(steps, K, states)
    weight = (P[None, :, None] * q).reshape(-1)
    ok = weight > 0
    x0_hat = torch.softmax(model(x_t[ok, None], tt[ok].float(), None).double(), -1)
    onehot = torch.nn.functional.one_hot(x0[ok, None], K).double()
    q_post = process.posterior(x_t[ok, None], onehot, ss[ok], tt[ok])
    p_post = process.posterior(x_t[ok, None], x0_hat, ss[ok], tt[ok])
    kl = (torch.xlogy(q_post, q_post) - torch.xlogy(q_post, p_post)).sum(-1)[:, 0]
    return (weight[ok] * kl).sum().item() + process.prior_kl()


def _iid(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(P, batch * length, replacement=True, generator=g).view(batch, length)


# ------------------------------------------------------------------------------------------------ nelbo


@pytest.mark.parametrize("name,schedule", PROCESSES)
def test_oracle_nelbo_is_the_entropy_exactly(name: str, schedule: str) -> None:
    """The weighting is right: the expected continuous-time NELBO of the optimal denoiser is H(p) + the prior's
    mismatch (alpha(1) (log K - H) for absorbing, O(alpha(1)^2) for uniform), to 1e-6 nats."""
    process = make_process(name, K, schedule)
    expected = _bound_of_the_oracle(process)
    assert expected - H == pytest.approx(1e-3 * (math.log(K) - H) if name == "absorbing" else 0.0, abs=2e-6)
    assert _exact_continuous(process, oracle) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name,schedule", PROCESSES)
def test_oracle_nelbo_over_random_times_and_corruptions(name: str, schedule: str) -> None:
    """The estimator as training uses it (one random time per sequence, one random corruption): its mean per token
    is within 4 standard errors of H(p) + the prior mismatch, with a standard error under 1% of H.

    t ~ U[0, 1] has infinite variance here (a token is masked with probability ~t and then weighs ~1/t, so
    E[X^2] ~ int dt / t), so the test draws t = u^2 (density 1 / (2 sqrt t)) and weighs each sequence by 2 sqrt t:
    the same integral over [0, 1], unbiased, with finite variance."""
    process = make_process(name, K, schedule)
    batch = 1 << 17
    x0 = _iid(batch, 1, seed=11)
    g = torch.Generator().manual_seed(12)
    t = torch.rand(batch, generator=g, dtype=F64) ** 2
    per_token = nelbo(process, oracle, x0, t, generator=g).double() * 2 * t.sqrt()
    mean, se = per_token.mean().item(), per_token.std().item() / math.sqrt(batch)
    assert se < 0.01 * H
    assert abs(mean - _bound_of_the_oracle(process)) < 4 * se, (mean, se)


@pytest.mark.parametrize("name,schedule", PROCESSES)
def test_discrete_time_bound_approaches_the_continuous_one(name: str, schedule: str) -> None:
    """L_T for an imperfect time-dependent denoiser decreases to the continuous NELBO: L_10 > L_100 > L_1000 >=
    L_inf, within 1% at T = 1000; for the oracle every L_T equals the continuous value."""
    process = make_process(name, K, schedule)
    continuous = _exact_continuous(process, worse_with_noise)
    l10, l100, l1000 = (_exact_discrete(process, worse_with_noise, steps) for steps in (10, 100, 1000))
    assert l10 > l100 > l1000 >= continuous - 1e-6
    assert (l1000 - continuous) / continuous < 0.01
    assert continuous > _bound_of_the_oracle(process) + 0.1  # the imperfect model is measurably worse
    for steps in (1, 7, 1000):
        assert _exact_discrete(process, oracle, steps) == pytest.approx(_bound_of_the_oracle(process), abs=1e-6)


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_discrete_time_nelbo_is_d3pm_sum(name: str) -> None:
    """The library's Monte Carlo L_T agrees with the enumerated sum within 4 standard errors: T = 4 for the
    imperfect denoiser, T = 1000 for the oracle (also within 4 standard errors of the continuous bound)."""
    process = make_process(name, K, "cosine")
    x0 = _iid(4096, 4, seed=21)
    values = discrete_time_nelbo(process, worse_with_noise, x0, 4, generator=torch.Generator().manual_seed(22)) / 4
    se = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - _exact_discrete(process, worse_with_noise, 4)) < 4 * se
    x0 = _iid(32, 8, seed=23)
    values = discrete_time_nelbo(process, oracle, x0, 1000, generator=torch.Generator().manual_seed(24)) / 8
    se = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - _exact_continuous(process, oracle)) < 4 * se


def test_absorbing_nelbo_is_mdlm_weighted_cross_entropy() -> None:
    """At a given x_t: -alpha'/(1 - alpha) * (-log x0_hat[x0]) summed over masked tokens, + alpha(1) log K each."""
    process = AbsorbingProcess(K, "loglinear")
    x0 = torch.tensor([[0, 1, 2, 3, 4]])
    x_t = torch.tensor([[K, 1, K, 3, K]])
    t = 0.4
    weight = 0.999 / (0.999 * t)
    expected = weight * -(P[0].log() + P[2].log() + P[4].log()).item() + 5 * 1e-3 * math.log(K)
    assert nelbo(process, oracle, x0, t, x_t=x_t).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_padding_counts_for_nothing(name: str) -> None:
    process = make_process(name, K, "loglinear")
    x0 = _iid(3, 6, seed=31)
    x_t = process.corrupt(x0, 0.6, generator=torch.Generator().manual_seed(32))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [False] * 6])
    padded = torch.where(mask, x0, torch.full_like(x0, 999))  # pad ids outside the vocabulary are ignored
    got = nelbo(process, oracle, padded, 0.6, padding_mask=mask, x_t=x_t)
    full = nelbo(process, oracle, x0, 0.6, x_t=x_t)
    short = nelbo(process, oracle, x0[1:2, :4], 0.6, x_t=x_t[1:2, :4])
    torch.testing.assert_close(got, torch.stack([full[0], short[0], torch.tensor(0.0)]))
    discrete = discrete_time_nelbo(process, oracle, padded, 3, padding_mask=mask)
    assert discrete[2].item() == 0.0 and discrete[1].item() > 0.0


def test_gradients_are_finite_at_the_ends() -> None:
    """t = 0 and t = 1 included: the weights -alpha'/(1 - alpha) and -alpha'/(K alpha) never make NaN gradients."""
    logits = torch.zeros(K, requires_grad=True)

    def model(x_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return logits.expand(*x_t.shape, K)

    x0 = _iid(4, 8, seed=41)
    for name in ("absorbing", "uniform"):
        process = make_process(name, K, "cosine")
        loss = nelbo(process, model, x0, torch.tensor([0.0, 1e-7, 0.5, 1.0])).sum()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        logits.grad = None


# ------------------------------------------------------------------------------------------------ summaries


def test_bits_per_token_and_perplexity_bound() -> None:
    nats = torch.tensor([10 * math.log(2), 6 * math.log(2)], dtype=F64)
    assert bits_per_token(nats, 16) == pytest.approx(1.0, rel=1e-12)
    assert bits_per_token(nats, torch.tensor([10, 6])) == pytest.approx(1.0, rel=1e-12)
    assert bits_per_token(nats, torch.ones(2, 8, dtype=torch.bool)) == pytest.approx(1.0, rel=1e-12)
    assert perplexity_bound(torch.tensor([16 * math.log(3)], dtype=F64), 16) == pytest.approx(3.0, rel=1e-12)
    assert token_count(torch.tensor([[True, False], [True, True]])) == 3
    with pytest.raises(ValueError, match=r"tokens=0 must count at least one real token"):
        bits_per_token(nats, 0)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_error() -> None:
    process = AbsorbingProcess(K)
    x0 = _iid(2, 3, seed=51)
    with pytest.raises(ValueError, match=r"t=1\.5 must lie in \[0, 1\]"):
        nelbo(process, oracle, x0, 1.5)
    with pytest.raises(ValueError, match=r"x0 holds token id 5; expected ids 0\.\.4\."):
        nelbo(process, oracle, torch.full((2, 3), 5), 0.5)
    with pytest.raises(ValueError, match=r"the model returned logits of shape \(2, 3, 6\); expected \(2, 3, 5\)"):
        nelbo(process, lambda x, t, c: torch.zeros(*x.shape, K + 1), x0, 0.5)
    with pytest.raises(ValueError, match="padding_mask must be a bool tensor shaped like x0"):
        nelbo(process, oracle, x0, 0.5, padding_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"x_t has shape \(2, 2\); expected x0's \(2, 3\)"):
        nelbo(process, oracle, x0, 0.5, x_t=x0[:, :2])
    with pytest.raises(ValueError, match=r"steps=0 must be a positive integer"):
        discrete_time_nelbo(process, oracle, x0, 0)
    with pytest.raises(ValueError, match=r"x0 must be a \(batch, length\) tensor"):
        nelbo(process, oracle, x0[0], 0.5)


def test_uniform_nelbo_per_column_equals_the_hand_computed_limit_of_d3pm() -> None:
    """A uniform process with one K per position (a table's categorical columns, TabDDPM's multinomial diffusion):
    a column of K = 2 inside a vocabulary of 3 and one of K = 3. Each position's NELBO integrand equals, by hand, the
    limit of D3PM's step KL(q(x_s | x_t, x0) || p(x_s | x_t, x0_hat)) / (t - s) with the column's own Q_t = r I +
    (1 - r) 11^T / K (Austin et al. 2021, eq. 1 and 3), at dt = 1e-7, plus each column's own prior KL."""
    process = make_process("uniform", 3)
    columns = type(process)(3, "loglinear", cardinalities=[2, 3])
    logits = torch.tensor([[[0.3, -0.2, -1e4], [0.1, 0.7, -0.5]]])  # column 0 has no class 2
    x0, x_t, t = torch.tensor([[0, 2]]), torch.tensor([[1, 2]]), 0.5
    got = nelbo(columns, lambda *_: logits, x0, torch.tensor([t]), x_t=x_t).item()

    def alpha(u: float) -> float:
        return 1.0 - (1.0 - 1e-3) * u  # the log-linear schedule, eps = 1e-3

    def reverse(k: int, i: int, s: float, tt: float, x0_probs: list[float]) -> list[float]:
        """p(x_s = j | x_t = i) by Bayes over x_s: q(x_t = i | x_s = j) * sum_x0 x0_probs q(x_s = j | x0)."""
        r = alpha(tt) / alpha(s)
        joint = [
            (r * (i == j) + (1 - r) / k)
            * sum(p * (alpha(s) * (x == j) + (1 - alpha(s)) / k) for x, p in enumerate(x0_probs))
            for j in range(k)
        ]
        return [v / sum(joint) for v in joint]

    dt, want = 1e-7, 0.0
    for k, clean, noisy, row in [(2, 0, 1, [0.3, -0.2]), (3, 2, 2, [0.1, 0.7, -0.5])]:
        z = sum(math.exp(v) for v in row)
        x0_hat = [math.exp(v) / z for v in row]
        q = reverse(k, noisy, t - dt, t, [float(j == clean) for j in range(k)])
        p = reverse(k, noisy, t - dt, t, x0_hat)
        want += sum(a * math.log(a / b) for a, b in zip(q, p, strict=True) if a > 0) / dt
        a1, b = alpha(1.0), (1 - alpha(1.0)) / k
        want += (a1 + b) * math.log(k * (a1 + b)) + (k - 1) * b * math.log(k * b)
    assert got == pytest.approx(want, rel=1e-4)
    # a shared vocabulary of 3 for the K = 2 column gives another bound: the columns' own K matter
    shared = nelbo(process, lambda *_: logits.clamp_min(-30), x0, torch.tensor([t]), x_t=x_t).item()
    assert abs(shared - want) > 0.05 * want
    assert torch.equal(columns.prior((1000, 2), torch.Generator().manual_seed(0)).amax(0), torch.tensor([1, 2]))
