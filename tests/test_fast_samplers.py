"""The few-step and adaptive solvers: iPNDM and DEIS converge at their order, UniPC's bh1 variant, the adaptive ODE
solver reaches its tolerance on the exact Gaussian, the adaptive reverse SDE draws the right distribution, and the
stochastic Runge-Kutta scheme shows strong order 1.5 on a linear SDE with a known solution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_ode_samplers import MIX, GaussianDenoiser, MixtureDenoiser

from diffusionlab.processes import EDMProcess, FlowProcess, VPProcess
from diffusionlab.sampling import SAMPLERS, NoiseSource, nfe, time_grid
from diffusionlab.sampling.adaptive import brownian_increments, sra_step
from diffusionlab.sampling.ode import lagrange_weights

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
EDM = EDMProcess(sigma_min=0.002, sigma_max=80.0)
MEAN, STD = torch.tensor([1.0, -0.5, 0.3]), torch.tensor([0.5, 1.5, 0.05])


class Counting(GaussianDenoiser):
    """The exact Gaussian denoiser; it takes per-sample times, as the library's Denoiser does."""


def start(process, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    ts = time_grid(process, 2, "karras")
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return z * float(process.sigma(ts[0])), ts


def test_lagrange_weights_integrate_polynomials_exactly() -> None:
    nodes = [3.0, 2.0, 1.2]
    w = lagrange_weights(nodes, 3.0, 0.5)
    for power in range(3):  # exact for polynomials up to degree len(nodes) - 1
        exact = (0.5 ** (power + 1) - 3.0 ** (power + 1)) / (power + 1)
        assert sum(wj * r**power for wj, r in zip(w, nodes, strict=True)) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("name, order", [("ipndm", 2.3), ("deis", 2.3), ("unipc", 1.8)])
def test_multistep_solvers_converge_at_their_order(name: str, order: float) -> None:
    """Error against the exact flow map of the mixture at 10..40 steps on the EDM Karras grid."""
    means, stds, weights = MIX
    den = MixtureDenoiser(EDM, means, stds, weights)
    x, _ = start(EDM, 16)
    x = x[:, :2]
    ts0 = time_grid(EDM, 160, "karras")
    exact = den.flow_map(x, ts0[0], ts0[-2])
    errors = []
    steps = (10, 20, 40)
    for n in steps:
        ts = time_grid(EDM, n, "karras")
        out = SAMPLERS[name](den, x, ts[:-1].clone())  # stop at the last noise level: compare with the flow map
        target = den.flow_map(x, ts[0], ts[-2])
        errors.append(float((out - target).pow(2).mean().sqrt()))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope > order, (errors, slope)
    assert errors[-1] < 5e-3, errors
    del exact


def test_unipc_bh1_differs_from_bh2_and_converges() -> None:
    means, stds, weights = MIX
    den = MixtureDenoiser(EDM, means, stds, weights)
    x, _ = start(EDM, 16)
    x = x[:, :2]
    ts = time_grid(EDM, 8, "karras")
    bh1, bh2 = SAMPLERS["unipc"](den, x, ts, variant="bh1"), SAMPLERS["unipc"](den, x, ts)
    assert not torch.allclose(bh1, bh2)
    fine = SAMPLERS["unipc"](den, x, time_grid(EDM, 200, "karras"), variant="bh1")
    reference = SAMPLERS["dpmpp_3m"](den, x, time_grid(EDM, 400, "karras"))
    assert float((fine - reference).abs().max()) < 1e-3
    with pytest.raises(ValueError, match="variant='bh3' is not a UniPC variant"):
        SAMPLERS["unipc"](den, x, ts, variant="bh3")


@pytest.mark.parametrize("process", [EDM, VPProcess(), FlowProcess()], ids=["edm", "vp", "flow"])
def test_rk45_reaches_its_tolerance_on_the_exact_gaussian(process) -> None:  # type: ignore[no-untyped-def]
    """Against the exact flow map of N(m, s^2): the error follows the tolerance; the evaluations grow as it tightens."""
    den = Counting(process, MEAN.to(F64), STD.to(F64))
    ts = time_grid(process, 10, "karras" if process is EDM else "uniform")
    z = torch.randn(32, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = z * float(process.sigma(ts[0])) + float(process.alpha(ts[0])) * MEAN.to(F64)
    target = den.flow_map(x, ts[0], ts[-2])
    a_end = float(process.alpha(ts[-2]))
    calls, errors = [], []
    for rtol in (1e-2, 1e-4, 1e-6):
        den.calls = 0
        out = SAMPLERS["rk45"](den, x, ts, rtol=rtol, atol=rtol)
        # the last step returns x0_hat at ts[-2]: compare the state there through the exact denoiser
        exact_x0 = den(target, ts[-2]).x0
        errors.append(float((out - exact_x0).abs().max()) / max(a_end, 1e-12))
        calls.append(den.calls)
    assert all(e < 20 * rtol for e, rtol in zip(errors, (1e-2, 1e-4, 1e-6), strict=True)), errors  # global error
    assert calls[0] < calls[1] < calls[2], calls
    assert nfe("rk45", 10) is None


def test_adaptive_solvers_do_not_depend_on_the_batch() -> None:
    den = Counting(EDM, MEAN.to(F64), STD.to(F64))
    x, ts = start(EDM, 6)
    ts = time_grid(EDM, 10, "karras")
    for name in ("rk45", "adaptive_sde", "sra"):
        whole = SAMPLERS[name](den, x, ts, noise=NoiseSource(3, range(6)))
        parts = [SAMPLERS[name](den, x[i : i + 2], ts, noise=NoiseSource(3, range(i, i + 2))) for i in (0, 2, 4)]
        torch.testing.assert_close(whole, torch.cat(parts), atol=1e-12, rtol=0), name


@pytest.mark.parametrize("name, options", [("adaptive_sde", {}), ("sra", {})])
def test_reverse_sde_solvers_draw_the_gaussian(name: str, options: dict) -> None:
    den = Counting(EDM, MEAN.to(F64), STD.to(F64))
    n = 2000 if name == "adaptive_sde" else 4000  # adaptive_sde paces each sample alone: the slow one
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    ts = time_grid(EDM, 40, "karras")
    out = SAMPLERS[name](den, z * 80.0, ts, noise=NoiseSource(0, n), **options)
    assert torch.allclose(out.mean(0), MEAN.to(F64), atol=0.06), out.mean(0)
    assert torch.allclose(out.std(0), STD.to(F64), rtol=0.08, atol=0.01), out.std(0)
    if name == "adaptive_sde":
        den.calls = 0
        SAMPLERS[name](den, z[:64] * 80.0, ts, noise=NoiseSource(0, 64), rel_tol=0.2)
        loose = den.calls
        den.calls = 0
        SAMPLERS[name](den, z[:64] * 80.0, ts, noise=NoiseSource(0, 64), rel_tol=0.02)
        assert loose < den.calls


def test_sra_has_strong_order_one_and_a_half_on_a_linear_sde() -> None:
    """dx = -lam x ds + sig dW from x0 = 1: the exact solution e^{-lam T} x0 + sig int e^{-lam (T - r)} dW_r on the
    same Brownian path (integrated on a 4096-step grid, error O(dt^2)); mean |error| at 8..128 steps."""
    lam, sig, horizon, paths, fine = 1.5, 0.8, 1.0, 1000, 2**12
    dt = horizon / fine
    g = torch.Generator().manual_seed(0)
    dw, dz = brownian_increments(
        torch.randn(fine, paths, generator=g, dtype=F64), torch.randn(fine, paths, generator=g, dtype=F64), dt
    )
    t = torch.arange(fine, dtype=F64) * dt
    decay = torch.exp(-lam * (horizon - t))[:, None]
    exact = math.exp(-lam * horizon) + sig * (decay * (dw + lam * (dt * dw - dz))).sum(0)
    w = torch.cat([torch.zeros(1, paths, dtype=F64), dw.cumsum(0)])
    steps, sra_err, em_err = [8, 16, 32, 64, 128], [], []
    for n in steps:
        m, h = fine // n, horizon / n
        x_sra = torch.ones(paths, dtype=F64)
        x_em = x_sra.clone()
        for i in range(n):
            part = slice(i * m, (i + 1) * m)
            big_dw = dw[part].sum(0)
            big_dz = (dz[part] + (w[i * m : (i + 1) * m] - w[i * m]) * dt).sum(0)  # int (W_r - W_s) dr, exactly
            x_sra = sra_step(lambda s, x: -lam * x, lambda s: sig, x_sra, i * h, h, big_dw, big_dz)
            x_em = x_em - h * lam * x_em + sig * big_dw
        sra_err.append(float((x_sra - exact).abs().mean()))
        em_err.append(float((x_em - exact).abs().mean()))
    order = lambda e: np.polyfit(np.log(horizon / np.array(steps)), np.log(e), 1)[0]  # noqa: E731
    assert order(sra_err) > 1.4 and 0.8 < order(em_err) < 1.2, (sra_err, em_err)
    assert sra_err[-1] < 0.01 * em_err[-1]


@pytest.mark.parametrize("name", ["ipndm", "deis", "sra"])
def test_nfe_is_exact(name: str) -> None:
    den = Counting(EDM, MEAN.to(F64), STD.to(F64))
    x, _ = start(EDM, 4)
    for steps in (3, 10):
        den.calls = 0
        SAMPLERS[name](den, x, time_grid(EDM, steps, "karras"), noise=NoiseSource(0, 4))
        assert den.calls == nfe(name, steps)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("ipndm", {"order": 5}, "order=5 must be a whole number from 1 to 4"),
        ("deis", {"order": 0}, "order=0"),
        ("rk45", {"rtol": 0}, "rtol=0 must be a number in (0, 1)"),
        ("adaptive_sde", {"abs_tol": 2.0}, "abs_tol=2.0"),
    ],
)
def test_bad_options_are_one_clear_error(name: str, options: dict, message: str) -> None:
    den = Counting(EDM, MEAN.to(F64), STD.to(F64))
    x, _ = start(EDM, 2)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SAMPLERS[name](den, x, time_grid(EDM, 5, "karras"), **options)
