"""VDM (issue 21): the learned monotone log-SNR, the continuous-time VLB (exact on a Gaussian with its exact
denoiser), the variance-minimising schedule gradient, and a VDM model trained, saved, loaded and scored."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffusionlab.config import MODEL_SIZES, DataConfig, DiffusionConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.denoisers import Prediction
from diffusionlab.evaluation.likelihood import continuous_vlb, continuous_vlb_terms
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import DiscreteVPProcess, LearnedVPProcess, MonotoneLogSNR, broadcast_like
from diffusionlab.training import Trainer
from diffusionlab.training.vdm import VarianceMinimisingSchedule, low_discrepancy_times

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_learned_log_snr_is_monotone_with_its_ends_and_its_derivative() -> None:
    schedule = MonotoneLogSNR(-10.0, 4.0, hidden=64)
    with torch.no_grad():
        schedule.w2.mul_(5)
        schedule.w3.fill_(0.5)  # a curved schedule, not the near-linear start
    t = torch.linspace(0, 1, 201, dtype=torch.float64, requires_grad=True)
    g, dg = schedule(t)
    assert g[0].item() == pytest.approx(-10.0, abs=1e-12) and g[-1].item() == pytest.approx(4.0, abs=1e-12)
    assert bool((g[1:] > g[:-1]).all()) and bool((dg > 0).all())
    auto = torch.autograd.grad(g.sum(), t)[0]
    torch.testing.assert_close(dg, auto, rtol=1e-10, atol=1e-10)
    process = LearnedVPProcess(schedule=schedule)
    s = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(process.alpha(s) ** 2 + process.sigma(s) ** 2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(s)), s, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="learned schedule"):
        LearnedVPProcess().for_network(torch.nn.Linear(2, 2))


class ExactGaussianDenoiser:
    """The exact denoiser of data N(0, s^2 I): x0_hat = alpha s^2 x / (alpha^2 s^2 + sigma^2)."""

    def __init__(self, process, s: float) -> None:  # type: ignore[no-untyped-def]
        self.process, self.s = process, s

    def __call__(self, x, t, cond=None):  # type: ignore[no-untyped-def]
        a, sg = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        x0 = a * self.s**2 * x / (a**2 * self.s**2 + sg**2)
        return Prediction(x, x0, (x - a * x0) / sg, a, sg)


def _vlb(denoiser, x: torch.Tensor, draws: int = 32) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Per-sample VLBs, ``draws`` stratified times each; the same draws for every denoiser (paired comparisons)."""
    process, g = denoiser.process, torch.Generator().manual_seed(1)
    u = torch.rand(len(x), generator=g, dtype=torch.float64)
    total = torch.zeros(len(x), dtype=torch.float64)
    for j in range(draws):
        t = process.t_min + (j + u) * (process.t_max - process.t_min) / draws
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
        total += sum(continuous_vlb_terms(denoiser, x, t, eps, discrete=False)) / draws
    return total


# the learned process at its start (linear log-SNR), with a narrow schedule network: the width does not matter here
VDM = LearnedVPProcess(schedule=MonotoneLogSNR(hidden=16).requires_grad_(False))


@pytest.mark.parametrize("process", [VDM, DiscreteVPProcess("cosine")], ids=["vdm", "ddpm-cosine"])
def test_the_continuous_vlb_is_exact_on_a_gaussian_with_its_exact_denoiser(process) -> None:  # type: ignore[no-untyped-def]
    """E[VLB] = E[-log p(x)] (the differential entropy) for N(0, 0.3^2) in 4 dimensions, within the Monte Carlo
    error; a wrong denoiser (std 0.4) pays more than that error, on the same draws."""
    s, n, d = 0.3, 4096, 4
    x = s * torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nll = (0.5 * (x / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)).sum(1)
    exact = _vlb(ExactGaussianDenoiser(process, s), x)
    gap, extra = exact - nll, _vlb(ExactGaussianDenoiser(process, 0.4), x) - exact

    def se(v: torch.Tensor) -> float:
        return float(v.std() / len(v) ** 0.5)

    # measured (nats per sample of 4 dimensions, entropy 0.893): vdm gap -0.040 (se 0.053), ddpm's cosine -0.061
    # (se 0.206: its log-SNR falls steeply near t_min, a noisier estimate); the wrong denoiser pays 0.255 (se 0.011)
    assert abs(float(gap.mean())) < 3 * se(gap) + 1e-3, (float(gap.mean()), se(gap))
    if isinstance(process, LearnedVPProcess):
        assert se(gap) / d < 0.02 and abs(float(gap.mean())) / d < 0.02, (float(gap.mean()), se(gap))
    assert float(extra.mean()) > 5 * se(extra), (float(extra.mean()), se(extra))


def test_the_schedule_descends_the_squared_diffusion_loss_and_the_network_the_loss() -> None:
    """The hook turns the schedule's gradient of mean(L) into that of mean(L^2); the network's is unchanged."""
    net = torch.nn.Linear(3, 3).double()
    schedule = MonotoneLogSNR(hidden=8).double()
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = low_discrepancy_times(5, torch.Generator().manual_seed(2))

    def diffusion(process) -> torch.Tensor:  # type: ignore[no-untyped-def]
        def denoiser(x, tt, cond=None):  # type: ignore[no-untyped-def]
            a, s = broadcast_like(process.alpha(tt), x), broadcast_like(process.sigma(tt), x)
            e = net(x)
            return Prediction(x, (x - s * e) / a, e, a, s)

        denoiser.process = process  # type: ignore[attr-defined]
        return continuous_vlb_terms(denoiser, x0, t, eps, t0=0.0)[0]

    hooked = VarianceMinimisingSchedule(schedule, t)
    loss = diffusion(LearnedVPProcess(schedule=hooked))  # type: ignore[arg-type]
    hooked.losses = loss.detach()
    params = [*schedule.parameters(), *net.parameters()]
    got = torch.autograd.grad(loss.mean(), params, allow_unused=True)
    plain = diffusion(LearnedVPProcess(schedule=schedule))
    squared = torch.autograd.grad(
        plain.pow(2).mean(), list(schedule.parameters()), allow_unused=True, retain_graph=True
    )
    linear = torch.autograd.grad(plain.mean(), list(net.parameters()))
    n = len(list(schedule.parameters()))
    for a, b in zip(got[:n], squared, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b)
    for a, b in zip(got[n:], linear, strict=True):
        torch.testing.assert_close(a, b)
    times = low_discrepancy_times(8, torch.Generator().manual_seed(3))
    gaps = (times.sort().values.diff() - 1 / 8).abs()
    assert float(gaps.max()) < 1e-12 and 0 <= float(times.min()) and float(times.max()) < 1


def vdm_config(steps: int) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"]),
        diffusion=DiffusionConfig(
            process={"name": "vdm", "gamma_min": -10.0, "gamma_max": 6.0}, parameterisation="eps"
        ),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(
            steps=steps,
            batch_size=32,
            lr=3e-3,
            warmup_steps=5,
            ema_start=0,
            ema_decay=0.9,
            sample_every=0,
            final_eval=False,
            checkpoint_every=0,
            log_with=[],
        ),  # fmt: skip
    )


def test_a_vdm_model_trains_on_its_vlb_and_its_schedule_travels_with_the_weights(tmp_path: Path) -> None:
    trainer = Trainer(vdm_config(120), tmp_path, progress=False, track=False)
    schedule = trainer.objective.model.network.schedule
    assert (float(schedule.gamma_0), float(schedule.gamma_1)) == (-10.0, 6.0)
    losses = [trainer.train_step(s)[0] for s in range(120)]
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20, (losses[:3], losses[-3:])
    trainer.start_step = 120  # the steps are taken: train() only saves the model folder
    trainer.train()
    pipe = Pipeline.load(tmp_path)
    assert pipe.config.network.learned_schedule and pipe.config.diffusion.process.name == "vdm"
    learned = pipe.ema.schedule
    assert float(learned.gamma_0) != -10.0 or float(learned.gamma_1) != 6.0  # the ends moved
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(pipe.process.log_snr(t), -learned(t)[0])  # sampling runs the EMA's schedule
    samples = pipe.sample(4, seed=0, steps=10)
    assert samples.shape == (4, 1, 8, 8) and bool(torch.isfinite(samples).all())
    again = Pipeline.load(tmp_path).sample(4, seed=0, steps=10)
    assert torch.equal(samples, again)
    x = pipe.encode(samples)
    bound = continuous_vlb(pipe.denoiser(), x, draws=4)
    assert bool(torch.isfinite(bound.bpd).all()) and float(bound.bpd.mean()) > 0
    from diffusionlab.evaluation import evaluate_model

    metrics = evaluate_model(pipe, ["vlb"], num_samples=10, bpd_images=16, seed=0)["metrics"]
    # the continuous VLB of 8-bit digits: above 0 and far below the 8 bits/dim of a uniform guess
    assert 0 < metrics["vlb"] < 8 and metrics["vlb_prior"] < 0.01, metrics


def test_a_vdm_process_for_data_other_than_pixels_is_one_clear_error(tmp_path: Path) -> None:
    config = ModelConfig(
        space="points",
        network=NetworkConfig(kind="mlp", dim=2, width=16, depth=1),
        diffusion=DiffusionConfig(process={"name": "vdm"}, parameterisation="eps"),
        data=DataConfig(dataset="toy:two_moons"),
        train=TrainConfig(steps=1, final_eval=False, log_with=[]),
    )
    with pytest.raises(ValueError, match="decoder of 8-bit pixels"):
        Trainer(config, tmp_path, progress=False, track=False)
    with pytest.raises(ValueError, match="gamma_min=5.0 must be below"):
        DiffusionConfig(process={"name": "vdm", "gamma_min": 5.0, "gamma_max": -1.0})
