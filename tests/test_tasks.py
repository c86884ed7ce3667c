"""Applications (tasks/): inpainting, image-to-image, denoising, anomaly scores, augmentation folders.

Exact answers come from analytic denoisers of Gaussian data; pipeline-level behaviour from tiny untrained models.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from diffusionlab.config import (
    MODEL_SIZES,
    AutoencoderConfig,
    AutoencoderNetworkConfig,
    DataConfig,
    LatentConfig,
    ModelConfig,
    NetworkConfig,
    SampleConfig,
)
from diffusionlab.data import load_image_folder
from diffusionlab.denoisers import Prediction
from diffusionlab.networks.autoencoder import Autoencoder
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import GaussianProcess, broadcast_like, make_process
from diffusionlab.sampling import NoiseSource, time_grid
from diffusionlab.tasks import (
    KnownRegion,
    anomaly_scores,
    denoise,
    estimate_noise_sigma,
    img2img,
    inpaint,
    log_snr_levels,
    model_space_keep,
    noise_time,
    outpaint,
    posterior_mean,
    read_image,
    rect_mask,
    repaint,
    repaint_schedule,
    sample_image_folder,
    save_image,
    sdedit,
    start_index,
    write_scores_csv,
)
from diffusionlab.tasks.common import run_sampler

pytestmark = pytest.mark.usefixtures("one_thread")


class GaussianDenoiser:
    """The exact denoiser of data x0 ~ N(mu, C) (C over the last axis, shared by every other axis):
    E[x0 | x_t] = mu + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha mu)."""

    def __init__(self, process: GaussianProcess, mu: float, cov: torch.Tensor) -> None:
        self.process, self.mu, self.cov = process, mu, cov.double()

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: object = None) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t.reshape(1) if t.ndim == 0 else t  # one time for all: one gain matrix
        a, s = self.process.alpha(t).double(), self.process.sigma(t).double()
        eye = torch.eye(len(self.cov), dtype=torch.float64)
        a3, s3 = a[:, None, None], s[:, None, None]
        gain = a3 * self.cov @ torch.linalg.inv(a3**2 * self.cov + s3**2 * eye)
        xd = x.double() - broadcast_like(a, x) * self.mu
        x0 = (self.mu + torch.einsum("nij,n...j->n...i", gain, xd)).to(x.dtype)
        alpha, sigma = broadcast_like(a.float(), x), broadcast_like(s.float(), x)
        return Prediction(x, x0, (x - alpha * x0) / sigma, alpha, sigma)


class BatchNoise:
    """N(0, I) noise from one generator: the fast stand-in for a per-sample NoiseSource in large toy batches."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=dtype)


def tiny_pipe(num_classes: int | None = None, size: int = 8, channels: int = 1) -> Pipeline:
    torch.manual_seed(0)
    names = [f"c{i}" for i in range(num_classes)] if num_classes else None
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], in_channels=channels, num_classes=num_classes),
        data=DataConfig(image_size=size, channels=channels, num_classes=num_classes, class_names=names),
        sample=SampleConfig(steps=4),
    )
    return Pipeline(config)


def latent_pipe() -> Pipeline:
    """A latent model (random weights): 1x8x8 images <-> 2x4x4 latents."""
    torch.manual_seed(0)
    ae = Autoencoder(
        AutoencoderConfig(network=AutoencoderNetworkConfig(latent_channels=2, base_channels=8, channel_mults=[1, 2]))
    )
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], in_channels=2, num_classes=None),
        data=DataConfig(image_size=8, channels=1),
        latent=LatentConfig(scaling_factor=1.0),
        sample=SampleConfig(steps=4, thresholding="none"),
    )
    return Pipeline(config, autoencoder=ae)


def images8(n: int = 3, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, channels, 8, 8), generator=g).float() / 255).contiguous()


# ----------------------------------------------------------------------------------------------- inpainting


def test_repaint_schedule_matches_the_paper_setting() -> None:
    levels = repaint_schedule(250, jump_length=10, jump_n_sample=10)
    steps = list(zip(levels[:-1], levels[1:], strict=True))
    assert levels[0] == 250 and levels[-1] == 0
    assert all(abs(b - a) == 1 for a, b in steps) and max(levels) <= 250 and min(levels) >= 0
    jump_levels = list(range(1, 241, 10))  # 24 levels, each passed 10 times in all
    ups = sum(b > a for a, b in steps)
    assert ups == 10 * 9 * len(jump_levels) == 2160
    assert len(steps) == 250 + 2 * ups  # 4570 transitions, 2410 network evaluations
    arrivals = [b for a, b in steps if b < a]
    assert all(arrivals.count(level) == 10 for level in jump_levels)
    assert arrivals.count(5) == 10  # every level below a jump level's top is re-run as often
    assert repaint_schedule(7, 3, 1) == [7, 6, 5, 4, 3, 2, 1, 0]  # no resampling: plain descent
    with pytest.raises(ValueError, match="jump_length"):
        repaint_schedule(10, 0, 2)


@pytest.mark.parametrize("method", ["repaint", "replace"])
def test_inpainting_keeps_known_pixels_exactly(method: str, tmp_path: Path) -> None:
    pipe = tiny_pipe(num_classes=3)
    x = images8(3)
    mask = rect_mask(8, 8, (2, 1, 6, 5))
    out = inpaint(pipe, x, mask, method=method, steps=4, jump_length=2, jump_n_sample=2, labels=[0, 1, 2])
    assert out.shape == x.shape
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])  # float output: bit for bit
    assert (out[:, :, mask] - x[:, :, mask]).abs().max() > 0.01  # the hole is filled with something new
    save_image(out[0], tmp_path / "out.png")  # 8-bit round trip
    assert torch.equal(read_image(tmp_path / "out.png")[:, ~mask], x[0][:, ~mask])
    again = inpaint(
        pipe, x, mask, method=method, steps=4, jump_length=2, jump_n_sample=2, labels=[0, 1, 2], batch_size=2
    )
    assert torch.allclose(again, out, atol=1e-5)  # image i uses the noise of (seed, i) at any batch size


def test_latent_inpainting_shrinks_the_mask_and_pastes_pixels_back() -> None:
    fill = rect_mask(8, 8, (3, 3, 5, 5))[None, None]
    keep = model_space_keep(fill, (4, 4))
    assert keep.shape == (1, 1, 4, 4) and int((~keep).sum()) == 4  # every latent pixel touching the hole is filled
    pipe = latent_pipe()
    x = images8(2)
    for method in ("repaint", "replace"):
        out = inpaint(pipe, x, fill[0, 0], method=method, steps=3, jump_length=1, jump_n_sample=2)
        assert torch.equal(out[:, :, ~fill[0, 0]], x[:, :, ~fill[0, 0]])


def test_outpainting_keeps_the_original_and_fills_the_border() -> None:
    pipe = tiny_pipe()
    small = images8(2)[:, :, 1:7, 2:6]  # 4 wide, 6 high
    out = outpaint(pipe, small, (2, 1, 2, 1), steps=3, jump_length=1, jump_n_sample=2)
    assert out.shape == (2, 1, 8, 8)
    assert torch.equal(out[:, :, 1:7, 2:6], small)


def test_repaint_and_reconstruction_guidance_approach_the_exact_conditional() -> None:
    """x0 ~ N(0, [[1, .9], [.9, 1]]), x0[0] = 1.5 known: x0[1] | x0[0] ~ N(1.35, 0.19)."""
    process = make_process("ddpm", schedule="cosine")
    den = GaussianDenoiser(process, 0.0, torch.tensor([[1.0, 0.9], [0.9, 1.0]]))
    n = 1000
    known = torch.zeros(n, 1, 1, 2)
    known[..., 0] = 1.5
    keep = torch.tensor([True, False]).expand(n, 1, 1, 2)
    ts = time_grid(process, 40, "uniform")
    x = repaint(den, known, keep, ts, repaint_schedule(40, 5, 8), noise=BatchNoise(0))
    assert torch.equal(x[..., 0], known[..., 0])
    mean, var = x[..., 1].mean().item(), x[..., 1].var().item()
    assert abs(mean - 1.35) < 0.1 and abs(var - 0.19) < 0.05, (mean, var)
    wrapped = KnownRegion(den, known, keep, BatchNoise(1))
    y = run_sampler(wrapped, torch.randn(n, 1, 1, 2), ts, "ddpm", None, BatchNoise(2))
    assert abs(y[..., 1].mean().item() - 1.35) > 0.3  # the replacement method's known bias (RePaint, sec. 4.1)
    guided = KnownRegion(den, known, keep, BatchNoise(1), reconstruction_guidance=4.0)
    z = run_sampler(guided, torch.randn(n, 1, 1, 2), ts, "ddpm", None, BatchNoise(2))
    assert abs(z[..., 1].mean().item() - 1.35) < 0.2  # reconstruction guidance (Ho et al. 2022) corrects most of it


def test_mask_of_another_size_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="mask is 6x8 but the image is 8x8"):
        inpaint(tiny_pipe(), images8(1), torch.zeros(8, 6, dtype=torch.bool), steps=2)
    with pytest.raises(ValueError, match="does not fit a 8x8 image"):
        rect_mask(8, 8, (0, 0, 9, 4))


# ----------------------------------------------------------------------------------------------- image-to-image


def test_sdedit_small_strength_keeps_the_input_and_full_strength_ignores_it() -> None:
    process = make_process("ddpm", schedule="cosine")
    den = GaussianDenoiser(process, 0.0, torch.eye(4))
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    ts = time_grid(process, 50, "uniform")
    near = sdedit(den, x0, 0.01, ts, sampler="ddim", noise=NoiseSource(0, range(64)))
    assert (near - x0).abs().max() < 0.05  # one step from t_min
    far = sdedit(den, x0, 0.5, ts, sampler="ddim", noise=NoiseSource(0, range(64)))
    assert (far - x0).abs().mean() > 10 * (near - x0).abs().mean()
    assert start_index(0.6, 50) == 20 and start_index(1.0, 50) == 0 and start_index(1e-6, 50) == 49
    pipe = tiny_pipe(num_classes=3)
    a = img2img(pipe, images8(2), 1.0, labels=[1, 2], steps=3)
    b = img2img(pipe, torch.rand(2, 1, 8, 8), 1.0, labels=[1, 2], steps=3)
    assert torch.equal(a, b)  # strength 1 ignores the input ...
    assert torch.equal(a, pipe.sample(labels=[1, 2], steps=3))  # ... and is exactly pipe.sample


@pytest.mark.parametrize("strength", [0.0, 1.5, -0.2])
def test_strength_outside_the_unit_interval_is_rejected(strength: float) -> None:
    with pytest.raises(ValueError, match=r"strength=.* must lie in \(0, 1\]"):
        img2img(tiny_pipe(), images8(1), strength)


# ----------------------------------------------------------------------------------------------- denoising


@pytest.mark.parametrize("name", ["ddpm", "vp", "flow", "edm"])
def test_posterior_mean_is_the_closed_form_mmse(name: str) -> None:
    """x0 ~ N(mu, s0^2) per pixel, y = x0 + sigma n: E[x0 | y] = mu + s0^2 / (s0^2 + sigma^2) (y - mu)."""
    process = make_process(name)
    mu, s0 = 0.3, 0.7
    den = GaussianDenoiser(process, mu, torch.eye(4) * s0**2)
    y = torch.randn(5, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 0.2, 0.8):
        exact = mu + s0**2 / (s0**2 + sigma**2) * (y - mu)
        assert torch.allclose(posterior_mean(den, y, sigma), exact, atol=2e-4), (name, sigma)
        t = noise_time(process, sigma)
        assert abs(float(process.sigma(t) / process.alpha(t)) - sigma) < 1e-4 * sigma


def test_denoise_through_a_pipeline_uses_model_units() -> None:
    """Pixel std sigma is model std 2 sigma: the pipeline's answer is the posterior mean at that level."""
    pipe = tiny_pipe()
    noisy = images8(2) + 0.1 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = denoise(pipe, noisy, 0.1, mode="mean", thresholding="none")
    den, _ = pipe.guided_denoiser(2, thresholding="none")
    expected = pipe.decode(posterior_mean(den, pipe.encode(noisy), 0.2))
    assert torch.allclose(out, expected, atol=1e-6)
    drawn = denoise(pipe, noisy, 0.1, mode="sample", steps=4)
    assert drawn.shape == noisy.shape and not torch.equal(drawn, out)


def test_noise_estimate_is_within_ten_percent() -> None:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    clean = (0.3 + 0.4 * torch.sin(3 * xx) * yy)[None, None].expand(4, 1, 64, 64)
    for sigma in (0.02, 0.1, 0.3):
        est = estimate_noise_sigma(clean + sigma * torch.randn(clean.shape, generator=g))
        assert ((est - sigma).abs() / sigma).max() < 0.1, (sigma, est)


# ----------------------------------------------------------------------------------------------- anomaly, augmentation


def test_anomaly_scores_and_csv(tmp_path: Path) -> None:
    pipe = tiny_pipe()
    x = images8(4)
    for method in ("recon", "denoising", "likelihood"):
        s = anomaly_scores(pipe, x, method, t=0.3, steps=4, num_times=3, ode_tolerance=0.1)
        assert s.shape == (4,) and bool((s > 0).all())
        again = anomaly_scores(pipe, x, method, t=0.3, steps=4, num_times=3, ode_tolerance=0.1, batch_size=3)
        assert torch.allclose(s, again, rtol=1e-3)  # the same at any batch size (up to the ODE's tolerance)
    den, _ = pipe.guided_denoiser(1)
    times, width = log_snr_levels(den, 6, (-3.0, 3.0))
    lam = pipe.process.log_snr(times)
    assert width == 6.0 and torch.allclose(lam, torch.linspace(-2.5, 2.5, 6, dtype=lam.dtype), atol=1e-6)
    with pytest.raises(ValueError, match="log_snr_range"):
        log_snr_levels(den, 6, (3.0, -3.0))
    names = ["a.png", "b.png", "c.png", "d.png"]
    write_scores_csv(names, torch.tensor([0.2, 0.9, 0.1, 0.5]), tmp_path / "scores.csv")
    rows = list(csv.reader((tmp_path / "scores.csv").open()))
    assert rows[0] == ["rank", "score", "image"]
    assert [r[2] for r in rows[1:]] == ["b.png", "d.png", "a.png", "c.png"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_augmentation_folder_round_trips_with_labels(tmp_path: Path) -> None:
    pipe = tiny_pipe(num_classes=3)
    paths = sample_image_folder(pipe, tmp_path / "synth", per_class=2, steps=2)
    assert [p.relative_to(tmp_path / "synth").as_posix() for p in paths[:3]] == [
        "c0/0000.png",
        "c0/0001.png",
        "c1/0000.png",
    ]
    back = load_image_folder(tmp_path / "synth", image_size=8, channels=1)
    assert back.class_names == ["c0", "c1", "c2"] and back.labels.tolist() == [0, 0, 1, 1, 2, 2]
    images = pipe.sample(labels=[0, 0, 1, 1, 2, 2], steps=2)
    assert (back.images - (images * 2 - 1)).abs().max() <= 1 / 255 + 1e-6  # 8-bit quantisation only
    with pytest.raises(ValueError, match="not empty"):
        sample_image_folder(pipe, tmp_path / "synth", per_class=1, steps=2)
