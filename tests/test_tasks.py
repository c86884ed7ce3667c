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
from diffusionlab.sampling import NoiseSource, solve, time_grid
from diffusionlab.sampling.request import SampleRequest, SamplerSpec
from diffusionlab.tasks import (
    KnownRegion,
    anomaly_scores,
    denoise,
    encoding_scale,
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


def exact_pipe(size: int = 32, mu: float = 0.0, s0: float = 0.2) -> Pipeline:
    """A pixel-space pipeline whose guided denoiser is the exact one of model-space data x0 ~ N(mu, s0^2) per pixel
    (pixels x0 independent), so a task's answer can be checked against closed forms."""
    pipe = tiny_pipe(size=size)
    den = GaussianDenoiser(pipe.process, mu, torch.eye(size) * s0**2)
    pipe.guided_denoiser = lambda n, request=None, **settings: (den, None)  # type: ignore[method-assign]
    return pipe


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
    y = solve(wrapped, torch.randn(n, 1, 1, 2), ts, sampler="ddpm", noise=BatchNoise(2))
    assert abs(y[..., 1].mean().item() - 1.35) > 0.3  # the replacement method's known bias (RePaint, sec. 4.1)
    guided = KnownRegion(den, known, keep, BatchNoise(1), reconstruction_guidance=4.0)
    z = solve(guided, torch.randn(n, 1, 1, 2), ts, sampler="ddpm", noise=BatchNoise(2))
    assert abs(z[..., 1].mean().item() - 1.35) < 0.2  # reconstruction guidance (Ho et al. 2022) corrects most of it


def test_tasks_take_one_request_or_its_settings_by_name() -> None:
    pipe = tiny_pipe(num_classes=3)
    x, mask = images8(2), rect_mask(8, 8, (2, 1, 6, 5))
    by_name = inpaint(pipe, x, mask, method="replace", labels=[0, 2], steps=3, seed=5)
    request = SampleRequest.from_settings(labels=[0, 2], steps=3, seed=5, sampler="ddpm")
    assert torch.equal(inpaint(pipe, x, mask, method="replace", request=request), by_name)  # ddpm: inpaint's default
    options = {"sampler": "ddim", "steps": 3, "seed": 1}
    edited = img2img(pipe, x, 0.7, sampler_options={"eta": 0.5}, **options)
    assert torch.equal(edited, img2img(pipe, x, 0.7, eta=0.5, **options))  # a solver option, either way
    assert torch.equal(edited, img2img(pipe, x, 0.7, request=SampleRequest.from_settings(eta=0.5, **options)))
    with torch.no_grad():  # a network whose output layer is not zero, so its precision shows
        for w in pipe.network.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
    fp32 = img2img(pipe, x, 0.7, eta=0.5, **options)
    bf16 = img2img(pipe, x, 0.7, mixed_precision="bf16", eta=0.5, **options)
    assert not torch.equal(bf16, fp32) and (bf16 - fp32).abs().max() < 0.2  # the network ran in bfloat16
    with pytest.raises(ValueError, match="not both"):
        img2img(pipe, x, 0.7, request=request, steps=4)
    with pytest.raises(ValueError, match=r"option\(s\) \['eta'\] are not known to sampler 'ddpm'"):
        denoise(pipe, x, 0.1, mode="sample", eta=0.5)
    with pytest.raises(ValueError, match="reconstruction_guidance applies to method='replace' only"):
        inpaint(pipe, x, mask, reconstruction_guidance=1.0)
    with pytest.raises(ValueError, match="jump_length=0 must be a positive integer"):
        inpaint(pipe, x, mask, jump_length=0)


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
    spec = SamplerSpec(sampler="ddim", steps=50, spacing="uniform")
    near = sdedit(den, x0, 0.01, spec, noise=NoiseSource(0, range(64)))
    assert (near - x0).abs().max() < 0.05  # one step from t_min
    far = sdedit(den, x0, 0.5, spec, noise=NoiseSource(0, range(64)))
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


def test_denoise_sample_draws_from_the_exact_posterior() -> None:
    """x0 ~ N(0, s0^2) per pixel (model space), y = x0 + sigma n with sigma = 2 x the pixel std: x0 | y ~
    N(k y, k sigma^2), k = s0^2 / (s0^2 + sigma^2). Over M = 8192 pixel draws the regression slope of x on y is k
    and the standardised residuals have variance 1, within 5 standard errors of the sample size."""
    s0, sigma_pix = 0.2, 0.1
    sigma = 2 * sigma_pix
    g = torch.Generator().manual_seed(5)
    x0 = s0 * torch.randn(8, 1, 32, 32, generator=g)
    y = x0 + sigma * torch.randn(x0.shape, generator=g)
    out = denoise(exact_pipe(s0=s0), (y + 1) / 2, sigma_pix, mode="sample", steps=4000, seed=1)
    x = (out * 2 - 1).double().flatten()
    y = y.double().flatten()
    k, var, m = s0**2 / (s0**2 + sigma**2), s0**2 * sigma**2 / (s0**2 + sigma**2), len(x)
    slope = float((x * y).sum() / (y * y).sum())
    assert abs(slope - k) < 5 * (var / float((y * y).sum())) ** 0.5, (slope, k)  # the posterior mean k y
    z = (x - k * y) / var**0.5
    assert abs(float(z.mean())) < 5 / m**0.5, float(z.mean())
    assert abs(float(z.var()) - 1) < 5 * (2 / m) ** 0.5, float(z.var())  # the posterior variance k sigma^2


def test_encoding_scale_is_exact_at_any_image_size() -> None:
    for size, channels in ((8, 1), (32, 3)):  # 32x32 RGB: 6144 probes, some once within 1e-3 of black
        assert encoding_scale(tiny_pipe(size=size, channels=channels)) == 2.0


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


def test_anomalous_image_scores_higher_and_the_denoising_score_has_its_closed_form() -> None:
    """Exact denoiser of x0 ~ N(0, s0^2) per pixel on a VP process (alpha^2 = sigmoid(lambda)). With
    x_t = a x0 + s eps, eps_hat - eps = (r a / s) x0 + (r - 1) eps, r = s^2 / (a^2 s0^2 + s^2), so the denoising
    score's mean over its noise is W/2 mean_k [(r_k a_k / s_k)^2 mean_d x0^2 + (1 - r_k)^2], its variance
    (W/2K)^2 sum_k [4 (r_k a_k / s_k)^2 (r_k - 1)^2 sum_d x0^2 + 2 D (r_k - 1)^4] / D^2."""
    s0, num_times, (lo, hi) = 0.2, 8, (-4.0, 4.0)
    pipe = exact_pipe(s0=s0)
    x0 = s0 * torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    x0[0, :, 8:24, 8:24] += 3 * s0  # image 0: a bright square, three standard deviations off
    images = ((x0 + 1) / 2).clamp(0, 1)
    recon = anomaly_scores(pipe, images, "recon", t=0.35, steps=100)
    scores = anomaly_scores(pipe, images, "denoising", num_times=num_times, log_snr_range=(lo, hi))
    for s in (recon, scores):
        assert float(s[0]) > 1.5 * float(s[1:].max()), s
    lam = lo + (torch.arange(num_times, dtype=torch.float64) + 0.5) / num_times * (hi - lo)
    a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
    r = s2 / (a2 * s0**2 + s2)
    gain_sq, b = r**2 * a2 / s2, r - 1
    x = (images[1] * 2 - 1).double()  # one typical image's own x0, after the 8-bit-free encoding
    mean = (hi - lo) / 2 * float((gain_sq * (x**2).mean() + b**2).mean())
    var_k = (4 * gain_sq * b**2 * (x**2).sum() + 2 * b**4 * x.numel()) / x.numel() ** 2
    std = (hi - lo) / (2 * num_times) * float(var_k.sum().sqrt())
    assert abs(float(scores[1]) - mean) < 5 * std, (float(scores[1]), mean, std)


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
