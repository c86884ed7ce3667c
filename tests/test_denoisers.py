"""Denoisers: every parameterisation gives the same (x0, eps) for the same truth; score, v, target weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from diffusionlab.denoisers import (
    PARAMETERISATIONS,
    CallableDenoiser,
    Coefficients,
    Denoiser,
    Prediction,
    make_parameterisation,
    noise_conditioning,
)
from diffusionlab.processes import (
    DiscreteVPProcess,
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    VEProcess,
    VPProcess,
    broadcast_like,
)

F64 = torch.float64


class FixedNetwork(nn.Module):
    """Returns a fixed output whatever its input; remembers what it was called with."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.out = out
        self.calls: list[tuple[Tensor, Tensor, dict]] = []

    def forward(self, x: Tensor, c_noise: Tensor, **cond: Tensor) -> Tensor:
        self.calls.append((x, c_noise, cond))
        return self.out


def processes_and_times() -> list[tuple[GaussianProcess, Tensor]]:
    """Processes with per-sample times spread over their range (4 samples)."""
    return [
        (DiscreteVPProcess("cosine"), torch.tensor([0.02, 0.3, 0.65, 0.9], dtype=F64)),
        (VPProcess(), torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=F64)),
        (VEProcess(), torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64)),
        (EDMProcess(), torch.tensor([0.01, 0.4, 2.0, 30.0], dtype=F64)),
        (FlowProcess(), torch.tensor([0.02, 0.3, 0.6, 0.95], dtype=F64)),
    ]


CASES = processes_and_times()
CASE_IDS = [p.name + ("-" + p.schedule if isinstance(p, DiscreteVPProcess) else "") for p, _ in CASES]


def truth(shape: tuple[int, ...] = (4, 3, 2), seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64), torch.randn(shape, generator=gen, dtype=F64)


@pytest.mark.parametrize(("process", "t"), CASES, ids=CASE_IDS)
def test_every_parameterisation_recovers_x0_and_eps(process: GaussianProcess, t: Tensor) -> None:
    x0, eps = truth()
    x = process.add_noise(x0, t, eps)
    for param in PARAMETERISATIONS:
        maker = Denoiser(FixedNetwork(torch.zeros(())), process, param)
        target = maker.target(x0, eps, t)
        assert target.shape == x0.shape
        den = Denoiser(FixedNetwork(target), process, param)
        pred = den(x, t)
        torch.testing.assert_close(pred.x0, x0, atol=1e-5, rtol=1e-5, msg=f"{param}: x0")
        torch.testing.assert_close(pred.eps, eps, atol=1e-5, rtol=1e-5, msg=f"{param}: eps")
        # consistent with x = alpha x0 + sigma eps
        torch.testing.assert_close(pred.alpha * pred.x0 + pred.sigma * pred.eps, x, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(("process", "t"), CASES, ids=CASE_IDS)
def test_targets_by_hand(process: GaussianProcess, t: Tensor) -> None:
    x0, eps = truth()
    a, s = broadcast_like(process.alpha(t), x0), broadcast_like(process.sigma(t), x0)
    da, ds = broadcast_like(process.d_alpha(t), x0), broadcast_like(process.d_sigma(t), x0)

    def target(param: str) -> Tensor:
        return Denoiser(FixedNetwork(torch.zeros(())), process, param).target(x0, eps, t)

    assert torch.equal(target("eps"), eps)
    assert torch.equal(target("x0"), x0)
    torch.testing.assert_close(target("v"), (a * eps - s * x0) / torch.sqrt(a**2 + s**2))
    torch.testing.assert_close(target("velocity"), da * x0 + ds * eps)
    # EDM's F_target (Karras et al. eq. 8) in the VE frame, sigma_data = 0.5
    ve, sd = s / a, 0.5
    c_skip, c_out = sd**2 / (ve**2 + sd**2), ve * sd / torch.sqrt(ve**2 + sd**2)
    torch.testing.assert_close(target("edm"), (x0 - c_skip * (x0 + ve * eps)) / c_out)


@pytest.mark.parametrize(("process", "t"), CASES, ids=CASE_IDS)
def test_network_inputs(process: GaussianProcess, t: Tensor) -> None:
    x0, eps = truth()
    x = process.add_noise(x0, t, eps)
    a, s = broadcast_like(process.alpha(t), x), broadcast_like(process.sigma(t), x)
    c_noise = (-process.log_snr(t).clamp(-20, 20) / 8).float()
    for param in PARAMETERISATIONS:
        net = FixedNetwork(torch.zeros_like(x))
        Denoiser(net, process, param)(x, t, {"labels": torch.arange(4)})
        ((x_in, c_in_noise, cond),) = net.calls
        if param == "edm":
            expected = (x / a) / torch.sqrt((s / a) ** 2 + 0.25)
        else:
            expected = x / torch.sqrt(a**2 + s**2)
        torch.testing.assert_close(x_in, expected, msg=param)
        torch.testing.assert_close(c_in_noise, c_noise, msg=param)
        assert torch.equal(cond["labels"], torch.arange(4))
    # the noise input is EDM's ln(sigma) / 4 whatever the process
    ln_ve = torch.log(s.flatten() / a.flatten())
    torch.testing.assert_close(noise_conditioning(process, t), (ln_ve / 4).clamp(-2.5, 2.5))


@pytest.mark.parametrize(("process", "t"), CASES, ids=CASE_IDS)
def test_target_weight_is_squared_sensitivity(process: GaussianProcess, t: Tensor) -> None:
    """At fixed x, moving x0 by e moves the target by sqrt(w) e in magnitude."""
    x0, eps = truth()
    x = process.add_noise(x0, t, eps)
    a, s = broadcast_like(process.alpha(t), x), broadcast_like(process.sigma(t), x)
    e = 1e-3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    x0b = x0 + e
    epsb = (x - a * x0b) / s  # same x
    for param in PARAMETERISATIONS:
        den = Denoiser(FixedNetwork(torch.zeros(())), process, param)
        dtarget = den.target(x0b, epsb, t) - den.target(x0, eps, t)
        w = den.target_weight(t, x0)
        torch.testing.assert_close(dtarget.abs(), torch.sqrt(w) * e.abs(), rtol=1e-6, atol=1e-12, msg=param)


def test_prediction_score_and_v() -> None:
    process, t = VPProcess(), torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    x0, eps = truth((3, 4))
    x = process.add_noise(x0, t, eps)
    pred = Denoiser(FixedNetwork(eps), process, "eps")(x, t)
    a, s = broadcast_like(process.alpha(t), x), broadcast_like(process.sigma(t), x)
    torch.testing.assert_close(pred.score, -eps / s)
    # VP: alpha^2 + sigma^2 = 1, so v is Salimans & Ho's unnormalised a eps - s x0
    torch.testing.assert_close(pred.v, a * eps - s * x0)
    # VE: v is normalised by sqrt(1 + sigma^2)
    ve, tv = VEProcess(), torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    xv = ve.add_noise(x0, tv, eps)
    pv = Denoiser(FixedNetwork(eps), ve, "eps")(xv, tv)
    sv = broadcast_like(ve.sigma(tv), xv)
    torch.testing.assert_close(pv.v, (eps - sv * x0) / torch.sqrt(1 + sv**2))
    # with_x0 keeps x = alpha x0 + sigma eps
    clipped = pred.with_x0(x0.clamp(-0.5, 0.5))
    torch.testing.assert_close(a * clipped.x0 + s * clipped.eps, x)


def test_score_of_a_gaussian() -> None:
    """Data N(0, 1): the exact VE denoiser is x / (1 + sigma^2) and the score of N(0, 1 + sigma^2) is -x / (1 + s^2)."""
    den = CallableDenoiser(lambda x, sigma: x / (1 + broadcast_like(sigma, x) ** 2))
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    pred = den(x, sigma)
    s = sigma[:, None]
    torch.testing.assert_close(pred.score, -x / (1 + s**2))
    torch.testing.assert_close(pred.eps, s * x / (1 + s**2))


def test_callable_denoiser_in_a_vp_process() -> None:
    """The same VE denoiser drives a VP process: x_vp = alpha x_ve, E[eps | x] = sigma x for unit-variance data."""
    seen: list[Tensor] = []

    def d(x: Tensor, sigma: Tensor) -> Tensor:
        seen.append(sigma)
        return x / (1 + broadcast_like(sigma, x) ** 2)

    process = VPProcess()
    den = CallableDenoiser(d, process)
    t = torch.tensor([0.05, 0.3, 0.7], dtype=F64)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    pred = den(x, t)
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    torch.testing.assert_close(seen[0], process.sigma(t) / process.alpha(t))
    torch.testing.assert_close(pred.x0, a * x)
    torch.testing.assert_close(pred.eps, s * x)
    torch.testing.assert_close(pred.alpha * pred.x0 + pred.sigma * pred.eps, x)
    # a scalar time and extra keyword arguments reach the function
    den2 = CallableDenoiser(lambda x, sigma, scale: scale * x, EDMProcess(), scale=0.5)
    p2 = den2(x.float(), 2.0)
    torch.testing.assert_close(p2.x0, 0.5 * x.float())
    torch.testing.assert_close(p2.eps, (x.float() - 0.5 * x.float()) / 2.0)


def test_prediction_round_trip_float32() -> None:
    process, t = FlowProcess(), torch.tensor([0.2, 0.7])
    x0, eps = (v.float() for v in truth((2, 6)))
    x = process.add_noise(x0, t, eps)
    c = Coefficients(process, t, x)
    for name in ("eps", "x0", "v", "velocity"):
        param = make_parameterisation(name)
        target = Denoiser(FixedNetwork(torch.zeros(())), process, param).target(x0, eps, t)
        out_x0, out_eps = param.prediction(target, x, c)
        assert out_x0.dtype == torch.float32
        torch.testing.assert_close(out_x0, x0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_eps, eps, atol=1e-5, rtol=1e-5)


def test_scalar_time_is_broadcast() -> None:
    process = DiscreteVPProcess("cosine")
    x0, eps = truth((5, 2))
    t = torch.full((5,), 0.4, dtype=F64)
    x = process.add_noise(x0, t, eps)
    den = Denoiser(FixedNetwork(eps), process, "eps")
    per_sample, scalar = den(x, t), den(x, torch.tensor(0.4, dtype=F64))
    torch.testing.assert_close(per_sample.x0, scalar.x0)
    assert isinstance(scalar, Prediction) and scalar.alpha.shape == (5, 1)


def test_unknown_parameterisation() -> None:
    with pytest.raises(ValueError, match="'epsilon'"):
        Denoiser(FixedNetwork(torch.zeros(())), VPProcess(), "epsilon")
    with pytest.raises(ValueError, match="'score'"):
        make_parameterisation("score")


def test_parameterisations_are_chosen_once_and_round_trip_their_config() -> None:
    for name, cls in PARAMETERISATIONS.items():
        param = make_parameterisation(**{"name": name, "sigma_data": 0.7} if name == "edm" else {"name": name})
        assert type(param) is cls and param.config()["name"] == name
        assert type(make_parameterisation(**param.config())) is cls
    assert make_parameterisation("edm", sigma_data=0.7).sigma_data == 0.7
