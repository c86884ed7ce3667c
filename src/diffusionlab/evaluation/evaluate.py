"""Evaluate a trained model end to end: sample it, compare with held-out real data, compute likelihoods (floor 3).

``evaluate_model`` takes any object with a ``Pipeline``'s sampling interface (``EvaluableModel``); it never
imports the pipeline (floor 4), so the trainer (floor 5) and the CLI (floor 6) both call it with theirs.

Image models: FID, KID, precision/recall, density/coverage on features of a ``FeatureExtractor``; bits/dim
through the probability-flow ODE and, for discrete-time models, DDPM's variational bound. Point models
(2-D toys): sliced Wasserstein, MMD, the samples' NLL under the true density (where known) and the model's NLL
of held-out points through the ODE with an exact divergence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from diffusionlab.config import DDPMProcessConfig
from diffusionlab.data import eight_gaussians_params, load_dataset, load_toy_dataset, toy_name
from diffusionlab.denoisers import DenoiserLike
from diffusionlab.processes import DiscreteVPProcess, GaussianProcess
from diffusionlab.sampling import nfe

from .features import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    PixelFeatures,
    domain_classifier,
    extract_features,
    reference_features,
)
from .likelihood import PROBES, bits_per_dim, ddpm_vlb, ode_log_likelihood
from .metrics import density_coverage, fid_from_features, kernel_inception_distance, precision_recall
from .toy import gaussian_mixture_log_prob, mmd_rbf, sliced_wasserstein

__all__ = [
    "IMAGE_METRICS",
    "POINT_METRICS",
    "FEATURES",
    "EvaluableModel",
    "parse_metrics",
    "default_metrics",
    "default_features",
    "make_feature_extractor",
    "load_reference_data",
    "evaluate_model",
    "format_results",
]

IMAGE_METRICS = ("fid", "kid", "pr", "dc", "bpd", "vlb")
POINT_METRICS = ("swd", "mmd", "true_nll", "nll")
FEATURES = ("classifier", "inception", "pixels")
_FEATURE_METRICS = ("fid", "kid", "pr", "dc")
_SAMPLE_METRICS = ("fid", "kid", "pr", "dc", "swd", "mmd", "true_nll")
# the true densities the toys module knows in closed form
_TRUE_DENSITIES = {"eight_gaussians": eight_gaussians_params}
_METRICS_OF_SPACE = {"image": IMAGE_METRICS, "latent_image": IMAGE_METRICS, "points": POINT_METRICS}
_HELD_OUT_SEED_OFFSET = 7919  # toy test points: a seed other than the training seed (first points would coincide)
MIN_SAMPLES = 10


class EvaluableModel(Protocol):
    """What evaluation needs of a model: ``Pipeline`` provides it."""

    config: Any
    process: GaussianProcess

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    @property
    def device(self) -> torch.device: ...

    def sample(self, num_samples: int | None = None, labels: Any = None, **kwargs: Any) -> Tensor: ...

    def encode(self, images: Tensor) -> Tensor: ...

    def guided_denoiser(
        self, num_samples: int, labels: Any = None, guidance: float | None = None, thresholding: str | None = None
    ) -> tuple[DenoiserLike, dict[str, Tensor] | None]: ...


def _is_points(config: Any) -> bool:
    return _METRICS_OF_SPACE[config.space] is POINT_METRICS


def _toy_name(config: Any) -> str | None:
    return toy_name(config.data.dataset)


def default_metrics(config: Any) -> tuple[str, ...]:
    """FID, KID, precision/recall, density/coverage for images; SWD, MMD, NLLs for points."""
    if _is_points(config):
        known = _toy_name(config) in _TRUE_DENSITIES
        return ("swd", "mmd", "true_nll", "nll") if known else ("swd", "mmd", "nll")
    return _FEATURE_METRICS


def parse_metrics(metrics: str | Sequence[str] | None, config: Any) -> tuple[str, ...]:
    """Metric names from a comma-separated string or a list, checked against the model's kind."""
    if metrics is None:
        return default_metrics(config)
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if not names:
        raise ValueError("no metrics were given; expected a comma-separated list such as fid,kid.")
    allowed = POINT_METRICS if _is_points(config) else IMAGE_METRICS
    kind = "point (MLP)" if _is_points(config) else "image"
    for name in names:
        if name not in allowed:
            raise ValueError(f"metric {name!r} is not available for this {kind} model; expected some of {allowed}.")
    if "true_nll" in names and _toy_name(config) not in _TRUE_DENSITIES:
        raise ValueError(
            f"true_nll needs a dataset with a known density ({', '.join('toy:' + k for k in _TRUE_DENSITIES)}); "
            f"this model was trained on {config.data.dataset!r}."
        )
    if "vlb" in names and not isinstance(config.diffusion.process, DDPMProcessConfig):
        raise ValueError(
            f"metric 'vlb' (DDPM's variational bound) needs a discrete-time process (ddpm); this model's is "
            f"{config.diffusion.process.name!r}. Use 'bpd'."
        )
    return tuple(dict.fromkeys(names))


def default_features(config: Any) -> str:
    """A domain classifier for labelled data (the digits, labelled folders, MNIST, CIFAR-10), else raw pixels."""
    labelled = config.data.dataset.strip().lower() == "digits" or (config.data.num_classes or 0) >= 2
    return "classifier" if labelled else "pixels"


def make_feature_extractor(
    features: str,
    config: Any,
    inception_weights: str | None = None,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> FeatureExtractor:
    """The extractor a name asks for: 'classifier' (trained on the model's dataset, cached), 'inception' (from
    a local weights file) or 'pixels'."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r} is not known; expected one of {FEATURES}.")
    if features == "inception":
        if not inception_weights:
            raise ValueError(
                "features 'inception' need --inception-weights PATH (pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth or its .safetensors); nothing is downloaded."
            )
        return InceptionFeatures(inception_weights, device=device)
    if features == "pixels":
        return PixelFeatures()
    clf = domain_classifier(config.data.dataset, config.data.image_size, config.data.channels, cache_dir, log=log)
    return ClassifierFeatures(clf.to(device))


def load_reference_data(config: Any, num_real: int | None = None, seed: int = 0) -> tuple[Tensor, str]:
    """Held-out real data of a model's dataset and a description: images in [0, 1] from the test split where
    the dataset has one (digits, MNIST, CIFAR-10; a plain folder: all its images), or fresh toy points."""
    name = config.data.dataset
    toy = _toy_name(config)
    if toy is not None:
        n = num_real or 2000
        points = load_toy_dataset(toy, n=n, seed=config.train.seed + _HELD_OUT_SEED_OFFSET).tensors()[0]
        return points.float(), f"{name} ({n} fresh points)"
    key = name.strip().lower().partition(":")[0]
    has_test = name.strip().lower() == "digits" or key in ("mnist", "cifar10")
    ds = load_dataset(name, config.data.image_size, config.data.channels, split="test" if has_test else "train")
    images = (ds.images + 1.0) / 2.0
    if num_real is not None and num_real < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_real].sort().values
        images = images[keep]
    return images, f"{name} {'test split' if has_test else 'all images'} ({len(images)})"


def _to_8bit(images: Tensor) -> Tensor:
    """Round images in [0, 1] to 8-bit levels, as saving them as PNG would (FID protocols read PNGs)."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value


def _likelihood_denoiser(model: EvaluableModel, n: int) -> tuple[DenoiserLike, dict[str, Tensor] | None]:
    """The unconditional model without thresholding (likelihoods are of p(x); clipping would break the ODE)."""
    return model.guided_denoiser(n, labels=None, guidance=None, thresholding="none")


def _model_space(model: EvaluableModel, images: Tensor) -> Tensor:
    """8-bit images in [0, 1] in the model's space; bits/dim needs that space to be the pixels in [-1, 1]."""
    x = model.encode(images.to(model.device))
    if tuple(x.shape) != tuple(images.shape) or not torch.allclose(x.cpu(), images * 2.0 - 1.0, atol=1e-5):
        raise ValueError(
            f"bits/dim is defined for models of the pixels in [-1, 1]; this model's space (shape "
            f"{tuple(x.shape[1:])}) is not, e.g. a latent-diffusion model."
        )
    return x


def evaluate_model(
    model: EvaluableModel,
    metrics: str | Sequence[str] | None = None,
    *,
    num_samples: int = 1000,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    features: str | None = None,
    inception_weights: str | None = None,
    extractor: FeatureExtractor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_real: int | None = None,
    bpd_images: int = 128,
    bpd_batch_size: int = 64,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cache_dir: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sample ``num_samples`` (class-conditional models: balanced labels, the model's guidance unless given),
    compare them with held-out real data and return a plain dict: settings, ``metrics`` and ``seconds``."""
    config = model.config
    names = parse_metrics(metrics, config)
    _check_count("num_samples", num_samples, MIN_SAMPLES)
    _check_count("bpd_images", bpd_images, 1)
    if num_real is not None:
        _check_count("num_real", num_real, MIN_SAMPLES)
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is not known; expected one of {PROBES}.")
    say = log or (lambda _msg: None)
    sample_cfg = config.sample
    sampler = sampler or sample_cfg.sampler
    steps = steps if steps is not None else sample_cfg.steps
    num_classes = config.network.num_classes or 0
    guidance = (sample_cfg.guidance if guidance is None else float(guidance)) if num_classes else None
    real, real_desc = load_reference_data(config, num_real, seed)
    result: dict[str, Any] = {
        "dataset": config.data.dataset,
        "real": real_desc,
        "num_real": len(real),
        "num_samples": num_samples,
        "sampler": sampler,
        "steps": steps,
        "nfe": nfe(sampler, steps),
        "guidance": guidance,
        "seed": seed,
        "metrics": {},
        "seconds": {},
    }
    values: dict[str, float | int] = result["metrics"]
    seconds: dict[str, float] = result["seconds"]
    samples = None
    if any(m in _SAMPLE_METRICS for m in names):
        labels = [i % num_classes for i in range(num_samples)] if num_classes else None
        say(f"sampling {num_samples} with {sampler}, {steps} steps (NFE {result['nfe']}), guidance {guidance} ...")
        start = time.perf_counter()
        samples = model.sample(
            num_samples, labels=labels, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        seconds["sampling"] = time.perf_counter() - start
    if any(m in _FEATURE_METRICS for m in names):
        assert samples is not None
        if extractor is None:
            start = time.perf_counter()
            kind = features or default_features(config)
            extractor = make_feature_extractor(kind, config, inception_weights, cache_dir, model.device, say)
            seconds["feature_network"] = time.perf_counter() - start
        start = time.perf_counter()
        result["features"] = extractor.name
        say(f"features: {extractor.name} ...")
        real_f = reference_features(extractor, _to_8bit(real), config.data.dataset, batch_size, cache_dir)
        fake_f = extract_features(extractor, _to_8bit(samples), batch_size)
        seconds["features"] = time.perf_counter() - start
        start = time.perf_counter()
        if "fid" in names:
            values["fid"] = fid_from_features(real_f, fake_f)
        if "kid" in names:
            values["kid"], values["kid_std"] = kernel_inception_distance(real_f, fake_f, seed=seed)
        if "pr" in names:
            values["precision"], values["recall"] = precision_recall(real_f, fake_f)
        if "dc" in names:
            values["density"], values["coverage"] = density_coverage(real_f, fake_f)
        seconds["metrics"] = time.perf_counter() - start
    if _is_points(config):
        _point_metrics(model, names, real, samples, values, seconds, seed, rtol, atol, progress, say)
    if "bpd" in names:
        x = _model_space(model, _to_8bit(real[:bpd_images]))
        denoiser, cond = _likelihood_denoiser(model, len(x))
        say(f"bits/dim of {len(x)} real images (probability-flow ODE, {probe} probe) ...")
        start = time.perf_counter()
        res = bits_per_dim(
            denoiser, x, cond, seed=seed, batch_size=bpd_batch_size, probe=probe, rtol=rtol, atol=atol,
            progress=progress,
        )  # fmt: skip
        seconds["bpd"] = time.perf_counter() - start
        values["bpd"], values["bpd_nfe"], values["bpd_images"] = res.bpd.mean().item(), res.nfe, len(x)
        values["bpd_sem"] = _sem(res.bpd)
    if "vlb" in names:
        x = _model_space(model, _to_8bit(real[:bpd_images]))
        denoiser, cond = _likelihood_denoiser(model, len(x))
        if not isinstance(denoiser.process, DiscreteVPProcess):
            raise ValueError("metric 'vlb' needs a discrete-time (ddpm) process; use 'bpd'.")
        say(f"DDPM variational bound of {len(x)} real images ({denoiser.process.num_steps} steps) ...")
        start = time.perf_counter()
        vlb = ddpm_vlb(denoiser, x, cond, seed=seed, batch_size=max(bpd_batch_size, 1), progress=progress)
        seconds["vlb"] = time.perf_counter() - start
        values["vlb"], values["vlb_images"], values["vlb_sem"] = vlb.bpd.mean().item(), len(x), _sem(vlb.bpd)
        values["vlb_prior"], values["vlb_decoder"] = vlb.prior.mean().item(), vlb.decoder.mean().item()
    return result


def _sem(values: Tensor) -> float:
    """Standard error of a mean over samples (0 for one sample)."""
    return float(values.std().item() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _point_metrics(
    model: EvaluableModel,
    names: tuple[str, ...],
    real: Tensor,
    samples: Tensor | None,
    values: dict[str, float | int],
    seconds: dict[str, float],
    seed: int,
    rtol: float,
    atol: float,
    progress: bool,
    say: Callable[[str], None],
) -> None:
    """SWD, MMD and the true-density NLL of the samples; the model's NLL of held-out points (exact divergence)."""
    start = time.perf_counter()
    if samples is not None:
        samples = samples.float().cpu()
        if not torch.isfinite(samples).all():
            raise ValueError("the samples hold NaN or infinite values; the model has diverged.")
    if "swd" in names:
        values["swd"] = sliced_wasserstein(real, samples, seed=seed)
    if "mmd" in names:
        values["mmd"] = mmd_rbf(real, samples)
    if "true_nll" in names:
        params = _TRUE_DENSITIES[_toy_name(model.config)]()
        values["true_nll"] = -gaussian_mixture_log_prob(samples, params).mean().item()
        values["true_nll_real"] = -gaussian_mixture_log_prob(real, params).mean().item()
    seconds["metrics"] = time.perf_counter() - start
    if "nll" in names:
        x = real[:1000].to(model.device)
        denoiser, cond = _likelihood_denoiser(model, len(x))
        say(f"model NLL of {len(x)} held-out points (probability-flow ODE, exact divergence) ...")
        start = time.perf_counter()
        res = ode_log_likelihood(denoiser, x, cond, probe="exact", rtol=rtol, atol=atol, seed=seed, progress=progress)
        seconds["nll"] = time.perf_counter() - start
        values["nll"], values["nll_nfe"], values["nll_points"] = -res.log_prob.mean().item(), res.nfe, len(x)


_LABELS = {
    "fid": ("FID", "lower is better"),
    "kid": ("KID", "unbiased MMD^2, polynomial kernel; ~0 when equal"),
    "precision": ("precision", "share of samples on the real manifold (k=3)"),
    "recall": ("recall", "share of real data covered by samples (k=3)"),
    "density": ("density", "~1 when equal (k=5)"),
    "coverage": ("coverage", "~1 when equal (k=5)"),
    "bpd": ("bits/dim (ODE)", "NLL of real data; lower is better"),
    "vlb": ("bits/dim (DDPM VLB)", "upper bound on the NLL"),
    "swd": ("sliced Wasserstein", "~0 when equal"),
    "mmd": ("MMD^2 (RBF)", "unbiased; ~0 when equal"),
    "true_nll": ("NLL of samples under the true density", "nats/point"),
    "nll": ("model NLL of held-out points (ODE)", "nats/point; lower is better"),
}


def format_results(result: dict[str, Any]) -> str:
    """The result as a markdown table: one row per metric, with notes (errors, costs) where they apply."""
    m = result["metrics"]
    head = (
        f"{result['num_samples']} samples ({result['sampler']}, {result['steps']} steps, NFE {result['nfe']}"
        + (f", guidance {result['guidance']:g}" if result.get("guidance") is not None else "")
        + f", seed {result['seed']}) vs {result['real']}"
        + (f"; features {result['features']}" if "features" in result else "")
    )
    lines = [head, "", "| metric | value | note |", "| --- | ---: | --- |"]
    for key, (label, note) in _LABELS.items():
        if key not in m:
            continue
        value = f"{m[key]:.4f}" if key not in ("kid", "mmd") else f"{m[key]:.5f}"
        if key == "kid":
            value += f" ± {m['kid_std']:.5f}"
        if key in ("bpd", "vlb"):
            value += f" ± {m[key + '_sem']:.3f}"
            extra = f"; {m[key + '_images']} images" + (f", {m['bpd_nfe']} NFE" if key == "bpd" else "")
            note = note + extra
        if key == "true_nll":
            note += f"; real data: {m['true_nll_real']:.4f}"
        if key == "nll":
            note += f"; {m['nll_points']} points, {m['nll_nfe']} NFE"
        lines.append(f"| {label} | {value} | {note} |")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    lines += ["", f"time: {timing}"]
    return "\n".join(lines)
