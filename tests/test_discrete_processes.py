"""The discrete processes against their closed forms: schedules, forward marginals over many draws, the posterior
against Bayes' rule computed by brute force, the ancestral step against the posterior, the prior and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from diffusionlab.discrete.processes import (
    AbsorbingProcess,
    CosineSchedule,
    LogLinearSchedule,
    UniformProcess,
    make_process,
    make_schedule,
)

K = 4
PROCESSES = [(name, schedule) for name in ("absorbing", "uniform") for schedule in ("loglinear", "cosine")]
F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small tensors: one thread."""


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value of counts against probs, over the cells of positive probability (a count in a
    cell of probability 0 fails outright)."""
    support = probs > 0
    assert int(counts[~support].sum()) == 0, f"draws fell where the probability is 0: {counts.tolist()}"
    expected = probs[support].double() * counts.sum()
    if int(support.sum()) == 1:
        return 1.0
    return float(chisquare(counts[support].double().numpy(), expected.numpy()).pvalue)


def _transition(process, s: float, t: float) -> torch.Tensor:
    """q(x_t = i | x_s = j) as a (S, S) matrix [j, i], built from alpha_t / alpha_s and pi (D3PM's Q-bar_t)."""
    a_s = process.schedule.alpha(torch.tensor(s, dtype=F64))
    a_t = process.schedule.alpha(torch.tensor(t, dtype=F64))
    r = a_t / a_s
    return r * torch.eye(process.num_states, dtype=F64) + (1 - r) * process.pi(F64)[None, :]


def _marginal(process, x0: int, t: float) -> torch.Tensor:
    a = process.schedule.alpha(torch.tensor(t, dtype=F64))
    return a * torch.nn.functional.one_hot(torch.tensor(x0), process.num_states).to(F64) + (1 - a) * process.pi(F64)


# ------------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("name", ["loglinear", "cosine"])
def test_schedule_ends_derivative_and_complement(name: str) -> None:
    schedule = make_schedule(name, eps=1e-3)
    t = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=F64)
    alpha = schedule.alpha(t)
    assert alpha[0].item() == 1.0  # exactly: no reconstruction term
    assert alpha[-1].item() == pytest.approx(1e-3, abs=1e-15)
    assert bool((alpha[1:] < alpha[:-1]).all())
    torch.testing.assert_close(schedule.one_minus_alpha(t), 1 - alpha, rtol=0, atol=1e-15)
    h = 1e-6
    inner = t[1:-1]
    fd = (schedule.alpha(inner + h) - schedule.alpha(inner - h)) / (2 * h)
    torch.testing.assert_close(schedule.dalpha(inner), fd, rtol=1e-7, atol=1e-9)
    # 1 - alpha keeps its digits near 0 (loglinear: (1 - eps) t; cosine: (1 - eps) (pi t / 2)^2 / 2)
    tiny = torch.tensor(1e-9, dtype=F64)
    expected = (1 - 1e-3) * (tiny if name == "loglinear" else (math.pi * tiny / 2) ** 2 / 2)
    assert schedule.one_minus_alpha(tiny).item() == pytest.approx(expected.item(), rel=1e-6)


def test_schedule_formulas() -> None:
    t = torch.tensor([0.25, 0.6], dtype=F64)
    torch.testing.assert_close(LogLinearSchedule(0.01).alpha(t), 1 - 0.99 * t)
    torch.testing.assert_close(CosineSchedule(0.01).alpha(t), 0.01 + 0.99 * torch.cos(math.pi * t / 2))


# ------------------------------------------------------------------------------------------------ marginals


@pytest.mark.parametrize("name,schedule", PROCESSES)
def test_marginal_is_the_closed_form(name: str, schedule: str) -> None:
    process = make_process(name, K, schedule)
    x0 = torch.arange(K)[None, :].repeat(3, 1)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    probs = process.marginal(x0, t)
    assert probs.shape == (3, K, process.num_states)
    for b in range(3):
        for j in range(K):
            torch.testing.assert_close(probs[b, j], _marginal(process, j, t[b].item()), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name,schedule", PROCESSES)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_corrupt_matches_marginal_over_many_draws(name: str, schedule: str, t: float) -> None:
    process = make_process(name, K, schedule)
    n = 20000
    x0 = torch.arange(K).repeat_interleave(n)[None, :]  # one long sequence: n tokens of each class
    g = torch.Generator().manual_seed(1234)
    x_t = process.corrupt(x0, t, generator=g)
    for j in range(K):
        counts = torch.bincount(x_t[0, j * n : (j + 1) * n], minlength=process.num_states)
        probs = _marginal(process, j, t)
        assert _chi2_pvalue(counts, probs) > 1e-3, (j, counts.tolist(), (probs * n).tolist())
        # and the share kept clean within 4 standard errors of alpha(t)
        a = process.schedule.alpha(torch.tensor(t, dtype=F64)).item()
        kept = counts[j].item() / n - (0 if name == "absorbing" else (1 - a) / K)
        assert abs(kept - a) < 4 * math.sqrt(a * (1 - a) / n) + 1e-12


def test_corrupt_ends() -> None:
    process = AbsorbingProcess(K, "loglinear")
    x0 = torch.randint(K, (4, 50), generator=torch.Generator().manual_seed(0))
    assert torch.equal(process.corrupt(x0, 0.0), x0)
    uniform = UniformProcess(K)
    assert torch.equal(uniform.corrupt(x0, 0.0), x0)


# ------------------------------------------------------------------------------------------------ posterior


@pytest.mark.parametrize("name,schedule", PROCESSES)
@pytest.mark.parametrize("s,t", [(0.0, 0.3), (0.2, 0.5), (0.6, 0.61), (0.5, 1.0)])
def test_posterior_is_bayes_rule(name: str, schedule: str, s: float, t: float) -> None:
    """q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0) for one-hot x0, every x0 and every x_t."""
    process = make_process(name, K, schedule)
    states = process.num_states
    q_ts = _transition(process, s, t)
    x0 = torch.arange(K).repeat_interleave(states)
    x_t = torch.arange(states).repeat(K)
    post = process.posterior(x_t[:, None], torch.nn.functional.one_hot(x0, K).to(F64)[:, None], s, t)[:, 0]
    for row in range(len(x0)):
        j, i = int(x0[row]), int(x_t[row])
        q_t = _marginal(process, j, t)[i]
        if q_t == 0:
            continue  # x_t impossible given x0 (a clean token other than x0 under absorbing)
        bayes = q_ts[:, i] * _marginal(process, j, s) / q_t
        torch.testing.assert_close(post[row], bayes, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,schedule", PROCESSES)
def test_posterior_with_x0_distribution_is_d3pm_eq4(name: str, schedule: str) -> None:
    """With x0 ~ x0_probs: p(x_s | x_t) proportional to sum_x0 q(x_s, x_t | x0) x0_probs(x0) (D3PM eq. 4)."""
    process = make_process(name, K, schedule)
    states = process.num_states
    s, t = 0.25, 0.7
    x0_probs = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=F64)
    q_ts = _transition(process, s, t)
    x_t = torch.arange(states)
    post = process.posterior(x_t[:, None], x0_probs.expand(states, 1, K), s, t)[:, 0]
    for i in range(states):
        joint = sum(x0_probs[j] * q_ts[:, i] * _marginal(process, j, s) for j in range(K))
        torch.testing.assert_close(post[i], joint / joint.sum(), rtol=0, atol=1e-12)


def test_absorbing_posterior_is_subs() -> None:
    """MDLM's SUBS: an unmasked token is carried over; a MASK unmasks with probability (a_s - a_t) / (1 - a_t)."""
    process = AbsorbingProcess(K, "loglinear")
    s, t = 0.3, 0.8
    x0_probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64).expand(1, K + 1, K)
    post = process.posterior(torch.arange(K + 1)[None], x0_probs, s, t)[0]
    torch.testing.assert_close(post[:K], torch.eye(K, K + 1, dtype=F64))
    a_s, a_t = 1 - 0.999 * s, 1 - 0.999 * t
    expected = torch.cat([(a_s - a_t) / (1 - a_t) * x0_probs[0, 0], torch.tensor([(1 - a_s) / (1 - a_t)], dtype=F64)])
    torch.testing.assert_close(post[K], expected, rtol=0, atol=1e-14)
    assert process.posterior(torch.tensor([[K]]), x0_probs[:, :1], 0.0, t)[0, 0, K].item() == 0.0


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_ancestral_step_draws_from_the_posterior(name: str) -> None:
    process = make_process(name, K, "cosine")
    states, n, s, t = process.num_states, 20000, 0.35, 0.6
    x0_probs = torch.tensor([0.45, 0.3, 0.15, 0.1], dtype=F64)
    x_t = torch.arange(states).repeat_interleave(n)[None]
    u = torch.rand(1, states * n, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    x_s = process.ancestral_step(x_t, x0_probs.expand(1, states * n, K), s, t, u)
    post = process.posterior(torch.arange(states)[None], x0_probs.expand(1, states, K), s, t)[0]
    for i in range(states):
        counts = torch.bincount(x_s[0, i * n : (i + 1) * n], minlength=states)
        assert _chi2_pvalue(counts, post[i]) > 1e-3, (i, counts.tolist(), (post[i] * n).tolist())


def test_ancestral_step_to_zero_leaves_no_mask() -> None:
    process = AbsorbingProcess(K, "cosine")
    x_t = torch.full((2, 100), K)
    u = torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    x_s = process.ancestral_step(x_t, torch.full((2, 100, K), 1.0 / K), 0.0, 1e-4, u)
    assert int((x_s == K).sum()) == 0


# ------------------------------------------------------------------------------------------------ prior


def test_prior_and_prior_kl() -> None:
    absorbing = AbsorbingProcess(K, "loglinear")
    assert torch.equal(absorbing.prior((2, 5)), torch.full((2, 5), K))
    uniform = UniformProcess(K, "loglinear")
    draws = uniform.prior((1, 40000), generator=torch.Generator().manual_seed(3))
    assert _chi2_pvalue(torch.bincount(draws[0], minlength=K), torch.full((K,), 1.0 / K)) > 1e-3
    for process in (absorbing, uniform):
        p1 = process.prior_probs(F64)
        assert p1.sum().item() == pytest.approx(1.0, abs=1e-15)
        for j in range(K):
            q1 = _marginal(process, j, 1.0)
            kl = (torch.xlogy(q1, q1) - torch.xlogy(q1, p1)).sum().item()
            assert process.prior_kl() == pytest.approx(kl, rel=1e-9, abs=1e-15)
    assert absorbing.prior_kl() == pytest.approx(1e-3 * math.log(K), rel=1e-12)


def test_process_attributes() -> None:
    absorbing, uniform = AbsorbingProcess(27), UniformProcess(27, "cosine")
    assert (absorbing.num_classes, absorbing.num_states, absorbing.mask_id) == (27, 28, 27)
    assert (uniform.num_classes, uniform.num_states, uniform.mask_id) == (27, 27, None)
    assert isinstance(uniform.schedule, CosineSchedule) and isinstance(absorbing.schedule, LogLinearSchedule)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_error() -> None:
    process = AbsorbingProcess(K)
    x0 = torch.zeros(2, 3, dtype=torch.long)
    probs = torch.full((2, 3, K), 0.25)
    for t in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"t=.* must lie in \[0, 1\]"):
            process.corrupt(x0, t)
    with pytest.raises(ValueError, match=r"x0 holds token id 4; expected ids 0\.\.3\."):
        process.marginal(torch.tensor([[0, 4]]), 0.5)
    with pytest.raises(ValueError, match=r"x_t holds token id 5; expected ids 0\.\.3 or the MASK id 4"):
        process.posterior(torch.tensor([[0, 5, 1]]).expand(2, 3), probs, 0.2, 0.5)
    with pytest.raises(ValueError, match=r"x0 holds token id -1"):
        UniformProcess(K).corrupt(torch.tensor([[-1]]), 0.5)
    with pytest.raises(ValueError, match=r"x_t holds token id 4; expected ids 0\.\.3\."):
        UniformProcess(K).posterior(torch.tensor([[4, 0, 0]]).expand(2, 3), probs, 0.2, 0.5)
    with pytest.raises(ValueError, match=r"s=0\.5 must be smaller than t=0\.5"):
        process.posterior(x0, probs, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"s=0\.7.* must be smaller than t=0\.5"):
        process.posterior(x0, probs, torch.tensor([0.1, 0.7]), 0.5)
    with pytest.raises(ValueError, match="integer tensor of token ids"):
        process.corrupt(x0.float(), 0.5)
    with pytest.raises(ValueError, match=r"x0_probs has shape \(2, 3, 5\); expected \(2, 3, 4\)"):
        process.posterior(x0, torch.full((2, 3, 5), 0.2), 0.2, 0.5)
    with pytest.raises(ValueError, match=r"t has shape \(3,\); expected a scalar or one time per sample, \(2,\)"):
        process.corrupt(x0, torch.rand(3))
    with pytest.raises(ValueError, match=r"schedule='linear' is not a discrete schedule"):
        AbsorbingProcess(K, "linear")
    with pytest.raises(ValueError, match=r"num_classes=1 must be an integer >= 2"):
        UniformProcess(1)
    with pytest.raises(ValueError, match=r"eps=0\.0 must lie in \(0, 1\)"):
        LogLinearSchedule(0.0)
    with pytest.raises(ValueError, match=r"process='gaussian' is not a discrete process"):
        make_process("gaussian", K)
