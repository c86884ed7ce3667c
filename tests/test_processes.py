"""Processes: defining identities, DDPM's discrete schedule, derivatives, log-SNR inverses, marginals, SDEs."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlab.processes import (
    DiscreteVPProcess,
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    SubVPProcess,
    VEProcess,
    VPProcess,
    make_process,
)

F64 = torch.float64


def all_processes() -> list[GaussianProcess]:
    return [
        DiscreteVPProcess("linear"),
        DiscreteVPProcess("cosine"),
        DiscreteVPProcess("geometric"),
        VPProcess(),
        SubVPProcess(),
        VEProcess(),
        EDMProcess(),
        FlowProcess(),
    ]


PROCESSES = all_processes()
IDS = [repr(p) for p in PROCESSES]


def inner_times(p: GaussianProcess, n: int = 200) -> torch.Tensor:
    """Times strictly inside (t_min, t_max); for a discrete DDPM process, the middles of its intervals."""
    if isinstance(p, DiscreteVPProcess):
        k = torch.arange(p.num_steps, dtype=F64)
        return (k + 0.5) / p.num_steps
    return torch.linspace(p.t_min, p.t_max, n + 2, dtype=F64)[1:-1]


# --------------------------------------------------------------------------------------------------------
# defining identities
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_t0_is_data(p: GaussianProcess) -> None:
    assert float(p.alpha(0.0)) == pytest.approx(1.0, abs=1e-12)
    assert float(p.sigma(0.0)) == pytest.approx(0.0, abs=1e-12)
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(5, dtype=F64)
    assert torch.allclose(p.add_noise(x0, t, torch.randn(5, 3)), x0, atol=1e-7)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_defining_identity(p: GaussianProcess) -> None:
    t = torch.cat([inner_times(p), torch.tensor([p.t_min, p.t_max], dtype=F64)])
    a, s = p.alpha(t), p.sigma(t)
    assert a.dtype == F64 and s.dtype == F64
    assert bool((s > 0).all())
    if isinstance(p, SubVPProcess):
        torch.testing.assert_close(s, 1 - a**2, atol=1e-12, rtol=0)
        assert bool((s**2 + a**2 < 1).all())  # sub-VP's variance stays below VP's
    elif isinstance(p, (DiscreteVPProcess, VPProcess)):
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), atol=1e-12, rtol=0)
    elif isinstance(p, (VEProcess, EDMProcess)):
        torch.testing.assert_close(a, torch.ones_like(a), atol=0, rtol=0)
    elif isinstance(p, FlowProcess):
        torch.testing.assert_close(a + s, torch.ones_like(a), atol=1e-12, rtol=0)
    else:  # pragma: no cover - a new process needs its identity here
        raise AssertionError(f"no identity known for {p!r}")
    if isinstance(p, EDMProcess):
        torch.testing.assert_close(s, t, atol=0, rtol=0)
    if isinstance(p, VEProcess):
        expected = p.sigma_min * (p.sigma_max / p.sigma_min) ** t
        torch.testing.assert_close(s, expected, atol=0, rtol=1e-12)
    # the log-SNR decreases: more noise later
    lam = p.log_snr(inner_times(p))
    assert bool((lam[1:] < lam[:-1]).all())


def test_float32_times_give_float32_coefficients() -> None:
    for p in PROCESSES:
        t = torch.tensor([0.25, 0.5], dtype=torch.float32) * (p.t_max if isinstance(p, EDMProcess) else 1.0)
        assert p.alpha(t).dtype == torch.float32, p
        assert p.sigma(t).dtype == torch.float32, p


# --------------------------------------------------------------------------------------------------------
# DDPM's discrete schedules
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "geometric"])
def test_discrete_alpha_bar_on_the_grid(schedule: str) -> None:
    p = DiscreteVPProcess(schedule)
    T = p.num_steps
    t = (torch.arange(T, dtype=F64) + 1) / T
    alpha_bar = torch.cumprod(1 - p.betas, 0)
    torch.testing.assert_close(p.alpha(t) ** 2, alpha_bar, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(p.alphas_cumprod, alpha_bar, atol=1e-14, rtol=1e-12)
    # between knots log alpha^2 is linear in t
    mid = (torch.arange(T, dtype=F64) + 0.5) / T
    knots = torch.cat([torch.ones(1, dtype=F64), alpha_bar])
    torch.testing.assert_close(p.alpha(mid) ** 2, torch.sqrt(knots[:-1] * knots[1:]), atol=1e-14, rtol=1e-10)
    # the integer step index k = t T - 1
    torch.testing.assert_close(p.timestep(t), torch.arange(T, dtype=F64), atol=1e-9, rtol=0)


def test_discrete_betas_by_hand() -> None:
    lin = DiscreteVPProcess("linear").betas
    assert float(lin[0]) == pytest.approx(1e-4) and float(lin[-1]) == pytest.approx(2e-2)
    # the linear schedule scales with T so the endpoints' SNR is kept
    lin100 = DiscreteVPProcess("linear", num_steps=100).betas
    assert float(lin100[0]) == pytest.approx(1e-3) and float(lin100[-1]) == pytest.approx(0.2)
    cos = DiscreteVPProcess("cosine", num_steps=10).betas

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [min(1 - f((i + 1) / 10) / f(i / 10), 0.999) for i in range(10)]
    torch.testing.assert_close(cos, torch.tensor(expected, dtype=F64), atol=1e-14, rtol=0)
    geo = DiscreteVPProcess("geometric", num_steps=5, beta=0.1).betas
    torch.testing.assert_close(geo, torch.tensor([0.1 * 0.9**4, 0.1 * 0.9**3, 0.1 * 0.81, 0.09, 0.1], dtype=F64))


@pytest.mark.parametrize(("schedule", "diffusers_name"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_discrete_matches_diffusers(schedule: str, diffusers_name: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    p = DiscreteVPProcess(schedule)
    t = (torch.arange(1000, dtype=F64) + 1) / 1000
    torch.testing.assert_close(p.alpha(t) ** 2, ref.alphas_cumprod.to(F64), atol=1e-6, rtol=0)
    torch.testing.assert_close(p.betas, ref.betas.to(F64), atol=1e-6, rtol=0)


def test_discrete_posterior_is_ddpm_beta_tilde() -> None:
    """q(x_{k-1} | x_k, x0) of Ho et al. 2020 eq. 6-7, on the discrete grid."""
    p = DiscreteVPProcess("linear")
    T = p.num_steps
    betas, ab = p.betas, torch.cumprod(1 - p.betas, 0)
    k = torch.tensor([1, 10, 500, 999])
    t, s = (k + 1).to(F64) / T, k.to(F64) / T
    coef_xt, coef_x0, var = p.posterior(t, s)
    ab_prev = ab[k - 1]
    torch.testing.assert_close(var, betas[k] * (1 - ab_prev) / (1 - ab[k]), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(coef_x0, torch.sqrt(ab_prev) * betas[k] / (1 - ab[k]), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(coef_xt, torch.sqrt(1 - betas[k]) * (1 - ab_prev) / (1 - ab[k]), atol=1e-12, rtol=1e-9)


# --------------------------------------------------------------------------------------------------------
# derivatives, log-SNR inverse, config round trip
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_derivatives_match_finite_differences(p: GaussianProcess) -> None:
    t = inner_times(p)
    h = 1e-7 if isinstance(p, DiscreteVPProcess) else 1e-6 * p.t_max
    fd_alpha = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    fd_sigma = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    da, ds = p.d_alpha(t), p.d_sigma(t)
    torch.testing.assert_close(da, fd_alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ds, fd_sigma, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_t_from_log_snr_inverts_log_snr(p: GaussianProcess) -> None:
    t = inner_times(p)
    t = t[t >= 0.01 * p.t_max]  # sub-VP's inverse loses digits near t = 0 (1 - alpha^2 cancels)
    lam = p.log_snr(t)
    torch.testing.assert_close(p.t_from_log_snr(lam), t, atol=1e-6 * p.t_max, rtol=0)
    if isinstance(p, DiscreteVPProcess):  # also exactly on the knots
        knots = (torch.arange(p.num_steps, dtype=F64) + 1) / p.num_steps
        torch.testing.assert_close(p.t_from_log_snr(p.log_snr(knots)), knots, atol=1e-9, rtol=0)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_config_round_trip(p: GaussianProcess) -> None:
    q = make_process(**p.config())
    assert type(q) is type(p) and q.config() == p.config()
    t = inner_times(p)
    assert torch.equal(q.alpha(t), p.alpha(t)) and torch.equal(q.sigma(t), p.sigma(t))


# --------------------------------------------------------------------------------------------------------
# forward marginals, SDE coefficients, posterior
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_add_noise_marginal(p: GaussianProcess) -> None:
    n = 20000
    gen = torch.Generator().manual_seed(1)
    x0 = torch.tensor([1.5, -0.5, 0.0], dtype=F64)
    t0 = 0.3 * p.t_max if not isinstance(p, EDMProcess) else 2.0
    t = torch.full((n,), t0, dtype=F64)
    eps = torch.randn(n, 3, generator=gen, dtype=F64)
    x = p.add_noise(x0.expand(n, 3), t, eps)
    a, s = float(p.alpha(t0)), float(p.sigma(t0))
    assert 0 < s
    se = s / math.sqrt(n)
    torch.testing.assert_close(x.mean(0), a * x0, atol=5 * se, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((3,), s, dtype=F64), atol=0, rtol=0.03)
    # per-sample times broadcast: sample i is noised at its own time
    ts = torch.linspace(0.1, 0.9, 4, dtype=F64) * p.t_max
    x4 = p.add_noise(torch.ones(4, 2), ts, torch.ones(4, 2))
    expected = (p.alpha(ts) + p.sigma(ts)).float()[:, None].expand(4, 2)
    torch.testing.assert_close(x4, expected)


def test_vp_sde_coefficients() -> None:
    p = VPProcess()
    t = inner_times(p)
    beta = 0.1 + t * (20.0 - 0.1)
    torch.testing.assert_close(p.drift_coefficient(t), -beta / 2, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(p.diffusion_coefficient_sq(t), beta, atol=1e-10, rtol=1e-10)


def test_subvp_sde_coefficients() -> None:
    p = SubVPProcess()
    t = inner_times(p)
    beta = 0.1 + t * (20.0 - 0.1)
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    torch.testing.assert_close(p.drift_coefficient(t), -beta / 2, atol=1e-10, rtol=1e-10)
    expected = beta * (1 - torch.exp(-2 * integral))
    torch.testing.assert_close(p.diffusion_coefficient_sq(t), expected, atol=1e-10, rtol=1e-10)


def test_ve_sde_coefficients() -> None:
    p = VEProcess()
    t = inner_times(p)
    h = 1e-6
    fd = (p.sigma(t + h) ** 2 - p.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(p.drift_coefficient(t), torch.zeros_like(t))
    torch.testing.assert_close(p.diffusion_coefficient_sq(t), fd, rtol=1e-6, atol=1e-8)
    # closed form: g^2 = 2 sigma^2 log(sigma_max / sigma_min)
    torch.testing.assert_close(p.diffusion_coefficient_sq(t), 2 * p.sigma(t) ** 2 * math.log(5000.0))


def test_discrete_vp_sde_coefficients() -> None:
    p = DiscreteVPProcess("cosine")
    k = torch.arange(p.num_steps)
    t = (k.to(F64) + 0.5) / p.num_steps
    beta_t = -torch.log1p(-p.betas) * p.num_steps  # piecewise-constant beta(t)
    torch.testing.assert_close(p.drift_coefficient(t), -beta_t / 2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.diffusion_coefficient_sq(t), beta_t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_sde_coefficients_by_finite_differences(p: GaussianProcess) -> None:
    """Fokker-Planck for the marginal variance: d sigma^2/dt = 2 f sigma^2 + g^2, f = d log alpha / dt."""
    t = inner_times(p, 50)
    h = 1e-7 if isinstance(p, DiscreteVPProcess) else 1e-6 * p.t_max
    fd_var = (p.sigma(t + h) ** 2 - p.sigma(t - h) ** 2) / (2 * h)
    fd_f = (torch.log(p.alpha(t + h)) - torch.log(p.alpha(t - h))) / (2 * h)
    torch.testing.assert_close(p.drift_coefficient(t), fd_f, rtol=1e-5, atol=1e-6)
    g2 = p.diffusion_coefficient_sq(t)
    torch.testing.assert_close(g2, fd_var - 2 * fd_f * p.sigma(t) ** 2, rtol=1e-5, atol=1e-5)
    assert bool((g2 > 0).all())


def time_pairs(p: GaussianProcess) -> list[tuple[float, float]]:
    m = p.t_max
    return [(0.9 * m, 0.5 * m), (0.5 * m, 0.49 * m), (0.3 * m, 0.05 * m), (0.2 * m, 0.0)]


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_posterior_is_gaussian_conditioning(p: GaussianProcess) -> None:
    """q(x_s | x_t, x0) from the joint of (x_s, x_t) given x0, written independently of posterior()."""
    for t, s in time_pairs(p):
        coef_xt, coef_x0, var = (float(c) for c in p.posterior(torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64)))
        a_t, s_t, a_s, s_s = (float(v) for v in (p.alpha(t), p.sigma(t), p.alpha(s), p.sigma(s)))
        cov = (a_t / a_s) * s_s**2  # Cov(x_s, x_t | x0)
        assert coef_xt == pytest.approx(cov / s_t**2, rel=1e-9, abs=1e-12)
        assert coef_x0 == pytest.approx(a_s - cov / s_t**2 * a_t, rel=1e-9, abs=1e-12)
        assert var == pytest.approx(s_s**2 - cov**2 / s_t**2, rel=1e-8, abs=1e-12)
        # integrating x_t out gives back the marginal q(x_s | x0)
        assert coef_xt * a_t + coef_x0 == pytest.approx(a_s, rel=1e-9)
        assert coef_xt**2 * s_t**2 + var == pytest.approx(s_s**2, rel=1e-9, abs=1e-14)


def test_posterior_monte_carlo() -> None:
    """Draw x_t ~ q(x_t | x0), then x_s ~ q(x_s | x_t, x0): x_s has the marginal N(alpha_s x0, sigma_s^2)."""
    gen = torch.Generator().manual_seed(3)
    n, x0 = 20000, 0.8
    for p in (DiscreteVPProcess("cosine"), VEProcess(), FlowProcess()):
        t, s = torch.tensor(0.5, dtype=F64), torch.tensor(0.4, dtype=F64)
        x_t = p.add_noise(torch.full((n, 1), x0, dtype=F64), t, torch.randn(n, 1, generator=gen, dtype=F64))
        coef_xt, coef_x0, var = p.posterior(t, s)
        x_s = coef_xt * x_t + coef_x0 * x0 + torch.sqrt(var) * torch.randn(n, 1, generator=gen, dtype=F64)
        a_s, s_s = float(p.alpha(s)), float(p.sigma(s))
        assert float(x_s.mean()) == pytest.approx(a_s * x0, abs=5 * s_s / math.sqrt(n))
        assert float(x_s.std()) == pytest.approx(s_s, rel=0.03)
        # and the pair (x_s, x_t) has the forward-chain correlation alpha_{t|s} sigma_s^2
        cov = float(((x_s - x_s.mean()) * (x_t - x_t.mean())).mean())
        s_t = float(p.sigma(t))
        assert cov == pytest.approx(float(p.alpha(t) / p.alpha(s)) * s_s**2, abs=5 * s_s * s_t / math.sqrt(n))


# --------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------


def test_make_process_unknown_name() -> None:
    with pytest.raises(ValueError, match="'ddpmm'"):
        make_process("ddpmm")


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("vp", {"sigma_max": 3.0}, "sigma_max"),
        ("edm", {"beta_min": 0.1}, "beta_min"),
        ("ddpm", {"schedule": "quadratic"}, "quadratic"),
        ("ddpm", {"num_steps": 0}, "num_steps=0"),
        ("ddpm", {"schedule": "linear", "num_steps": 10}, "linear"),  # betas beyond 1
        ("vp", {"beta_min": 5.0, "beta_max": 1.0}, "beta_min=5.0"),
        ("ve", {"sigma_min": 0.0}, "sigma_min=0.0"),
        ("edm", {"sigma_min": 100.0}, "sigma_min=100.0"),
    ],
)
def test_make_process_bad_options(name: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        make_process(name, **kwargs)
