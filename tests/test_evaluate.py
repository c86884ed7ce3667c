"""``evaluate_model`` against answers worked out here: a stub model with fixed samples, reference sets whose metrics
are countable or in closed form, exact Gaussian denoisers whose likelihoods are known, and the domain classifier's
features computed directly."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from torch import Tensor

from diffusionlab.config import DataConfig, DiffusionConfig, ModelConfig, NetworkConfig
from diffusionlab.data import eight_gaussians_params, load_digits_dataset, load_toy_dataset
from diffusionlab.denoisers import Prediction
from diffusionlab.evaluation import (
    ClassifierFeatures,
    DomainClassifier,
    EvaluationOptions,
    ddpm_vlb,
    density_coverage,
    evaluate_model,
    fid_from_features,
    kernel_inception_distance,
    mmd_rbf,
    precision_recall,
    save_classifier,
    sliced_wasserstein,
)
from diffusionlab.evaluation import classifier as classifier_module
from diffusionlab.evaluation.evaluate import _HELD_OUT_SEED_OFFSET
from diffusionlab.processes import GaussianProcess, broadcast_like
from diffusionlab.sampling import NoiseSource
from diffusionlab.sampling.request import SampleRequest

pytestmark = pytest.mark.usefixtures("one_thread")

# 1-D features (8-bit grey levels of 1x1 images): ten real levels 0, 10, ..., 90 and ten generated ones, all odd, so
# no distance between a real and a generated point (odd) equals a k-NN radius (even): no ties at a ball's edge.
REAL = list(range(0, 100, 10))
NEAR, MIDDLE, FAR = [1, 3, 5, 7], [43, 45], [201, 203, 205, 207]
FAKE = NEAR + MIDDLE + FAR


class GaussianDenoiser:
    """The exact denoiser of data whose every coordinate is independent N(mean, var): E[x0 | x_t] =
    mean + a var (x_t - a mean) / (a^2 var + s^2)."""

    def __init__(self, process: GaussianProcess, mean: float, var: float) -> None:
        self.process, self.mean, self.var = process, mean, var

    def __call__(self, x: Tensor, t: Tensor | float, cond: object = None) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        a, s = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        x0 = self.mean + a * self.var * (x - a * self.mean) / (a * a * self.var + s * s)
        return Prediction(x, x0, (x - a * x0) / s, a, s)

    def log_marginal(self, x: np.ndarray, t: float) -> np.ndarray:
        """log p_t(x) summed over coordinates, x (N, D): N(a mean, a^2 var + s^2) per coordinate."""
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(self.process.alpha(tt)), float(self.process.sigma(tt))
        var = a * a * self.var + s * s
        return (-0.5 * np.log(2 * math.pi * var) - (x - a * self.mean) ** 2 / (2 * var)).sum(1)


class StubModel:
    """An ``EvaluableModel`` whose samples are fixed tensors and whose denoiser is given; records every call."""

    device = torch.device("cpu")

    def __init__(self, config: ModelConfig, samples: Tensor, denoiser: Any = None) -> None:
        self.config, self.samples, self.denoiser = config, samples, denoiser
        self.sample_calls: list[tuple[int | None, SampleRequest | None, int]] = []
        self.denoiser_calls: list[dict[str, Any]] = []

    def sample(self, num_samples: int | None = None, labels: Any = None, **keywords: Any) -> Tensor:
        assert labels is None and set(keywords) == {"request", "batch_size", "progress"}  # all else is in the request
        self.sample_calls.append((num_samples, keywords["request"], keywords["batch_size"]))
        return self.samples.clone()

    def encode(self, data: Tensor) -> Tensor:
        return data * 2.0 - 1.0  # pixels in [-1, 1]: the model space bits/dim is defined in

    def guided_denoiser(self, num_samples: int, request: SampleRequest | None = None, **settings: Any) -> Any:
        self.denoiser_calls.append({"num_samples": num_samples, "request": request, **settings})
        return self.denoiser, None


@pytest.fixture(scope="module")
def grey_levels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of ten 1x1 grey PNGs at the REAL levels: the reference set, read as users' data is."""
    folder = tmp_path_factory.mktemp("levels")
    for level in REAL:
        Image.fromarray(np.full((1, 1), level, dtype=np.uint8), mode="L").save(folder / f"level-{level:03d}.png")
    return folder


def levels_config(folder: Path, **diffusion: Any) -> ModelConfig:
    return ModelConfig(
        data=DataConfig(dataset=str(folder), image_size=1, channels=1),
        network=NetworkConfig(num_classes=0),
        diffusion=DiffusionConfig(**diffusion),
    )


def grey(levels: list[int]) -> Tensor:
    """1x1 grey images (N, 1, 1, 1) in [0, 1] at 8-bit levels, in float32 as samples are."""
    return (torch.tensor(levels, dtype=torch.float32) / 255.0).reshape(-1, 1, 1, 1)


def as_features(levels: list[int]) -> list[float]:
    """The pixel features of those images: float32 level / 255, read as float64."""
    return grey(levels).flatten().double().tolist()


def unbiased_polynomial_mmd2(x: list[float], y: list[float]) -> float:
    """Unbiased MMD^2 with k(a, b) = (a b / d + 1)^3, d = 1, written out pair by pair (Binkowski et al. 2018)."""

    def k(a: float, b: float) -> float:
        return (a * b + 1.0) ** 3

    xx = sum(k(a, b) for i, a in enumerate(x) for j, b in enumerate(x) if i != j) / (len(x) * (len(x) - 1))
    yy = sum(k(a, b) for i, a in enumerate(y) for j, b in enumerate(y) if i != j) / (len(y) * (len(y) - 1))
    xy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return xx + yy - 2.0 * xy


def test_feature_metrics_of_known_sets(grey_levels: Path, tmp_path: Path) -> None:
    model = StubModel(levels_config(grey_levels), grey(FAKE))
    result = evaluate_model(model, "fid,kid,pr,dc", num_samples=10, seed=4, cache_dir=str(tmp_path))
    m = result["metrics"]
    real, fake = as_features(REAL), as_features(FAKE)
    # FID of 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2, with the unbiased variances (Dowson & Landau 1982)
    fid = (statistics.mean(real) - statistics.mean(fake)) ** 2
    fid += (math.sqrt(statistics.variance(real)) - math.sqrt(statistics.variance(fake))) ** 2
    assert m["fid"] == pytest.approx(fid, rel=1e-9)
    # KID: 10 vs 10 features, so every subset is the whole set: one value, no spread
    assert m["kid"] == pytest.approx(unbiased_polynomial_mmd2(real, fake), rel=1e-9, abs=1e-15)
    assert m["kid_std"] < 1e-12
    # k = 3 (in grey levels): the real balls have radius 30 at the ends, 20 inside, so they cover [-30, 120]:
    # NEAR and MIDDLE (6 of 10) lie inside, FAR outside. The generated balls: NEAR's radii 6, 4, 4, 6 reach the
    # real 0 and 10 (7 + 6 = 13); MIDDLE's 38 and 40 (to NEAR's far side) reach 10..80 (45 + 40 = 85); FAR's stay
    # far: every real level but 90 is covered.
    assert (m["precision"], m["recall"]) == (pytest.approx(0.6), pytest.approx(0.9))
    # k = 5: real radii 50, 40, 30, ..., 30, 40, 50; each NEAR point lies in the balls of 0, 10, 20 and 30 (4),
    # each MIDDLE point in all 10, FAR in none: density (4 * 4 + 2 * 10) / (5 * 10); 43 lies in every ball
    assert (m["density"], m["coverage"]) == (pytest.approx(0.72), pytest.approx(1.0))
    assert result["features"] == "pixels" and result["num_real"] == 10
    assert result["real"] == f"{grey_levels} all images (10)"
    # the model was asked once, for 10 unconditional samples of the evaluation's seed, its own sampler
    [(n, request, _)] = model.sample_calls
    assert n == 10 and request.seed == 4 and request.conditioning.labels is None
    assert request.sampler.sampler is None and request.guidance.guidance is None
    expected_settings = {"sampler": "ddim", "steps": 50, "nfe": 50, "guidance": None, "seed": 4, "num_samples": 10}
    assert {k: result[k] for k in expected_settings} == expected_settings


def test_the_order_of_real_and_generated_matters() -> None:
    """Swapping the sets swaps precision and recall's roles: the values a swapped call would give differ."""
    real, fake = torch.tensor(as_features(REAL))[:, None], torch.tensor(as_features(FAKE))[:, None]
    assert precision_recall(real, fake) == pytest.approx((0.6, 0.9))
    assert precision_recall(fake, real) != pytest.approx((0.6, 0.9))
    assert density_coverage(fake, real) != pytest.approx((0.72, 1.0))


def test_bits_per_dim_of_an_exact_gaussian_model(grey_levels: Path) -> None:
    config = levels_config(grey_levels, process={"name": "flow"})
    process = config.diffusion.process.build()
    # the exact denoiser of N(mean, var) fitted to the levels in the model's space [-1, 1]; under flow matching
    # alpha(1) = 0, so its marginal at t = 1 is the ODE's prior N(0, 1) and the likelihood is the closed form
    x = np.array(REAL, dtype=np.float64) / 127.5 - 1.0
    denoiser = GaussianDenoiser(process, float(x.mean()), float(x.var()))
    model = StubModel(config, grey(FAKE), denoiser)
    result = evaluate_model(model, "bpd", num_samples=10, seed=7, bpd_batch_size=4)
    m = result["metrics"]
    # level k dequantised to 2 (k + u) / 256 - 1 with u = Phi(z), z the first draw of sample i's stream (seed, i)
    # (samples 0-3, 4-7, 8-9 in three batches: the streams are per sample), scored by the exact density at t_min
    z = NoiseSource(7, range(10))((1,), dtype=torch.float64).flatten().numpy()
    u = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z])
    xd = 2.0 * (np.array(REAL) + u) / 256.0 - 1.0
    bpd = -denoiser.log_marginal(xd[:, None], float(process.t_min)) / math.log(2.0) + 7.0
    assert m["bpd"] == pytest.approx(bpd.mean(), rel=1e-5)
    assert m["bpd_sem"] == pytest.approx(bpd.std(ddof=1) / math.sqrt(10), rel=1e-3)
    assert m["bpd_images"] == 10 and m["bpd_nfe"] > 10
    # likelihoods are of the unconditional, unclipped model, and no sampling was needed
    assert [call["thresholding"] for call in model.denoiser_calls] == ["none"]
    assert model.sample_calls == [] and "sampling" not in result["seconds"]


def test_variational_bound_of_the_real_images(grey_levels: Path) -> None:
    config = levels_config(grey_levels, process={"name": "ddpm", "schedule": "cosine", "num_steps": 100})
    denoiser = GaussianDenoiser(config.diffusion.process.build(), -0.6, 0.1)
    model = StubModel(config, grey(FAKE), denoiser)
    m = evaluate_model(model, "vlb", num_samples=10, seed=7, bpd_images=6, bpd_batch_size=4)["metrics"]
    # the same as DDPM's VLB of the first 6 real images in the model's space, with the same seed
    x = torch.tensor(REAL[:6], dtype=torch.float32).reshape(-1, 1, 1, 1) / 127.5 - 1.0
    vlb = ddpm_vlb(denoiser, x, seed=7, batch_size=4)
    assert m["vlb"] == pytest.approx(vlb.bpd.mean().item(), rel=1e-12)
    assert m["vlb_prior"] == pytest.approx(vlb.prior.mean().item(), rel=1e-12)
    assert m["vlb_decoder"] == pytest.approx(vlb.decoder.mean().item(), rel=1e-12)
    assert m["vlb_sem"] == pytest.approx(vlb.bpd.std().item() / math.sqrt(6), rel=1e-9) and m["vlb_images"] == 6
    assert [call["thresholding"] for call in model.denoiser_calls] == ["none"]


def test_point_metrics_of_fixed_samples() -> None:
    config = ModelConfig(
        space="points",
        network=NetworkConfig(kind="mlp", num_classes=0),
        data=DataConfig(dataset="toy:eight_gaussians"),
        diffusion=DiffusionConfig(process={"name": "flow"}),
    )
    process = config.diffusion.process.build()
    params = eight_gaussians_params()
    samples = params.means.repeat(3, 1)[:20] * torch.linspace(0.5, 1.5, 20)[:, None]  # on the modes' rays
    denoiser = GaussianDenoiser(process, 0.5, 2.0)  # exact for N(0.5, 2 I) data; flow: alpha(1) = 0, prior exact
    model = StubModel(config, samples, denoiser)
    result = evaluate_model(model, num_samples=20, num_real=50, seed=2)
    m = result["metrics"]
    # the held-out points: fresh draws of the toy with a seed other than the training seed
    real = load_toy_dataset("eight_gaussians", n=50, seed=config.train.seed + _HELD_OUT_SEED_OFFSET).tensors()[0]
    assert not torch.equal(real, load_toy_dataset("eight_gaussians", n=50, seed=config.train.seed).tensors()[0])

    def true_log_density(points: Tensor) -> np.ndarray:  # 8 equal isotropic Gaussians, written with scipy
        cov = params.std**2 * np.eye(2)
        per_mode = [
            multivariate_normal(mu.double().numpy(), cov).logpdf(points.double().numpy()) for mu in params.means
        ]
        return logsumexp(np.stack(per_mode) + math.log(1 / 8), axis=0)

    assert m["true_nll"] == pytest.approx(-true_log_density(samples).mean(), rel=1e-9)
    assert m["true_nll_real"] == pytest.approx(-true_log_density(real).mean(), rel=1e-9)
    assert m["swd"] == sliced_wasserstein(real, samples, seed=2) and m["mmd"] == mmd_rbf(real, samples)
    # the model's NLL of the held-out points: exact divergence, so the closed form
    nll = -denoiser.log_marginal(real.double().numpy(), float(process.t_min)).mean()
    assert m["nll"] == pytest.approx(nll, rel=1e-4) and m["nll_points"] == 50
    assert set(m) == {"swd", "mmd", "true_nll", "true_nll_real", "nll", "nll_nfe", "nll_points"}


def to_8bit(images: Tensor) -> Tensor:
    return torch.round(images.clamp(0, 1) * 255) / 255


def test_default_features_of_a_labelled_model_are_its_domain_classifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    classifier = DomainClassifier(1, 10, 8, width=8).eval()  # the cached digits classifier at 8x8
    save_classifier(classifier, tmp_path / "digits-8.safetensors", recipe=classifier_module._DIGITS_RECIPE)

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached classifier should have been used")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    config = ModelConfig(
        data=DataConfig(dataset="digits", image_size=8, channels=1, num_classes=10),
        network=NetworkConfig(num_classes=10),
    )
    samples = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = StubModel(config, samples)
    result = evaluate_model(model, "fid,kid,pr,dc", num_samples=20, features="auto", seed=3, cache_dir=str(tmp_path))
    # the features, computed here directly: the classifier's penultimate layer of 8-bit images mapped to [-1, 1]
    real = to_8bit((load_digits_dataset(8, split="test").images + 1.0) / 2.0)
    with torch.no_grad():
        real_f, fake_f = classifier.features(real * 2 - 1), classifier.features(to_8bit(samples) * 2 - 1)
    m = result["metrics"]
    assert m["fid"] == pytest.approx(fid_from_features(real_f, fake_f), rel=1e-5)
    kid = kernel_inception_distance(real_f, fake_f, seed=3)
    assert (m["kid"], m["kid_std"]) == (pytest.approx(kid[0], rel=1e-4), pytest.approx(kid[1], rel=1e-4))
    assert (m["precision"], m["recall"]) == pytest.approx(precision_recall(real_f, fake_f))
    assert (m["density"], m["coverage"]) == pytest.approx(density_coverage(real_f, fake_f))
    assert result["features"] == ClassifierFeatures(classifier).name and result["num_real"] == len(real)
    # balanced labels and the model's guidance
    [(_, request, _)] = model.sample_calls
    assert request.conditioning.labels == [i % 10 for i in range(20)] and result["guidance"] == 2.0


def test_options_object_and_settings_agree(grey_levels: Path, tmp_path: Path) -> None:
    model = StubModel(levels_config(grey_levels), grey(FAKE))
    by_name = evaluate_model(model, "fid", num_samples=10, steps=3, sampler="heun", cache_dir=str(tmp_path))
    options = EvaluationOptions.from_settings(num_samples=10, steps=3, sampler="heun", cache_dir=str(tmp_path))
    assert options.sampling.sampler.steps == 3 and options.likelihood.rtol == 1e-5
    by_options = evaluate_model(model, "fid", options=options)
    assert by_name["metrics"] == by_options["metrics"] and by_name["nfe"] == by_options["nfe"] == 5  # heun: 2n - 1
    with pytest.raises(ValueError, match="not both"):
        evaluate_model(model, "fid", options=options, seed=1)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_samples": 3}, "num_samples=3 must be an integer >= 10"),
        ({"num_samples": True}, "num_samples=True"),
        ({"features": "vgg"}, "features='vgg' is not known"),
        ({"probe": "hutch"}, "probe='hutch' is not known"),
        ({"rtol": 0.0}, "rtol=0.0"),
        ({"bpd_batch_size": 0}, "bpd_batch_size=0"),
        ({"sampler": "nope"}, "sampler='nope' is not known"),
        ({"eta": 0.5, "sampler": "heun"}, "not known to sampler 'heun'"),
    ],
)
def test_bad_settings_are_one_clear_error(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluationOptions.from_settings(**settings).sampling.resolve(ModelConfig().sample)
