"""Likelihoods against exact answers: the exact denoiser of Gaussian data, whose log-density is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffusionlab.denoisers import Prediction
from diffusionlab.evaluation import (
    LikelihoodOptions,
    bits_per_dim,
    ddpm_vlb,
    dequantize,
    discretized_gaussian_log_likelihood,
    ode_log_likelihood,
    probability_flow_velocity,
    quantize,
)
from diffusionlab.processes import GaussianProcess, broadcast_like, make_process
from diffusionlab.sampling import NoiseSource

pytestmark = pytest.mark.usefixtures("one_thread")


class GaussianDenoiser:
    """The exact denoiser of data x0 ~ N(mean, cov): E[x0 | x_t] = mean + a C (a^2 C + s^2 I)^-1 (x_t - a mean)."""

    def __init__(self, process: GaussianProcess, mean: Tensor, cov: Tensor) -> None:
        self.process, self.mean, self.cov = process, mean, cov

    def __call__(self, x: Tensor, t: Tensor | float, cond: object = None) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        a, s = self.process.alpha(t), self.process.sigma(t)
        eye = torch.eye(len(self.mean), dtype=x.dtype)
        gain = (
            a[:, None, None]
            * self.cov
            @ torch.linalg.inv(a[:, None, None] ** 2 * self.cov + s[:, None, None] ** 2 * eye)
        )
        x0 = self.mean + (gain @ (x - a[:, None] * self.mean)[..., None])[..., 0]
        ab, sb = broadcast_like(a, x), broadcast_like(s, x)
        return Prediction(x, x0, (x - ab * x0) / sb, ab, sb)


def marginal_log_prob(process: GaussianProcess, t: float, x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x; a mean, a^2 C + s^2 I): the exact log-density of the data's marginal at time t."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = process.alpha(tt).double(), process.sigma(tt).double()
    dist = torch.distributions.MultivariateNormal(a * mean, a * a * cov + s * s * torch.eye(len(mean), dtype=cov.dtype))
    return dist.log_prob(x)


def gaussian(dim: int, std_range: tuple[float, float], n: int, seed: int, full: bool = False):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    mean = (torch.rand(dim, generator=g, dtype=torch.float64) - 0.5) * 0.4
    std = std_range[0] + (std_range[1] - std_range[0]) * torch.rand(dim, generator=g, dtype=torch.float64)
    if full:
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        cov = q @ torch.diag(std**2) @ q.T
    else:
        cov = torch.diag(std**2)
    x = (
        torch.distributions.MultivariateNormal(mean, cov).sample((n,))
        if full
        else mean + std * torch.randn(n, dim, generator=g, dtype=torch.float64)
    )
    return mean, cov, x


@pytest.mark.parametrize("name, options", [("ddpm", {"schedule": "cosine"}), ("vp", {}), ("edm", {}), ("flow", {})])
def test_ode_nll_matches_the_analytic_nll(name: str, options: dict) -> None:
    process = make_process(name, **options)
    mean, cov, x = gaussian(6, (1.0, 2.0), 64, seed=0)
    res = ode_log_likelihood(GaussianDenoiser(process, mean, cov), x)  # diagonal Jacobian: Rademacher is exact
    exact = marginal_log_prob(process, process.t_min, x, mean, cov)
    nll, ref = -res.log_prob, -exact
    assert abs(nll.mean() / ref.mean() - 1) < 0.01
    assert ((nll - ref).abs() / ref.abs().mean()).max() < 0.01
    assert res.nfe > 10 and torch.allclose(res.log_prob, res.prior_log_prob + res.delta_log_prob)


def test_exact_and_gaussian_probes_on_a_full_covariance() -> None:
    process = make_process("vp")
    mean, cov, x = gaussian(4, (0.5, 1.5), 128, seed=1, full=True)
    den = GaussianDenoiser(process, mean, cov)
    exact_ref = marginal_log_prob(process, process.t_min, x, mean, cov)
    exact = ode_log_likelihood(den, x, probe="exact")
    assert (exact.log_prob - exact_ref).abs().max() < 0.01 * exact_ref.abs().mean()
    for probe in ("gaussian", "rademacher"):  # unbiased: the error averages out over samples
        est = ode_log_likelihood(den, x, probe=probe, seed=3)
        diff = est.log_prob - exact_ref
        assert diff.std() > 1e-3  # a non-diagonal Jacobian: single probes are noisy ...
        assert abs(diff.mean()) < 3 * diff.std() / math.sqrt(len(diff))  # ... but right on average


def test_velocity_is_the_probability_flow_drift() -> None:
    process = make_process("vp")
    mean, cov, x = gaussian(3, (0.5, 1.0), 5, seed=2)
    den = GaussianDenoiser(process, mean, cov)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    f, g2 = process.drift_coefficient(t)[:, None], process.diffusion_coefficient_sq(t)[:, None]
    expected = f * x - 0.5 * g2 * den(x, t).score  # Song et al. 2021, eq. 13
    assert torch.allclose(probability_flow_velocity(den, x, t), expected, atol=1e-10)


@pytest.fixture(scope="module")
def pixel_gaussian():  # type: ignore[no-untyped-def]
    """8-bit data in [-1, 1] drawn from a Gaussian, and that Gaussian's exact denoiser under DDPM's linear betas."""
    mean, cov, x = gaussian(8, (0.1, 0.4), 128, seed=4)
    process = make_process("ddpm", schedule="linear")
    return process, mean, cov, quantize(x.clamp(-1, 1))


def test_bits_per_dim_matches_the_analytic_value(pixel_gaussian) -> None:  # type: ignore[no-untyped-def]
    process, mean, cov, x = pixel_gaussian
    den = GaussianDenoiser(process, mean, cov)
    res = bits_per_dim(den, x, seed=5, batch_size=128)
    # the same dequantisation the function draws (per-sample streams of seed 5), scored by the true density
    u = torch.special.ndtr(NoiseSource(5, range(len(x)))(x.shape[1:], dtype=torch.float64))
    xd = dequantize(x, u)
    exact = -marginal_log_prob(process, process.t_min, xd, mean, cov) / (8 * math.log(2)) + 7.0
    assert ((res.bpd - exact).abs() / exact).max() < 0.01
    # and the result does not depend on the batch size (same per-sample draws; the solver's steps differ)
    other = bits_per_dim(den, x, seed=5, batch_size=50)
    assert (other.bpd - res.bpd).abs().max() < 5e-3 and (other.bpd - res.bpd).abs().mean() < 5e-4


def true_discrete_bpd(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """-log2 P(8-bit level) / D of data quantised from N(mean, std^2) (rounding bins, outer bins to infinity)."""
    return -discretized_gaussian_log_likelihood(x, mean.expand_as(x), std.expand_as(x)).sum(1) / (
        x.shape[1] * math.log(2)
    )


def test_vlb_upper_bounds_the_nll(pixel_gaussian) -> None:  # type: ignore[no-untyped-def]
    process, mean, cov, x = pixel_gaussian
    den = GaussianDenoiser(process, mean, cov)
    vlb = ddpm_vlb(den, x, seed=0)
    ode = bits_per_dim(den, x, seed=0, batch_size=128)
    truth = true_discrete_bpd(x, mean, cov.diagonal().sqrt())
    assert torch.allclose(vlb.bpd, vlb.prior + vlb.diffusion + vlb.decoder)
    assert vlb.prior.max() < 1e-3  # q(x_T | x_0) is almost N(0, I)
    assert vlb.bpd.mean() > ode.bpd.mean() > 0.99 * truth.mean()
    assert vlb.bpd.mean() > truth.mean()
    assert abs(ode.bpd.mean() / truth.mean() - 1) < 0.01
    assert vlb.bpd.mean() < 1.25 * truth.mean()  # a bound, and not a vacuous one


def test_vlb_needs_a_discrete_process() -> None:
    mean, cov, x = gaussian(2, (0.2, 0.3), 4, seed=0)
    with pytest.raises(ValueError, match="discrete-time process"):
        ddpm_vlb(GaussianDenoiser(make_process("vp"), mean, cov), x)


def test_discretised_gaussian_is_a_distribution_over_the_256_levels() -> None:
    levels = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1
    for m, s in [(0.0, 0.01), (0.3, 0.2), (-0.99, 0.05), (0.5, 3.0)]:
        log_p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, m), torch.full_like(levels, s))
        assert abs(log_p.exp().sum().item() - 1.0) < 1e-9


def test_quantize_and_dequantize() -> None:
    x = torch.rand(1000, dtype=torch.float64) * 2.2 - 1.1
    q = quantize(x)
    assert torch.equal(quantize(q), q) and q.min() >= -1 and q.max() <= 1
    k = torch.round((q + 1) * 127.5)
    assert torch.allclose(q, k / 127.5 - 1)
    u = torch.rand(1000, dtype=torch.float64)
    d = dequantize(q, u)
    assert ((d + 1) * 128 - k - u).abs().max() < 1e-9  # level k -> 2 (k + u) / 256 - 1


def test_bad_options_are_clear_errors() -> None:
    mean, cov, x = gaussian(2, (0.2, 0.3), 4, seed=0)
    den = GaussianDenoiser(make_process("vp"), mean, cov)
    with pytest.raises(ValueError, match="probe='hutch'"):
        ode_log_likelihood(den, x, probe="hutch")
    with pytest.raises(ValueError, match="t_min"):
        ode_log_likelihood(den, x, t_min=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        bits_per_dim(den, x, batch_size=0)


def test_options_by_object_or_by_name() -> None:
    mean, cov, x = gaussian(3, (0.5, 1.0), 6, seed=5, full=True)
    den = GaussianDenoiser(make_process("vp"), mean, cov)
    options = LikelihoodOptions(probe="gaussian", num_probes=2, rtol=1e-4, atol=1e-4, t_min=0.01)
    by_object = ode_log_likelihood(den, x, options=options, seed=1)
    by_name = ode_log_likelihood(den, x, probe="gaussian", num_probes=2, rtol=1e-4, atol=1e-4, t_min=0.01, seed=1)
    assert torch.equal(by_object.log_prob, by_name.log_prob) and by_object.nfe == by_name.nfe
    other = ode_log_likelihood(den, x, options=options.model_copy(update={"num_probes": 1}), seed=1)
    assert not torch.equal(other.log_prob, by_object.log_prob)  # the options are used, not the defaults
    with pytest.raises(ValueError, match="not both"):
        ode_log_likelihood(den, x, options=options, rtol=1e-3)
    for bad, match in [({"num_probes": 0}, "num_probes=0"), ({"num_probes": True}, "num_probes=True")]:
        with pytest.raises(ValueError, match=match):
            ode_log_likelihood(den, x, **bad)
    with pytest.raises(ValueError, match="atol"):
        bits_per_dim(den, x, atol=-1.0)
