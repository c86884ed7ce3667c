"""Probability-flow ODE solvers: equivalence with diffusers, convergence order against exact answers, every
process, NFE counts and bad options."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from diffusionlab.denoisers import Prediction
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
from diffusionlab.sampling import SAMPLERS, NoiseSource, nfe, sample, time_grid
from diffusionlab.sampling.ode import dpm_2s, dpmpp_2m, dpmpp_3m, euler, heun, unipc
from diffusionlab.sampling.solvers import ddim, ddpm

F64 = torch.float64
ODE_SAMPLERS = ("euler", "heun", "dpm_2s", "dpmpp_2m", "dpmpp_3m", "unipc")


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------
# exact denoisers
# --------------------------------------------------------------------------------------------------------


def _coefs(process: GaussianProcess, t: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor]:
    t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=F64)
    return broadcast_like(process.alpha(t), x), broadcast_like(process.sigma(t), x)


class GaussianDenoiser:
    """The exact denoiser for data ~ N(m, diag(s^2)), with a call counter."""

    def __init__(self, process: GaussianProcess, mean: Tensor, std: Tensor) -> None:
        self.process, self.mean, self.std, self.calls = process, mean, std, 0

    def __call__(self, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Prediction:
        self.calls += 1
        a, s = _coefs(self.process, t, x)
        m, v = self.mean.to(x.dtype), (self.std**2).to(x.dtype)
        x0 = m + a * v / (a * a * v + s * s) * (x - a * m)
        return Prediction(x, x0, (x - a * x0) / s, a, s)

    def flow_map(self, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The exact probability-flow map from time t to time s: it keeps z = (x - alpha m) / std_t fixed."""
        p = self.process
        a_t, s_t, a_s, s_s = float(p.alpha(t)), float(p.sigma(t)), float(p.alpha(s)), float(p.sigma(s))
        m, v = self.mean.to(x_t.dtype), (self.std**2).to(x_t.dtype)
        z = (x_t - a_t * m) / torch.sqrt(a_t**2 * v + s_t**2)
        return a_s * m + torch.sqrt(a_s**2 * v + s_s**2) * z


class MixtureDenoiser:
    """The exact denoiser of a mixture sum_k w_k N(mu_k, s_k^2 I): the posterior-weighted mean of the components'
    posterior means. In the VE frame x~ = x0 + sigma~ eps, component k gives x~ ~ N(mu_k, (s_k^2 + sigma~^2) I)
    and E[x0 | x~, k] = mu_k + s_k^2 / (s_k^2 + sigma~^2) (x~ - mu_k)."""

    def __init__(self, process: GaussianProcess, means: Tensor, stds: Tensor, weights: Tensor) -> None:
        self.process, self.calls = process, 0
        self.means, self.stds, self.weights = means.to(F64), stds.to(F64), weights.to(F64)

    def x0_ve(self, y: Tensor, ve: float) -> Tensor:
        var = self.stds**2 + ve**2
        diff = y.to(F64)[:, None, :] - self.means[None]
        logits = torch.log(self.weights) - 0.5 * y.shape[1] * torch.log(var) - 0.5 * (diff**2).sum(-1) / var
        post = self.means[None] + (self.stds**2 / var)[None, :, None] * diff
        return (torch.softmax(logits, dim=1)[..., None] * post).sum(1).to(y.dtype)

    def __call__(self, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Prediction:
        self.calls += 1
        t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=F64)
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        if a > 0:
            x0 = self.x0_ve(x / a, s / a)
        else:  # pure noise: the data mean
            x0 = (self.weights @ self.means).to(x.dtype).expand_as(x)
        return Prediction(x, x0, (x - a * x0) / s, torch.tensor(a, dtype=x.dtype), torch.tensor(s, dtype=x.dtype))

    def flow_map(self, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The probability-flow map from t to s, integrated with scipy (DOP853, tolerance 1e-12) in the VE frame:
        dx~/du = x~ - D(x~; sigma~) with u = log sigma~."""
        from scipy.integrate import solve_ivp

        p = self.process
        a_t, s_t, a_s, s_s = float(p.alpha(t)), float(p.sigma(t)), float(p.alpha(s)), float(p.sigma(s))
        shape = x_t.shape

        def rhs(u: float, y: np.ndarray) -> np.ndarray:
            yt = torch.from_numpy(y).reshape(shape)
            return (yt - self.x0_ve(yt, math.exp(u))).numpy().ravel()

        y0 = (x_t.to(F64) / a_t).numpy().ravel()
        sol = solve_ivp(rhs, (math.log(s_t / a_t), math.log(s_s / a_s)), y0, method="DOP853", rtol=1e-12, atol=1e-12)
        assert sol.success, sol.message
        return a_s * torch.from_numpy(sol.y[:, -1]).reshape(shape)


M, S = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5])
MIX = (
    torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.3, -1.0]]),
    torch.tensor([0.3, 0.5, 0.2]),
    torch.tensor([0.5, 0.3, 0.2]),
)


# --------------------------------------------------------------------------------------------------------
# 1. equivalence with diffusers
# --------------------------------------------------------------------------------------------------------

T = 1000
LINEAR = DiscreteVPProcess("linear", T)


def eps_model(x: Tensor, k: Tensor | float) -> Tensor:
    """A smooth nonlinear noise predictor on diffusers' timesteps k = 0..T-1 (not a trained model: the point is
    that both sides run the same solver arithmetic on the same function)."""
    u = (k.to(F64) if isinstance(k, Tensor) else torch.tensor(float(k), dtype=F64)) / T
    return (u * x + 0.3 * (1 - u) * torch.tanh(2 * x) + 0.05 * torch.sin(3 * x)).to(x.dtype)


class EpsModelDenoiser:
    """Our denoiser around ``eps_model``: at time t it asks for the timestep k = t T - 1."""

    process = LINEAR

    def __call__(self, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Prediction:
        a, s = _coefs(self.process, t, x)
        eps = eps_model(x, LINEAR.timestep(t))
        return Prediction(x, (x - s * eps) / a, eps, a, s)


def _grid(timesteps: Tensor) -> Tensor:
    """Our time grid for diffusers' timesteps: t_k = (k + 1) / T, then the data at 0."""
    return torch.cat([(timesteps.to(F64) + 1) / T, torch.zeros(1, dtype=F64)])


def _run_diffusers(scheduler: Any, x: Tensor, steps: int, **step_kwargs: Any) -> Tensor:
    """The standard diffusers loop: scale_model_input, model, step."""
    scheduler.set_timesteps(steps)
    for k in scheduler.timesteps:
        out = eps_model(scheduler.scale_model_input(x, k), k)
        x = scheduler.step(out, k, x, **step_kwargs).prev_sample
    return x


def _third_order_fixed(diffusers: Any) -> type:
    """diffusers' DPM-Solver++(3M) with the missing half of its D2 term added back (see ``dpmpp_3m``)."""

    class Fixed(diffusers.DPMSolverMultistepScheduler):
        def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kw):
            x = super().multistep_dpm_solver_third_order_update(model_output_list, sample=sample, noise=noise)
            sig = [self.sigmas[self.step_index + 1 - j] for j in range(4)]  # t, s0, s1, s2
            a_s = [self._sigma_to_alpha_sigma_t(v) for v in sig]
            lam = [torch.log(a) - torch.log(s) for a, s in a_s]
            h, r0, r1 = lam[0] - lam[1], (lam[1] - lam[2]) / (lam[0] - lam[1]), (lam[2] - lam[3]) / (lam[0] - lam[1])
            m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
            d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
            phi_3 = (torch.expm1(-h) / h + 1.0) / h - 0.5
            return x - a_s[0][0] * phi_3 * d2

    return Fixed


CASES = [
    (name, spacing, steps)
    for name in ("ddim", "ddpm", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")
    for spacing in ("leading", "trailing", "linspace")
    for steps in (10, 25)
    if not (name == "ddim" and spacing == "linspace")
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 warning in set_timesteps
@pytest.mark.parametrize(("name", "spacing", "steps"), CASES)
def test_matches_diffusers(name: str, spacing: str, steps: int) -> None:
    """Same model, same initial noise, same timesteps: our solver gives diffusers' output to ~1e-5.

    Options set so both compute the same thing: linear betas 1e-4..2e-2 everywhere (Heun's default is Stable
    Diffusion's 0.00085..0.012), DDIM ``set_alpha_to_one=True, clip_sample=False``, DDPM
    ``variance_type="fixed_small", clip_sample=False`` with its noise drawn from the same generator, DPM-Solver++
    ``algorithm_type="dpmsolver++"``, UniPC ``solver_type="bh2", predict_x0=True, solver_order=2``, all with
    ``final_sigmas_type="zero"``. Euler and Heun run in diffusers' VE frame: their sample is x / alpha (EDM
    eq. 4), ``scale_model_input`` divides by sqrt(sigma~^2 + 1), i.e. gives back our VP x; the final sigma~ is 0,
    so both end on the data. Our grid is diffusers' timesteps as t = (k + 1) / T plus 0.

    Deliberate differences, not compared here:
    - DDIM with "linspace": diffusers steps from k to k - T // N whatever the spacing, off its own grid; ours
      steps to the next grid time (equal for "leading", and for "trailing" when N divides T, as here).
    - DPM-Solver++ and UniPC space "leading"/"linspace" over N + 1 points and drop the last; the grid is then not
      our ``time_grid`` (checked below), but we run their timesteps all the same.
    - Euler/Heun "linspace" at N = 25 has fractional timesteps (999 / 24 apart): diffusers interpolates sigma~
      linearly between training steps, our ``DiscreteVPProcess`` interpolates log alpha^2 linearly; the noise
      levels differ by < 1e-4 relative, the outputs by < 1e-4.
    - DPM-Solver++(3M): diffusers weighs the second difference D2 by half its Taylor coefficient (our
      ``dpmpp_3m`` docstring); we match diffusers with that half added back, and differ from it as is.
    - Euler with ``s_churn > 0``: diffusers evaluates the model at the un-churned timestep and uses the result as
      if at the raised sigma^; ours (EDM Algorithm 2, k-diffusion) evaluates at sigma^. Not compared.
    """
    diffusers = pytest.importorskip("diffusers")
    betas = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear", "timestep_spacing": spacing}
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    den = EpsModelDenoiser()
    tol: dict = {"rtol": 1e-5, "atol": 1e-5}
    grid_is_ours = True
    if name == "ddim":
        sch = diffusers.DDIMScheduler(set_alpha_to_one=True, clip_sample=False, **betas)
        sch.set_timesteps(steps)
        ts = _grid(sch.timesteps)
        ref, ours = _run_diffusers(sch, x, steps), ddim(den, x, ts)
    elif name == "ddpm":
        sch = diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=False, **betas)
        sch.set_timesteps(steps)
        ts = _grid(sch.timesteps)
        g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)

        def noise(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
            return torch.randn((x.shape[0], *shape), generator=g_ours, dtype=dtype)

        ref, ours = _run_diffusers(sch, x, steps, generator=g_ref), ddpm(den, x, ts, noise=noise)
    elif name in ("euler", "heun"):
        cls = diffusers.EulerDiscreteScheduler if name == "euler" else diffusers.HeunDiscreteScheduler
        sch = cls(**betas)
        sch.set_timesteps(steps)
        ks = sch.timesteps if name == "euler" else sch.timesteps[::2]  # Heun repeats each inner timestep
        ts = _grid(ks)
        fractional = not torch.equal(ks, ks.round())
        if fractional:  # see the docstring
            ve = LINEAR.ve_sigma(ts[:-1])
            theirs = sch.sigmas[:-1] if name == "euler" else sch.sigmas[:-1:2]
            assert float(((ve - theirs.to(F64)) / ve).abs().max()) < 1e-4
            tol, grid_is_ours = {"rtol": 1e-4, "atol": 1e-4}, False
        a0 = float(LINEAR.alpha(ts[0]))
        ref, ours = _run_diffusers(sch, x / a0, steps), (euler if name == "euler" else heun)(den, x, ts)
    elif name in ("dpmpp_2m", "dpmpp_3m"):
        order = 2 if name == "dpmpp_2m" else 3
        cls = diffusers.DPMSolverMultistepScheduler if order == 2 else _third_order_fixed(diffusers)
        sch = cls(algorithm_type="dpmsolver++", solver_order=order, final_sigmas_type="zero", **betas)
        sch.set_timesteps(steps)
        ts = _grid(sch.timesteps)
        ref, ours = _run_diffusers(sch, x, steps), (dpmpp_2m if order == 2 else dpmpp_3m)(den, x, ts)
        grid_is_ours = spacing == "trailing"
        if order == 3:  # diffusers as is differs (its third-order steps are second order)
            plain = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3, **betas)
            assert float((_run_diffusers(plain, x, steps) - ours).abs().max()) > 1e-4
    else:
        sch = diffusers.UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, solver_order=2, **betas)
        sch.set_timesteps(steps)
        ts = _grid(sch.timesteps)
        ref, ours = _run_diffusers(sch, x, steps), unipc(den, x, ts)
        grid_is_ours = spacing == "trailing"
    assert torch.equal(ts, time_grid(LINEAR, steps, spacing)) == grid_is_ours
    assert float(ref.abs().max()) > 1.0  # a nontrivial output
    torch.testing.assert_close(ours, ref, **tol)


def test_euler_is_ddim() -> None:
    """Euler on the VE-frame PF-ODE and deterministic DDIM are the same map (Karras et al. 2022, sec. 4)."""
    for p, spacing in ((DiscreteVPProcess("cosine"), "uniform"), (VEProcess(), "log_snr"), (FlowProcess(), "uniform")):
        den = GaussianDenoiser(p, M, S)
        x = NoiseSource(0, 16)((2,)) * float(torch.sqrt(p.alpha(p.t_max) ** 2 + p.sigma(p.t_max) ** 2))
        ts = time_grid(p, 12, spacing)
        torch.testing.assert_close(euler(den, x, ts), ddim(den, x, ts), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# 2. convergence order against exact answers
# --------------------------------------------------------------------------------------------------------

ORDER = {"euler": 1.0, "heun": 2.0, "dpm_2s": 2.0, "dpmpp_2m": 2.0, "dpmpp_3m": 3.0, "unipc": 3.0, "ddim": 1.0}
STEPS = (16, 32, 64, 128)


def errors(den: GaussianDenoiser | MixtureDenoiser, spacing: str, name: str) -> list[float]:
    """Max error at the data of ``name`` from one fixed x_T, against the exact flow to t_min followed by the same
    last step x0_hat(x_{t_min}) that every solver takes into t = 0 (a shared, exactly-known final map)."""
    p = den.process
    ts0 = time_grid(p, STEPS[0], spacing)
    a_T, s_T = float(p.alpha(ts0[0])), float(p.sigma(ts0[0]))
    x_T = math.sqrt(a_T**2 + s_T**2) * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = den(den.flow_map(x_T, ts0[0], ts0[-2]), ts0[-2]).x0
    out = []
    for steps in STEPS:
        ts = time_grid(p, steps, spacing)
        assert ts[0] == ts0[0] and ts[-2] == ts0[-2]
        out.append(float((SAMPLERS[name](den, x_T, ts) - exact).abs().max()))
    return out


def slope(errs: list[float]) -> float:
    """-d log(error) / d log(steps), least squares."""
    return -float(np.polyfit(np.log(STEPS), np.log(errs), 1)[0])


@pytest.mark.parametrize("name", [*ODE_SAMPLERS, "ddim"])
@pytest.mark.parametrize("problem", ["gaussian", "mixture"])
def test_order_on_vp(name: str, problem: str) -> None:
    p = VPProcess()
    den = GaussianDenoiser(p, M, S) if problem == "gaussian" else MixtureDenoiser(p, *MIX)
    errs = errors(den, "log_snr", name)
    k = slope(errs)
    assert errs[-1] < (0.1 if ORDER[name] == 1 else 5e-3), errs
    if name == "dpmpp_3m":
        assert k > 2.6, (k, errs)
        assert math.log2(errs[-2] / errs[-1]) > 2.6, errs  # still third order at the finest steps
    elif name == "unipc":  # UniP-2 + UniC: UniC-p raises the order of accuracy to p + 1 (Zhao et al. 2023)
        assert k > 2.5, (k, errs)
    else:
        assert abs(k - ORDER[name]) < 0.4, (k, errs)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "dpm_2s"])
@pytest.mark.parametrize(
    ("process", "spacing", "problem"),
    [("edm", "karras", "mixture"), ("flow", "uniform", "gaussian"), ("flow", "log_snr", "mixture")],
)
def test_order_on_edm_and_flow(name: str, process: str, spacing: str, problem: str) -> None:
    """EDM on its own grid, flow from t = 1 (alpha = 0, where the first step is first order for all) and on a
    log-SNR grid."""
    p = EDMProcess() if process == "edm" else FlowProcess()
    den = GaussianDenoiser(p, M, S) if problem == "gaussian" else MixtureDenoiser(p, *MIX)
    errs = errors(den, spacing, name)
    k = slope(errs)
    assert errs[-1] < (0.15 if ORDER[name] == 1 else 0.03), errs
    assert k > min(ORDER[name], 2.0) - 0.4, (k, errs)
    if name == "euler":
        assert k < 1.4, (k, errs)


# --------------------------------------------------------------------------------------------------------
# 3. every sampler on every process, through sample()
# --------------------------------------------------------------------------------------------------------

PROCESSES = {
    "ddpm-linear": lambda: DiscreteVPProcess("linear"),
    "ddpm-cosine": lambda: DiscreteVPProcess("cosine"),
    "vp": VPProcess,
    "subvp": SubVPProcess,
    "ve": VEProcess,
    "edm": EDMProcess,
    "flow": FlowProcess,
}


@pytest.mark.parametrize("name", ODE_SAMPLERS)
@pytest.mark.parametrize("process", list(PROCESSES))
def test_every_process(name: str, process: str) -> None:
    """50 log-SNR steps hit N(M, S^2): within 4 standard errors plus the solver's bias, which is measured
    against the exact map of the same noise (mean error in data stds: Euler 0.15, Heun 0.05, the rest 0.03; the
    largest are on flow, whose log-SNR grid spends many steps in pure noise down from lambda = -20)."""
    p: GaussianProcess = PROCESSES[process]()
    den = GaussianDenoiser(p, M, S)
    n = 2000
    x = sample(den, (2,), num_samples=n, sampler=name, steps=50, spacing="log_snr", seed=1)
    assert x.shape == (n, 2) and bool(torch.isfinite(x).all())
    assert den.calls == nfe(name, 50)
    ts = time_grid(p, 50, "log_snr")
    init = float(torch.sqrt(p.alpha(ts[0]) ** 2 + p.sigma(ts[0]) ** 2))
    x_T = init * NoiseSource(1, n)((2,))
    exact = den(den.flow_map(x_T, ts[0], ts[-2]), ts[-2]).x0
    bias = {"euler": 0.15, "heun": 0.05}.get(name, 0.03)
    assert float(((x - exact) / S).abs().mean()) < bias
    assert float(((x.mean(0) - M) / S).abs().max()) < 4 / math.sqrt(n) + bias
    assert float((x.std(0) / S - 1).abs().max()) < 4 / math.sqrt(2 * n) + bias


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_flow_from_pure_noise(name: str) -> None:
    """Flow's uniform grid starts at t = 1, where alpha = 0 (sigma~ = inf, lambda = -inf): finite, close to the
    exact map, and heun / dpm_2s take their first step first order (one evaluation fewer than ``nfe``).

    Uniform in t, the grid's last step (t = 0.02 to t_min = 1e-4) is 5.3 in lambda after steps of 0.7: the
    multistep solvers extrapolate their history 7 times its span there, which costs 3M most (mean error 0.08;
    below 1e-3 for every solver up to the last step). Log-SNR or Karras grids avoid this."""
    p = FlowProcess()
    den = GaussianDenoiser(p, M, S)
    x = sample(den, (2,), num_samples=500, sampler=name, steps=50, spacing="uniform", seed=2)
    assert bool(torch.isfinite(x).all())
    assert den.calls == nfe(name, 50) - (1 if name in ("heun", "dpm_2s") else 0)
    ts = time_grid(p, 50, "uniform")
    assert float(p.alpha(ts[0])) == 0.0
    exact = den(den.flow_map(NoiseSource(2, 500)((2,)), ts[0], ts[-2]), ts[-2]).x0
    assert float(((x - exact) / S).abs().mean()) < {"euler": 0.05, "dpmpp_3m": 0.1}.get(name, 0.01)


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_nfe_is_exact(name: str) -> None:
    for steps in (1, 2, 3, 7, 20):
        den = GaussianDenoiser(VPProcess(), M, S)
        sample(den, (2,), num_samples=3, sampler=name, steps=steps, spacing="karras")
        assert den.calls == nfe(name, steps), (name, steps)
    assert nfe("heun", 10) == 19 and nfe("dpm_2s", 10) == 19 and nfe("dpmpp_3m", 10) == 10


@pytest.mark.parametrize(("name", "options"), [*((n, {}) for n in ODE_SAMPLERS), ("heun", {"s_churn": 10.0})])
def test_same_sample_at_any_batch_size(name: str, options: dict) -> None:
    den = GaussianDenoiser(DiscreteVPProcess("cosine"), M, S)

    def run(indices: list[int]) -> Tensor:
        return sample(den, (2,), indices=indices, sampler=name, steps=8, seed=3, spacing="karras", **options)

    alone = run([5])
    torch.testing.assert_close(run(list(range(9)))[5:6], alone, rtol=0, atol=0)
    torch.testing.assert_close(run(list(range(9))), run(list(range(9))), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_churn_hits_the_distribution(name: str) -> None:
    """EDM's stochastic sampler (Algorithm 2) with S_churn > 0 still samples N(M, S^2), and differs from the ODE.
    Churn makes Euler's bias larger (std 3% low at 160 steps, 10% at 40); Heun's is 2% at 80 steps."""
    den = GaussianDenoiser(EDMProcess(), M, S)
    n, steps = 2000, (160 if name == "euler" else 80)
    opts = {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
    x = sample(den, (2,), num_samples=n, sampler=name, steps=steps, spacing="karras", seed=4, **opts)
    ode = sample(den, (2,), num_samples=n, sampler=name, steps=steps, spacing="karras", seed=4)
    assert float((x - ode).abs().mean()) > 0.1
    assert float(((x.mean(0) - M) / S).abs().max()) < 4 / math.sqrt(n) + 0.02
    assert float((x.std(0) / S - 1).abs().max()) < 4 / math.sqrt(2 * n) + 0.04
    assert den.calls == 2 * nfe(name, steps)  # churn never costs an evaluation


# --------------------------------------------------------------------------------------------------------
# 4. bad options
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_unknown_option(name: str) -> None:
    den = GaussianDenoiser(VPProcess(), M, S)
    with pytest.raises(ValueError, match="'etaa'"):
        sample(den, (2,), num_samples=2, sampler=name, etaa=0.5)
    if name not in ("euler", "heun"):
        with pytest.raises(ValueError, match="'s_churn'"):
            sample(den, (2,), num_samples=2, sampler=name, s_churn=1.0)


@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"s_churn": -1.0}, "s_churn=-1.0"),
        ({"s_churn": math.nan}, "s_churn=nan"),
        ({"s_noise": -0.5}, "s_noise=-0.5"),
        ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmin=2.0, s_tmax=1.0"),
        ({"s_tmin": -1.0}, "s_tmin=-1.0"),
    ],
)
def test_bad_churn_options(name: str, options: dict, message: str) -> None:
    den = GaussianDenoiser(VPProcess(), M, S)
    with pytest.raises(ValueError, match=message):
        sample(den, (2,), num_samples=2, sampler=name, **options)


def test_samplers_are_registered() -> None:
    fns: dict[str, Callable[..., Tensor]] = {
        "euler": euler,
        "heun": heun,
        "dpm_2s": dpm_2s,
        "dpmpp_2m": dpmpp_2m,
        "dpmpp_3m": dpmpp_3m,
        "unipc": unipc,
    }
    for name, fn in fns.items():
        assert SAMPLERS[name] is fn
