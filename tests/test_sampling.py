"""Sampling: time grids, solvers against an exact Gaussian denoiser, seed stability, options, guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffusionlab.denoisers import Denoiser, Prediction
from diffusionlab.networks import MLP
from diffusionlab.processes import (
    DiscreteVPProcess,
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    SubVPProcess,
    VEProcess,
    VPProcess,
    broadcast_like,
)
from diffusionlab.sampling import (
    SPACINGS,
    ClassifierFreeGuidance,
    NoiseSource,
    check_steps,
    nfe,
    null_conditioning,
    sample,
    sample_seed,
    time_grid,
)
from diffusionlab.sampling.solvers import ddim

F64 = torch.float64
DISCRETE = ("leading", "trailing", "linspace")
CONTINUOUS = tuple(s for s in SPACINGS if s not in DISCRETE)


pytestmark = pytest.mark.usefixtures("one_thread")


class GaussianDenoiser:
    """The exact denoiser for data ~ N(m, s^2) per dimension: E[x0 | x_t] in closed form."""

    def __init__(self, process: GaussianProcess, mean: Tensor, std: Tensor) -> None:
        self.process, self.mean, self.std = process, mean, std

    def __call__(self, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Prediction:
        t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=F64)
        a, s = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        m, v = self.mean, self.std**2
        x0 = m + a * v / (a * a * v + s * s) * (x - a * m)
        return Prediction(x, x0, (x - a * x0) / s, a, s)


M, S = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5])


# --------------------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------------------


def grid_cases() -> list[tuple[GaussianProcess, str]]:
    cases: list[tuple[GaussianProcess, str]] = [(DiscreteVPProcess("cosine"), s) for s in SPACINGS]
    for p in (VPProcess(), SubVPProcess(), VEProcess(), EDMProcess(), FlowProcess()):
        cases += [(p, s) for s in CONTINUOUS]
    return cases


def expected_start(p: GaussianProcess, spacing: str, steps: int) -> float:
    if spacing == "leading":  # DDPM "leading": k = (steps - 1) * (T // steps) at the top
        return ((steps - 1) * (p.num_steps // steps) + 1) / p.num_steps
    if spacing == "linspace" and steps == 1:  # linspace(0, T - 1, 1) = [0], as in diffusers
        return 1 / p.num_steps
    return p.t_max


def check_grid(ts: Tensor, steps: int) -> None:
    assert ts.dtype == F64
    assert ts.shape == (steps + 1,), f"{steps} steps gave {len(ts)} times"
    assert float(ts[-1]) == 0.0
    assert bool((ts[1:] < ts[:-1]).all()), "not strictly decreasing"
    assert len(torch.unique(ts)) == steps + 1


@pytest.mark.parametrize(("p", "spacing"), grid_cases(), ids=lambda v: v if isinstance(v, str) else v.name)
@pytest.mark.parametrize("steps", [1, 2, 10, 1000])
def test_grid_shape(p: GaussianProcess, spacing: str, steps: int) -> None:
    ts = time_grid(p, steps, spacing)
    check_grid(ts, steps)
    # flow's log-SNR is -inf at t = 1; log-SNR grids clip it to -40, a time 2e-9 below t_max
    assert float(ts[0]) == pytest.approx(expected_start(p, spacing, steps), rel=1e-8, abs=0)
    assert float(ts[0]) <= p.t_max
    if steps > 1 and spacing in CONTINUOUS:
        assert float(ts[-2]) == pytest.approx(p.t_min, rel=1e-9)


@pytest.mark.parametrize("num_steps", [1000, 50])
def test_discrete_grids_at_every_step_count(num_steps: int) -> None:
    p = DiscreteVPProcess("cosine", num_steps=num_steps)
    for spacing in DISCRETE:
        for steps in range(1, num_steps + 1):
            ts = time_grid(p, steps, spacing)
            check_grid(ts, steps)
            k = ts[:-1] * num_steps - 1  # on DDPM's integer steps
            assert torch.allclose(k, k.round(), atol=1e-9) and int(k.round().min()) >= 0
            assert float(ts[0]) == pytest.approx(expected_start(p, spacing, steps), rel=1e-12)


@pytest.mark.parametrize("spacing", DISCRETE)
def test_discrete_grids_match_diffusers(spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    p = DiscreteVPProcess("linear")
    for steps in (1, 2, 3, 7, 10, 50, 250, 999, 1000):
        ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        ref.set_timesteps(steps)
        ours = (time_grid(p, steps, spacing)[:-1] * 1000 - 1).round().long()
        assert ours.tolist() == ref.timesteps.tolist(), (spacing, steps)


def test_trailing_grid_values() -> None:
    p = DiscreteVPProcess("linear")
    ts = time_grid(p, 10, "trailing")
    assert ((ts[:-1] * 1000).round() - 1).long().tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    # 61 steps: T/steps = 16.39..., where a float arange(T, 0, -T/steps) makes 62 entries
    assert len(time_grid(p, 61, "trailing")) == 62


def test_continuous_grid_values() -> None:
    p = EDMProcess()
    ts = time_grid(p, 18, "karras")
    i = torch.arange(18, dtype=F64)
    rho = 7.0
    sig = (80.0 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho  # Karras et al. eq. 5
    torch.testing.assert_close(ts[:-1], sig, rtol=1e-9, atol=0)
    vp = VPProcess()
    lam = vp.log_snr(time_grid(vp, 20, "log_snr")[:-1])
    torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(19), rtol=1e-6, atol=0)
    assert float(lam.diff().mean()) > 0
    torch.testing.assert_close(
        time_grid(vp, 5, "uniform"), torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 1e-3, 0.0], dtype=F64)
    )


def test_grid_errors() -> None:
    for spacing in DISCRETE:
        with pytest.raises(ValueError, match=f"'{spacing}'.*'vp'"):
            time_grid(VPProcess(), 10, spacing)
    for steps in (0, -3):
        with pytest.raises(ValueError, match=f"steps={steps}"):
            time_grid(VPProcess(), steps)
    for steps in (2.5, True, "10"):
        with pytest.raises(ValueError, match="steps="):
            check_steps(steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps=51"):
        time_grid(DiscreteVPProcess("cosine", num_steps=50), 51, "trailing")
    with pytest.raises(ValueError, match="'cosine'"):
        time_grid(VPProcess(), 10, "cosine")


# --------------------------------------------------------------------------------------------------------
# solvers against the exact Gaussian denoiser
# --------------------------------------------------------------------------------------------------------


def flow_map_error(p: GaussianProcess, spacing: str, steps: int) -> float:
    """Max error of deterministic DDIM against the exact probability-flow map, in units of the data std."""
    den = GaussianDenoiser(p, M, S)
    ts = time_grid(p, steps, spacing)
    a_T, s_T = float(p.alpha(ts[0])), float(p.sigma(ts[0]))
    x_T = math.sqrt(a_T**2 + s_T**2) * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    out = ddim(den, x_T.clone(), ts)
    exact = M + S * (x_T - a_T * M) / torch.sqrt(a_T**2 * S**2 + s_T**2)  # quantile-preserving map
    return float(((out - exact) / S).abs().max())


@pytest.mark.parametrize(
    ("p", "spacing"),
    [
        (DiscreteVPProcess("cosine"), "uniform"),
        (VPProcess(), "log_snr"),
        (EDMProcess(), "karras"),
        (FlowProcess(), "uniform"),
    ],
    ids=["ddpm", "vp", "edm", "flow"],
)
def test_ddim_follows_the_probability_flow(p: GaussianProcess, spacing: str) -> None:
    coarse, fine = flow_map_error(p, spacing, 50), flow_map_error(p, spacing, 400)
    assert fine < 0.03
    # first order: 8 times the steps, 8 times smaller error
    assert 6.0 < coarse / fine < 10.0


@pytest.mark.parametrize(("sampler", "options"), [("ddpm", {}), ("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.5})])
def test_stochastic_samplers_hit_the_data_distribution(sampler: str, options: dict) -> None:
    den = GaussianDenoiser(DiscreteVPProcess("cosine"), M, S)
    n = 2000
    x = sample(den, (2,), num_samples=n, sampler=sampler, steps=200, seed=1, **options)
    assert bool(torch.isfinite(x).all())
    mean_err = ((x.mean(0) - M) / S).abs()
    assert float(mean_err.max()) < 4 / math.sqrt(n)  # 4 standard errors
    std_ratio = x.std(0) / S
    assert float((std_ratio - 1).abs().max()) < 0.06  # 4 standard errors plus the solver's bias


def test_ddim_eta_1_is_ddpm() -> None:
    den = GaussianDenoiser(VPProcess(), M, S)
    a = sample(den, (2,), num_samples=200, sampler="ddpm", steps=50, seed=4)
    b = sample(den, (2,), num_samples=200, sampler="ddim", steps=50, seed=4, eta=1.0)
    c = sample(den, (2,), num_samples=200, sampler="ddim", steps=50, seed=4, eta=0.0)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert float((a - c).abs().max()) > 0.1


def test_one_step_ddim_returns_the_denoised_prior() -> None:
    p = VPProcess()
    den = GaussianDenoiser(p, M, S)
    x = sample(den, (2,), num_samples=8, sampler="ddim", steps=1, seed=0)
    x_T = NoiseSource(0, range(8))((2,))
    torch.testing.assert_close(x, den(x_T, torch.tensor(1.0, dtype=F64)).x0)


# --------------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------------


SEED_CASES = [("ddim", {}), ("ddpm", {}), ("ddim", {"eta": 0.5})]


@pytest.mark.parametrize(("sampler", "options"), SEED_CASES, ids=["ddim", "ddpm", "ddim-eta0.5"])
def test_same_seed_same_sample_at_any_batch_size(sampler: str, options: dict) -> None:
    den = GaussianDenoiser(DiscreteVPProcess("cosine"), M, S)

    def run(indices: list[int], seed: int = 3) -> Tensor:
        return sample(den, (2,), indices=indices, sampler=sampler, steps=20, seed=seed, **options)

    alone = run([5])
    assert torch.equal(run(list(range(7)))[5:6], alone)
    big = run(list(range(64)))
    assert torch.equal(big[5:6], alone)
    assert torch.equal(run(list(range(63, -1, -1)))[58:59], alone)  # any position
    assert torch.equal(sample(den, (2,), num_samples=64, sampler=sampler, steps=20, seed=3, **options), big)
    assert torch.equal(run(list(range(64))), big)  # a second call: nothing leaks between runs
    other = run(list(range(64)), seed=4)
    assert bool((other != big).all())
    assert len(torch.unique(big[:, 0])) == 64  # samples of one run differ from each other


def test_same_seed_with_a_network() -> None:
    """Through an MLP the noise is the same; batched matrix products may differ in the last bit only."""
    torch.manual_seed(0)
    den = Denoiser(MLP(2, 32, 2), DiscreteVPProcess("cosine"), "v")
    alone = sample(den, (2,), indices=[5], sampler="ddpm", steps=10, seed=3)
    for n in (7, 64):
        batched = sample(den, (2,), indices=list(range(n)), sampler="ddpm", steps=10, seed=3)[5:6]
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_noise_source() -> None:
    a = NoiseSource(7, [0, 1, 2])((3,))
    b = NoiseSource(7, 3)((3,))
    assert torch.equal(a, b) and a.shape == (3, 3)
    assert torch.equal(NoiseSource(7, [2])((3,)), a[2:])
    src = NoiseSource(7, 2)
    first, second = src((3,)), src((3,))
    assert not torch.equal(first, second)  # each call draws the next piece of every stream
    assert sample_seed(0, 1) != sample_seed(1, 0) and sample_seed(0, 1) == sample_seed(0, 1)
    with pytest.raises(ValueError, match="seed=-1"):
        sample_seed(-1, 0)


# --------------------------------------------------------------------------------------------------------
# bad options
# --------------------------------------------------------------------------------------------------------


def test_bad_options() -> None:
    den = GaussianDenoiser(VPProcess(), M, S)
    with pytest.raises(ValueError, match="'euler_a'"):
        sample(den, (2,), num_samples=2, sampler="euler_a")
    for eta in (1.5, -0.1):
        with pytest.raises(ValueError, match=f"eta={eta}"):
            sample(den, (2,), num_samples=2, sampler="ddim", eta=eta)
    for steps in (0, -2):
        with pytest.raises(ValueError, match=f"steps={steps}"):
            sample(den, (2,), num_samples=2, steps=steps)
    with pytest.raises(ValueError, match="'etaa'"):
        sample(den, (2,), num_samples=2, sampler="ddim", etaa=0.5)
    with pytest.raises(ValueError, match="'eta'"):
        sample(den, (2,), num_samples=2, sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="'karas'"):
        sample(den, (2,), num_samples=2, spacing="karas")
    with pytest.raises(ValueError, match="num_samples=0"):
        sample(den, (2,), num_samples=0)
    with pytest.raises(ValueError, match="num_samples=None"):
        sample(den, (2,))
    assert nfe("ddim", 20) == 20
    with pytest.raises(ValueError, match="'heun2'"):
        nfe("heun2", 20)


# --------------------------------------------------------------------------------------------------------
# classifier-free guidance
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conditional() -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(MLP(2, 32, 2, num_classes=3), DiscreteVPProcess("cosine"), "eps")


@pytest.mark.parametrize("per_sample_t", [False, True])
def test_classifier_free_guidance(conditional: Denoiser, per_sample_t: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=gen)
    t = torch.linspace(0.2, 0.8, 6, dtype=F64) if per_sample_t else torch.tensor(0.5, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        c = conditional(x, t, {"labels": labels})
        u = conditional(x, t, {"labels": torch.full((6,), -1)})
        none = conditional(x, t)
        assert float((c.eps - u.eps).abs().max()) > 1e-3  # the labels matter
        torch.testing.assert_close(none.eps, u.eps)  # no labels is the null label
        g1 = ClassifierFreeGuidance(conditional, 1.0)(x, t, {"labels": labels})
        assert torch.equal(g1.eps, c.eps) and torch.equal(g1.x0, c.x0)
        g0 = ClassifierFreeGuidance(conditional, 0.0)(x, t, {"labels": labels})
        assert torch.equal(g0.eps, u.eps) and torch.equal(g0.x0, u.x0)
        for w in (2.0, 3.5, 0.5):
            g = ClassifierFreeGuidance(conditional, w)(x, t, {"labels": labels})
            torch.testing.assert_close(g.eps, u.eps + w * (c.eps - u.eps), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(g.x0, u.x0 + w * (c.x0 - u.x0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(g.alpha * g.x0 + g.sigma * g.eps, x, atol=1e-5, rtol=1e-5)
            assert g.alpha.shape[0] == 6 and torch.equal(g.x, x)
        # no conditioning: nothing to guide
        assert torch.equal(ClassifierFreeGuidance(conditional, 2.0)(x, t).eps, none.eps)


def test_guided_sampling(conditional: Denoiser) -> None:
    labels = torch.tensor([0, 1, 2, 1])
    guided = ClassifierFreeGuidance(conditional, 2.0)
    a = sample(guided, (2,), num_samples=4, steps=5, seed=0, cond={"labels": labels})
    b = sample(guided, (2,), num_samples=4, steps=5, seed=0, cond={"labels": labels})
    plain = sample(conditional, (2,), num_samples=4, steps=5, seed=0, cond={"labels": labels})
    one = sample(
        ClassifierFreeGuidance(conditional, 1.0), (2,), num_samples=4, steps=5, seed=0, cond={"labels": labels}
    )
    assert torch.equal(a, b) and torch.equal(one, plain)
    assert float((a - plain).abs().max()) > 1e-4


def test_null_conditioning() -> None:
    assert torch.equal(null_conditioning({"labels": torch.tensor([3, 0])})["labels"], torch.tensor([-1, -1]))
    with pytest.raises(ValueError, match="'text'"):
        null_conditioning({"text": torch.zeros(2, 4)})
