"""Sampling edges with exact answers: x0 clipping and Imagen's dynamic thresholding against the rule computed by
hand, and bf16 sampling that really runs in bf16 and stays within 0.004 of fp32 (the README's digits run: 0.0032)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.denoisers import Prediction
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import DiscreteVPProcess
from diffusionlab.sampling.thresholding import Thresholded, dynamic_threshold
from diffusionlab.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- thresholding
def imagen_threshold(x0: np.ndarray, percentile: float, bound: float) -> np.ndarray:
    """Saharia et al. 2022, sec. 2.3, by hand: s = max(bound, p-quantile of |x0|) per sample, clip to [-s, s],
    divide by s (scaled back to the bound)."""
    s = np.maximum(bound, np.quantile(np.abs(x0.reshape(len(x0), -1)), percentile, axis=1))
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return np.clip(x0, -s, s) * bound / s


def fixed_x0() -> Tensor:
    """Three samples: all inside [-1, 1] (left alone), a ramp out to +-4, and small values with two outliers."""
    ramp = torch.linspace(-4.0, 4.0, 64)
    inside = 0.9 * torch.sin(torch.arange(64.0))
    outliers = 0.2 * torch.cos(torch.arange(64.0))
    outliers[[5, 40]] = torch.tensor([7.0, -9.0])
    return torch.stack([inside, ramp, outliers]).reshape(3, 1, 8, 8)


def test_dynamic_threshold_of_a_known_ramp_is_the_hand_computed_value() -> None:
    x0 = (torch.arange(1.0, 101.0) / 25).reshape(1, 1, 10, 10)  # |x0| = 0.04, 0.08, ..., 4
    # the 0.995 quantile (linear interpolation) sits at position 0.995 * 99 = 98.505: 3.96 + 0.505 * 0.04
    s = 3.96 + 0.505 * 0.04
    expected = x0.clamp(-s, s) / s
    torch.testing.assert_close(dynamic_threshold(x0, 0.995, 1.0), expected, rtol=1e-6, atol=1e-6)
    assert float(dynamic_threshold(x0).max()) == pytest.approx(1.0)


@pytest.mark.parametrize("percentile, bound", [(0.995, 1.0), (0.9, 1.0), (0.5, 2.0)])
def test_dynamic_threshold_is_imagens_rule(percentile: float, bound: float) -> None:
    x0 = fixed_x0()
    expected = imagen_threshold(x0.double().numpy(), percentile, bound)
    got = dynamic_threshold(x0, percentile, bound)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6, atol=1e-6)
    if bound == 1.0:
        assert torch.equal(got[0], x0[0])  # a sample inside the range is untouched (s = 1)


class FixedDenoiser:
    """A denoiser that predicts a fixed x0 (eps consistent with it) on a cosine DDPM process."""

    def __init__(self, x0: Tensor) -> None:
        self.process, self.x0 = DiscreteVPProcess("cosine", 1000), x0

    def __call__(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Tensor] | None = None) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float32)
        alpha = self.process.alpha(t).reshape(-1, 1, 1, 1)
        sigma = self.process.sigma(t).reshape(-1, 1, 1, 1)
        return Prediction(x, self.x0, (x - alpha * self.x0) / sigma, alpha, sigma)


@pytest.mark.parametrize("method", ["clip", "dynamic"])
def test_thresholded_replaces_x0_and_keeps_x_equal_to_alpha_x0_plus_sigma_eps(method: str) -> None:
    x0 = fixed_x0()
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.4)
    pred = Thresholded(FixedDenoiser(x0), method)(x, t)
    by_hand = x0.clamp(-1.0, 1.0) if method == "clip" else torch.from_numpy(imagen_threshold(x0.numpy(), 0.995, 1.0))
    torch.testing.assert_close(pred.x0, by_hand.float(), rtol=1e-6, atol=1e-6)
    assert not torch.equal(pred.x0, x0)  # the ramp and the outliers were changed
    process = DiscreteVPProcess("cosine", 1000)
    alpha, sigma = process.alpha(t).reshape(-1, 1, 1, 1), process.sigma(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(pred.eps, (x - alpha * pred.x0) / sigma, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x, rtol=1e-5, atol=1e-6)
    assert torch.equal(pred.x, x)


def test_no_thresholding_passes_the_prediction_through() -> None:
    x0 = fixed_x0()
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    inner = FixedDenoiser(x0)(x, 0.4)
    pred = Thresholded(FixedDenoiser(x0), "none")(x, 0.4)
    for name in ("x", "x0", "eps", "alpha", "sigma"):
        assert torch.equal(getattr(pred, name), getattr(inner, name)), name


# ---------------------------------------------------------------------------------------------- bf16
BF16_BOUND = 0.004  # README: bf16 samples within 0.0032 of fp32's (runs/digits); the tiny model below: ~0.0005


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A tiny unconditional 8x8 digits model after 40 training steps (an untrained UNet outputs exact zeros,
    which would hide any precision difference)."""
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(
            steps=40, batch_size=16, warmup_steps=5, ema_start=5, sample_every=0, final_eval=False, checkpoint_every=0
        ),
        sample=SampleConfig(steps=3),
    )
    trainer = Trainer(config, tmp_path_factory.mktemp("bf16"), progress=False, cpu=True, track=False)
    for step in range(config.train.steps):
        trainer.train_step(step)
    return trainer.pipeline


def output_dtypes(pipe: Pipeline, **settings: object) -> tuple[Tensor, set[torch.dtype]]:
    """Samples and the dtypes every convolution of the networks returned while making them."""
    seen: set[torch.dtype] = set()
    modules = [m for net in (pipe.network, pipe.ema) for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for m in modules]
    try:
        return pipe.sample(16, seed=3, **settings), seen
    finally:
        for h in hooks:
            h.remove()


def test_bf16_sampling_runs_in_bf16_and_stays_within_the_readme_bound(trained: Pipeline) -> None:
    fp32, fp32_types = output_dtypes(trained, mixed_precision="no")
    bf16, bf16_types = output_dtypes(trained, mixed_precision="bf16")
    assert fp32_types == {torch.float32}
    assert torch.bfloat16 in bf16_types  # the convolutions really ran in bf16
    diff = float((bf16 - fp32).abs().mean())
    assert diff > 0.0  # ... and it shows in the samples
    assert diff <= BF16_BOUND, diff
    assert not math.isnan(diff) and bf16.dtype == torch.float32 and bf16.shape == (16, 1, 8, 8)
