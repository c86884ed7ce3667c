"""Losses: training-time sampling, weightings, DDPM's VLB terms, and a small end-to-end training run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from diffusionlab.data import eight_gaussians_params, sample_eight_gaussians
from diffusionlab.denoisers import Denoiser
from diffusionlab.losses import ddpm_vlb_term, denoising_loss, gaussian_kl, sample_times, x0_weight
from diffusionlab.networks import MLP
from diffusionlab.processes import (
    DiscreteVPProcess,
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    VEProcess,
    VPProcess,
    broadcast_like,
)
from diffusionlab.sampling import sample

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------
# training times
# --------------------------------------------------------------------------------------------------------


def test_uniform_times_on_the_discrete_grid() -> None:
    p = DiscreteVPProcess("cosine", num_steps=10)
    n = 20000
    t = sample_times(p, n, "uniform", generator=torch.Generator().manual_seed(0))
    assert t.shape == (n,) and t.dtype == F64
    k = t * 10 - 1
    assert torch.equal(k, k.round())
    counts = torch.bincount(k.round().long(), minlength=10)
    assert counts.shape == (10,)
    # each of the 10 knots, t = 0.1 .. 1.0, is drawn n/10 = 2000 times (std 42)
    assert int(counts.min()) > 1800 and int(counts.max()) < 2200
    assert float(t.min()) == pytest.approx(0.1) and float(t.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("p", [VPProcess(), VEProcess(), EDMProcess(), FlowProcess()], ids=lambda p: p.name)
def test_uniform_times_continuous(p: GaussianProcess) -> None:
    n = 20000
    t = sample_times(p, n, "uniform", generator=torch.Generator().manual_seed(1))
    assert float(t.min()) >= p.t_min and float(t.max()) <= p.t_max
    width = p.t_max - p.t_min
    assert float(t.mean()) == pytest.approx(p.t_min + width / 2, abs=5 * width / math.sqrt(12 * n))
    assert float(t.std()) == pytest.approx(width / math.sqrt(12), rel=0.03)
    # the same generator seed gives the same times
    again = sample_times(p, n, "uniform", generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, again)


@pytest.mark.parametrize(
    "p", [EDMProcess(), VPProcess(), DiscreteVPProcess("cosine"), VEProcess(), FlowProcess()], ids=lambda p: p.name
)
def test_lognormal_times(p: GaussianProcess) -> None:
    """ln(sigma / alpha) ~ N(p_mean, p_std^2) whatever the process (EDM's training noise distribution)."""
    n, p_mean, p_std = 20000, -1.2, 1.2
    t = sample_times(p, n, "lognormal", generator=torch.Generator().manual_seed(2), p_mean=p_mean, p_std=p_std)
    assert float(t.min()) >= p.t_min and float(t.max()) <= p.t_max
    log_ve = torch.log(p.ve_sigma(t))
    q25, q50, q75 = (float(v) for v in torch.quantile(log_ve, torch.tensor([0.25, 0.5, 0.75], dtype=F64)))
    assert q50 == pytest.approx(p_mean, abs=0.05)  # standard error of the median: 0.011
    assert (q75 - q25) / 1.349 == pytest.approx(p_std, rel=0.04)
    if isinstance(p, EDMProcess):  # t is sigma: median exp(p_mean)
        assert float(t.median()) == pytest.approx(math.exp(p_mean), rel=0.05)


def test_unknown_time_sampling() -> None:
    with pytest.raises(ValueError, match="'logit'"):
        sample_times(VPProcess(), 4, "logit")


# --------------------------------------------------------------------------------------------------------
# weightings
# --------------------------------------------------------------------------------------------------------


def batch(p: GaussianProcess, n: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(n, 2, generator=gen)
    eps = torch.randn(n, 2, generator=gen)
    lo, hi = (0.05, 5.0) if isinstance(p, EDMProcess) else (0.02, 0.98)
    t = torch.linspace(lo, hi, n, dtype=F64)
    return x0, eps, t


def random_denoiser(p: GaussianProcess, param: str) -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(MLP(2, 32, 1), p, param)


def x0_error(den: Denoiser, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Per-sample mean squared error of the denoiser's x0 estimate."""
    with torch.no_grad():
        pred = den(den.process.add_noise(x0, t, eps), t)
    return ((pred.x0 - x0) ** 2).mean(1)


PARAM_CASES = [
    (DiscreteVPProcess("cosine"), "eps"),
    (DiscreteVPProcess("cosine"), "v"),
    (VPProcess(), "x0"),
    (EDMProcess(), "edm"),
    (FlowProcess(), "velocity"),
]
PARAM_IDS = [f"{p.name}-{param}" for p, param in PARAM_CASES]


@pytest.mark.parametrize(("p", "param"), PARAM_CASES, ids=PARAM_IDS)
def test_min_snr_weighting_on_the_x0_error(p: GaussianProcess, param: str) -> None:
    den = random_denoiser(p, param)
    x0, eps, t = batch(p)
    gamma = 5.0
    with torch.no_grad():
        loss = denoising_loss(den, x0, weighting="min_snr", min_snr_gamma=gamma, t=t, eps=eps)
    snr = (p.alpha(t) / p.sigma(t)) ** 2
    assert float(snr.min()) < gamma < float(snr.max())  # both branches of the min are used
    expected = (torch.minimum(snr, torch.full_like(snr, gamma)) * x0_error(den, x0, eps, t)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize(("p", "param"), PARAM_CASES, ids=PARAM_IDS)
def test_edm_weighting_on_the_x0_error(p: GaussianProcess, param: str) -> None:
    den = random_denoiser(p, param)
    x0, eps, t = batch(p)
    with torch.no_grad():
        loss = denoising_loss(den, x0, weighting="edm", t=t, eps=eps)
    ve = p.sigma(t) / p.alpha(t)
    lam = (ve**2 + 0.25) / (ve * 0.5) ** 2  # Karras et al. table 1, sigma_data = 0.5
    expected = (lam * x0_error(den, x0, eps, t)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize(("p", "param"), PARAM_CASES, ids=PARAM_IDS)
def test_uniform_weighting_is_plain_mse_of_the_target(p: GaussianProcess, param: str) -> None:
    den = random_denoiser(p, param)
    x0, eps, t = batch(p)
    with torch.no_grad():
        loss = denoising_loss(den, x0, t=t, eps=eps)
        out, _ = den.forward_raw(p.add_noise(x0, t, eps), t)
    target = den.target(x0, eps, t)
    assert float(loss) == pytest.approx(float(((out - target) ** 2).mean()), rel=1e-5)
    if param == "eps":  # DDPM's L_simple
        assert float(loss) == pytest.approx(float(((out - eps) ** 2).mean()), rel=1e-5)
    # and equal to the x0 error weighted by target_weight
    w = den.target_weight(t, x0).flatten()
    assert float(loss) == pytest.approx(float((w * x0_error(den, x0, eps, t)).mean()), rel=1e-4)


def test_x0_weight_values_and_errors() -> None:
    p = DiscreteVPProcess("cosine")
    den = random_denoiser(p, "eps")
    t = torch.tensor([0.1, 0.5, 0.95], dtype=F64)
    like = torch.zeros(3, 2)
    snr = ((p.alpha(t) / p.sigma(t)) ** 2).float()[:, None]
    torch.testing.assert_close(x0_weight(p, t, "uniform", den, like), snr)
    torch.testing.assert_close(x0_weight(p, t, "min_snr", den, like, gamma=2.0), snr.clamp(max=2.0))
    with pytest.raises(ValueError, match="'p2'"):
        x0_weight(p, t, "p2", den, like)
    with pytest.raises(ValueError, match="'p2'"):
        denoising_loss(den, like, weighting="p2")


def test_loss_draws_are_reproducible() -> None:
    den = random_denoiser(VPProcess(), "eps")
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = denoising_loss(den, x0, generator=torch.Generator().manual_seed(5))
        b = denoising_loss(den, x0, generator=torch.Generator().manual_seed(5))
        c = denoising_loss(den, x0, generator=torch.Generator().manual_seed(6))
    assert float(a) == float(b) and float(a) != float(c)


# --------------------------------------------------------------------------------------------------------
# KL terms
# --------------------------------------------------------------------------------------------------------


def test_gaussian_kl_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=gen, dtype=F64), torch.randn(50, generator=gen, dtype=F64)
    lv1, lv2 = torch.randn(50, generator=gen, dtype=F64), torch.randn(50, generator=gen, dtype=F64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    torch.testing.assert_close(gaussian_kl(m1, lv1, m2, lv2), expected)
    torch.testing.assert_close(gaussian_kl(m1, lv1, m1, lv1), torch.zeros(50, dtype=F64), atol=1e-15, rtol=0)


def test_ddpm_vlb_term() -> None:
    p = DiscreteVPProcess("linear")
    T = p.num_steps
    gen = torch.Generator().manual_seed(1)
    k = torch.tensor([1, 50, 400, 900])
    t, s = (k + 1).to(F64) / T, k.to(F64) / T
    x0 = torch.randn(4, 3, generator=gen, dtype=F64)
    x_t = p.add_noise(x0, t, torch.randn(4, 3, generator=gen, dtype=F64))
    # perfect x0: zero
    torch.testing.assert_close(ddpm_vlb_term(p, x0, x_t, t, s, x0), torch.zeros(4, dtype=F64), atol=1e-12, rtol=0)
    x0_hat = x0 + 0.1 * torch.randn(4, 3, generator=gen, dtype=F64)
    kl = ddpm_vlb_term(p, x0, x_t, t, s, x0_hat)
    assert bool((kl > 0).all())
    # by hand with Ho et al.'s eq. 7: equal variances, so KL = (mean gap)^2 / (2 beta_tilde)
    betas, ab = p.betas, torch.cumprod(1 - p.betas, 0)
    beta_tilde = (betas[k] * (1 - ab[k - 1]) / (1 - ab[k]))[:, None]
    coef_x0 = (torch.sqrt(ab[k - 1]) * betas[k] / (1 - ab[k]))[:, None]
    by_hand = (coef_x0**2 * (x0 - x0_hat) ** 2 / (2 * beta_tilde)).mean(1) / math.log(2)
    torch.testing.assert_close(kl, by_hand, rtol=1e-8, atol=1e-12)
    # improved DDPM's interpolated variance: v = 0 is the posterior variance, v = 1 is beta
    torch.testing.assert_close(ddpm_vlb_term(p, x0, x_t, t, s, x0_hat, torch.zeros(4, 3, dtype=F64)), kl)
    kl_beta = ddpm_vlb_term(p, x0, x_t, t, s, x0_hat, torch.ones(4, 3, dtype=F64))
    v1, v2 = beta_tilde, betas[k][:, None]
    full = 0.5 * (torch.log(v2 / v1) + v1 / v2 + coef_x0**2 * (x0 - x0_hat) ** 2 / v2 - 1)
    torch.testing.assert_close(kl_beta, full.mean(1) / math.log(2), rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# training end to end on a 2-D toy
# --------------------------------------------------------------------------------------------------------


def exact_x0(p: GaussianProcess, x: Tensor, t: Tensor) -> Tensor:
    """E[x0 | x_t] for the eight-Gaussians mixture, in closed form."""
    gm = eight_gaussians_params()
    mu, v = gm.means.double(), gm.std**2
    a = broadcast_like(p.alpha(t), x).double()[:, :, None]
    s = broadcast_like(p.sigma(t), x).double()[:, :, None]
    xd = x.double()[:, None, :]
    var = a * a * v + s * s  # (n, 1, 1)
    logw = -((xd - a * mu[None]) ** 2).sum(-1) / (2 * var[..., 0])
    post = mu[None] + (a * v / var) * (xd - a * mu[None])
    return (torch.softmax(logw, 1)[..., None] * post).sum(1)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: int = 128) -> float:
    d = torch.randn(a.shape[1], directions, generator=torch.Generator().manual_seed(0), dtype=F64)
    d = d / d.norm(dim=0)
    pa, pb = (a.double() @ d).sort(0).values, (b.double() @ d).sort(0).values
    return float((pa - pb).abs().mean())


def rbf_mmd(a: Tensor, b: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0)) -> float:
    a, b = a.double(), b.double()

    def k(x: Tensor, y: Tensor) -> Tensor:
        d2 = torch.cdist(x, y) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def train(param: str, steps: int = 400, seed: int = 0) -> dict:
    """Train a small MLP on eight Gaussians; report its held-out loss before and after, and the Bayes loss."""
    torch.manual_seed(seed)
    p = DiscreteVPProcess("cosine")
    den = Denoiser(MLP(2, width=128, depth=3), p, param)
    held = torch.Generator().manual_seed(77)
    hx = sample_eight_gaussians(4096, held)
    ht = sample_times(p, 4096, generator=held)
    he = torch.randn(4096, 2, generator=held)
    bayes = float((den.target_weight(ht, hx) * (exact_x0(p, p.add_noise(hx, ht, he), ht) - hx) ** 2).mean())
    with torch.no_grad():
        untrained = sample(den, (2,), num_samples=2000, sampler="ddim", steps=50, seed=5)
        before = float(denoising_loss(den, hx, t=ht, eps=he))
    gen = torch.Generator().manual_seed(seed + 10)
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        loss = denoising_loss(den, sample_eight_gaussians(256, gen), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = float(denoising_loss(den, hx, t=ht, eps=he))
    return {"den": den, "losses": losses, "before": before, "after": after, "bayes": bayes, "untrained": untrained}


@pytest.fixture(scope="module")
def v_model() -> dict:
    return train("v")


@pytest.fixture(scope="module")
def eps_model() -> dict:
    return train("eps")


@pytest.mark.parametrize("name", ["v_model", "eps_model"])
def test_training_loss_goes_down(name: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(name)
    losses = run["losses"]
    first, last = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    assert last < 0.9 * first
    # what can be learnt is the excess over the Bayes-optimal loss (the exact posterior mean): most of it is
    assert run["before"] > run["bayes"] and run["after"] > run["bayes"] - 0.01
    assert (run["after"] - run["bayes"]) < 0.3 * (run["before"] - run["bayes"])
    if name == "eps_model":  # the brief's criterion, met by eps's L_simple
        assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50


def test_trained_denoiser_approaches_the_posterior_mean(eps_model: dict) -> None:
    den, p = eps_model["den"], eps_model["den"].process
    gen = torch.Generator().manual_seed(9)
    x0 = sample_eight_gaussians(2000, gen)
    t = torch.full((2000,), 0.45, dtype=F64)
    x_t = p.add_noise(x0, t, torch.randn(2000, 2, generator=gen))
    with torch.no_grad():
        pred = den(x_t, t)
    exact = exact_x0(p, x_t, t)
    posterior_var = float(((exact - x0) ** 2).mean())
    assert float(((pred.x0 - exact) ** 2).mean()) < 0.1 * posterior_var


def test_trained_samples_match_the_data(v_model: dict) -> None:
    den = v_model["den"]
    with torch.no_grad():
        samples = sample(den, (2,), num_samples=2000, sampler="ddim", steps=50, seed=5)
    data = sample_eight_gaussians(2000, torch.Generator().manual_seed(123))
    fresh = sample_eight_gaussians(2000, torch.Generator().manual_seed(124))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9))  # same mean and variance as the data
    sw_max, mmd_max = 0.15, 0.06
    assert sliced_wasserstein(fresh, data) < 0.5 * sw_max and rbf_mmd(fresh, data) < 0.5 * mmd_max
    assert sliced_wasserstein(samples, data) < sw_max
    assert rbf_mmd(samples, data) < mmd_max
    for bad in (noise, v_model["untrained"]):
        assert sliced_wasserstein(bad, data) > sw_max
        assert rbf_mmd(bad, data) > mmd_max


def test_conditional_training_uses_labels() -> None:
    """A class-conditional eps model on two well separated classes learns class-specific denoising."""
    torch.manual_seed(0)
    p = DiscreteVPProcess("cosine")
    den = Denoiser(MLP(2, width=64, depth=2, num_classes=2), p, "eps")
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    for _ in range(150):
        labels = torch.randint(0, 2, (128,), generator=gen)
        x0 = centres[labels] + 0.1 * torch.randn(128, 2, generator=gen)
        loss = denoising_loss(den, x0, cond={"labels": labels}, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(256, 2, generator=gen)
    t = torch.full((256,), 0.9, dtype=F64)
    with torch.no_grad():
        x0_a = den(x, t, {"labels": torch.zeros(256, dtype=torch.long)}).x0
        x0_b = den(x, t, {"labels": torch.ones(256, dtype=torch.long)}).x0
    assert float(x0_a[:, 0].mean()) > 1.0 and float(x0_b[:, 0].mean()) < -1.0


def test_mlp_rejects_labels_without_classes() -> None:
    den = Denoiser(MLP(2, 16, 1), VPProcess(), "eps")
    with pytest.raises(ValueError, match="num_classes"):
        denoising_loss(den, torch.zeros(4, 2), cond={"labels": torch.zeros(4, dtype=torch.long)})
    assert isinstance(den.network, nn.Module)
