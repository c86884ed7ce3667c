"""Evaluate a trained model end to end: sample it, compare with held-out real data, compute likelihoods (floor 3).

``evaluate_model`` takes any object with a ``Pipeline``'s sampling interface (``EvaluableModel``); it never
imports the pipeline (floor 4), so the trainer (floor 5) and the CLI (floor 6) both call it with theirs. Its
settings are one frozen ``EvaluationOptions`` (each setting one name, one default, one check).

Image models: FID, KID, precision/recall, density/coverage on features of a ``FeatureExtractor``; bits/dim
through the probability-flow ODE and, for discrete-time models, DDPM's variational bound. Point models
(2-D toys): sliced Wasserstein, MMD, the samples' NLL under the true density (where known) and the model's NLL
of held-out points through the ODE with an exact divergence. Text models: bits per token (bits/char for a
character tokenizer) of the held-out split, from the continuous-time NELBO (an upper bound on -log2 p), with the
perplexity bound it implies.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from pydantic import Field, field_validator
from torch import Tensor

from diffusionlab.data import (
    eight_gaussians_params,
    is_text_dataset,
    load_dataset,
    load_text_dataset,
    load_toy_dataset,
    toy_name,
)
from diffusionlab.data.table import read_csv_table, table_dataset_path
from diffusionlab.denoisers import DenoiserLike
from diffusionlab.discrete.losses import nelbo, stratified_times
from diffusionlab.limits import check_limit
from diffusionlab.processes import DiscreteVPProcess
from diffusionlab.sampling.request import FrozenSettings, SampleRequest

from . import features as feats
from .classifier import predict
from .likelihood import LikelihoodOptions, bits_per_dim, continuous_vlb, ddpm_vlb, ode_log_likelihood
from .metrics import density_coverage, fid_from_features, kernel_inception_distance, precision_recall
from .tabular import plot_table_report, table_report
from .toy import gaussian_mixture_log_prob, mmd_rbf, sliced_wasserstein

__all__ = [
    "IMAGE_METRICS",
    "POINT_METRICS",
    "TEXT_METRICS",
    "TABLE_METRICS",
    "FEATURES",
    "EvaluableModel",
    "EvaluationOptions",
    "parse_metrics",
    "default_metrics",
    "default_features",
    "make_feature_extractor",
    "load_reference_data",
    "evaluate_model",
    "format_results",
]

IMAGE_METRICS = ("fid", "kid", "pr", "dc", "accuracy", "fid_real", "bpd", "vlb")
POINT_METRICS = ("swd", "mmd", "true_nll", "nll")
TEXT_METRICS = ("bits_per_token",)
TABLE_METRICS = ("column_shapes", "pair_trends", "ml_efficacy", "privacy")
FEATURES = ("classifier", "inception", "pixels")
_FEATURE_METRICS = ("fid", "kid", "pr", "dc", "accuracy", "fid_real")
_SAMPLE_METRICS = ("fid", "kid", "pr", "dc", "accuracy", "fid_real", "swd", "mmd", "true_nll", *TABLE_METRICS)
_ON_REQUEST = ("bpd", "vlb")  # the images' likelihoods are slow: computed only when asked for
# the true densities the toys module knows in closed form
_TRUE_DENSITIES = {"eight_gaussians": eight_gaussians_params}
# the one place that says which metrics a model space has (config.space)
_METRICS_OF_SPACE = {
    "image": IMAGE_METRICS,
    "latent_image": IMAGE_METRICS,
    "points": POINT_METRICS,
    "tokens": TEXT_METRICS,
    "table": TABLE_METRICS,
    "signal": (),  # bench/series.py and bench/audio.py measure signals (CRPS, coverage, recognised digits, FD)
    "spectrogram": (),  # bench/audio.py --audio-space spectrogram measures it (recognised digits, FD, IS)
    "video": (),  # bench/video.py measures clips (per-frame accuracy, motion, Frechet distance, prediction PSNR)
}
VLB_DRAWS = 64  # stratified times per image of a continuous-time model's vlb
NELBO_DRAWS = 4  # stratified time draws per held-out sequence of bits_per_token
_HELD_OUT_SEED_OFFSET = 7919  # toy test points: a seed other than the training seed (first points would coincide)
MIN_SAMPLES = 10
_COUNT_BOUNDS = {  # the limits.py bound of each count
    "num_samples": "max_samples",
    "num_real": "max_samples",
    "bpd_images": "max_samples",
    "batch_size": "max_batch_size",
    "bpd_batch_size": "max_batch_size",
}
_COUNT_MINIMA = {
    "num_samples": MIN_SAMPLES,
    "num_real": MIN_SAMPLES,
    "bpd_images": 1,
    "batch_size": 1,
    "bpd_batch_size": 1,
    "seed": 0,
}


class EvaluableModel(Protocol):
    """What evaluation needs of a model: ``Pipeline`` provides it."""

    config: Any

    @property
    def device(self) -> torch.device: ...

    def sample(
        self,
        num_samples: int | None = None,
        labels: Any = None,
        *,
        request: SampleRequest | None = None,
        batch_size: int = 256,
        progress: bool = False,
        **settings: Any,
    ) -> Tensor: ...

    def encode(self, data: Tensor) -> Tensor: ...

    def guided_denoiser(
        self, num_samples: int, request: SampleRequest | None = None, **settings: Any
    ) -> tuple[DenoiserLike, dict[str, Tensor] | None]: ...

    @property
    def process(self) -> Any: ...

    def denoiser_network(self, use_ema: bool = True) -> torch.nn.Module: ...

    @property
    def space(self) -> Any: ...


class EvaluationOptions(FrozenSettings):
    """How a model is evaluated: how many samples (drawn with ``sampling``, a ``SampleRequest``; labels are
    balanced here), with which features, against how much real data, and how likelihoods are solved."""

    num_samples: int = 1000
    features: str = "auto"  # auto: a domain classifier for labelled data, else pixels (``default_features``)
    inception_weights: str | None = None
    seed: int = 0  # of the samples and of every random draw
    batch_size: int = 256  # sampling and features (results do not change)
    num_real: int | None = None  # None: all the held-out data
    bpd_images: int = 128  # real images scored by bpd and vlb
    bpd_batch_size: int = 64
    cache_dir: str | None = None  # of reference features and classifiers; None: $DIFFUSIONLAB_CACHE
    real: str | None = None  # tables: a CSV of held-out rows (test rows: fidelity and ML efficacy)
    holdout: str | None = None  # tables: rows the model never saw, for privacy (None: ``real``)
    plot: str | None = None  # tables: write the marginals and association matrices here (a PNG)
    sampling: SampleRequest = Field(default_factory=SampleRequest)
    likelihood: LikelihoodOptions = Field(default_factory=LikelihoodOptions)

    @field_validator(*_COUNT_MINIMA, mode="before")
    @classmethod
    def _count(cls, v: object, info: Any) -> object:
        minimum = _COUNT_MINIMA[info.field_name]
        if v is None and info.field_name == "num_real":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{info.field_name}={v!r} must be an integer >= {minimum}")
        if info.field_name in _COUNT_BOUNDS:
            check_limit(info.field_name, v, _COUNT_BOUNDS[info.field_name])
        return v

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: object) -> object:
        if v is None:
            return "auto"
        if v != "auto" and v not in FEATURES:
            raise ValueError(f"features={v!r} is not known; expected 'auto' or one of {FEATURES}")
        return v

    @field_validator("inception_weights", "cache_dir", "real", "holdout", "plot", mode="before")
    @classmethod
    def _path(cls, v: object) -> object:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @classmethod
    def from_settings(cls, **settings: Any) -> EvaluationOptions:
        """Options from flat names: this class's fields, the likelihood's (``probe``, ``rtol``, ``atol``, ...) and
        the sampling request's (``sampler``, ``steps``, ``guidance``, ...; another name is a solver option)."""
        parts: dict[str, dict[str, Any]] = {"own": {}, "likelihood": {}, "sampling": {}}
        for key, value in settings.items():
            if key in LikelihoodOptions.model_fields:
                parts["likelihood"][key] = value
            elif key in cls.model_fields:
                parts["own"][key] = value
            else:
                parts["sampling"][key] = value
        own = parts["own"]
        own.setdefault("likelihood", LikelihoodOptions.make(**parts["likelihood"]))
        own.setdefault("sampling", SampleRequest.from_settings(**parts["sampling"]))
        return cls.make(**own)

    @classmethod
    def of(cls, options: EvaluationOptions | None, settings: Mapping[str, Any]) -> EvaluationOptions:
        """``options`` as given, or built from settings by name; not both."""
        if options is not None and settings:
            raise ValueError(f"give options or the settings {sorted(settings)}, not both.")
        return options if options is not None else cls.from_settings(**settings)


def _toy_name(config: Any) -> str | None:
    return toy_name(config.data.dataset)


def _has_test_split(config: Any) -> bool:
    """Whether the model's dataset has a held-out test split (digits, MNIST, CIFAR-10), which FID compares with."""
    name = config.data.dataset.strip().lower()
    return name == "digits" or name.partition(":")[0] in ("mnist", "cifar10")


def _unavailable(name: str, config: Any, features: str = "auto") -> str | None:
    """Why a metric of the model's space does not apply to this model with these ``features`` (None: it does)."""
    if name == "true_nll" and _toy_name(config) not in _TRUE_DENSITIES:
        return (
            f"true_nll needs a dataset with a known density ({', '.join('toy:' + k for k in _TRUE_DENSITIES)}); "
            f"this model was trained on {config.data.dataset!r}."
        )
    if name == "accuracy" and not (config.network.num_classes and default_features(config) == "classifier"):
        return "accuracy needs a class-conditional model of a labelled dataset (its domain classifier judges it)."
    if name == "accuracy" and features not in ("auto", "classifier"):
        return f"accuracy needs features 'classifier' (a domain classifier); got {features!r}."
    if name == "fid_real" and not _has_test_split(config):
        return (
            f"fid_real needs a dataset with a test split (digits, mnist:, cifar10:); {config.data.dataset!r} has "
            "none to hold the real images apart from."
        )
    return None


def default_metrics(config: Any, features: str = "auto") -> tuple[str, ...]:
    """Every metric of the model's space that applies to it but the slow image likelihoods: FID, KID,
    precision/recall, density/coverage (and accuracy, fid_real where they apply) for images; SWD, MMD, NLLs for
    points."""
    metrics = _METRICS_OF_SPACE[config.space]
    return tuple(m for m in metrics if m not in _ON_REQUEST and _unavailable(m, config, features) is None)


def parse_metrics(metrics: str | Sequence[str] | None, config: Any, features: str = "auto") -> tuple[str, ...]:
    """Metric names from a comma-separated string or a list, checked against the model's space and the feature
    network (``features``, as ``EvaluationOptions.features``)."""
    if metrics is None:
        return default_metrics(config, features)
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if not names:
        raise ValueError("no metrics were given; expected a comma-separated list such as fid,kid.")
    allowed = _METRICS_OF_SPACE[config.space]
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"metric {name!r} is not available for this {config.space} model; expected some of {allowed}."
            )
    for name in names:
        why = _unavailable(name, config, features)
        if why is not None:
            raise ValueError(why)
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
) -> feats.FeatureExtractor:
    """The extractor a name asks for: 'classifier' (trained on the model's dataset, cached), 'inception' (from
    a local weights file) or 'pixels'."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r} is not known; expected one of {FEATURES}.")
    if features == "inception":
        if not inception_weights:
            raise ValueError(
                "features='inception' needs inception_weights, the path of pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth (or its .safetensors); nothing is downloaded."
            )
        return feats.InceptionFeatures(inception_weights, device=device)
    if features == "pixels":
        return feats.PixelFeatures()
    data = config.data
    clf = feats.domain_classifier(data.dataset, data.image_size, data.channels, cache_dir, log=log)
    return feats.ClassifierFeatures(clf.to(device))


def _table_reference(opts: EvaluationOptions) -> tuple[Any, str]:
    """The held-out rows a table model is scored against (``real``, a CSV), read as written; one clear error without."""
    if opts.real is None:
        raise ValueError("a table model is scored against held-out rows: give real, a CSV with the model's columns.")
    frame = read_csv_table(opts.real)
    if opts.num_real is not None and opts.num_real < len(frame):
        frame = frame.sample(n=opts.num_real, random_state=opts.seed).sort_index()
    return frame, f"{opts.real} ({len(frame)} rows)"


def held_out_text(config: Any, num_real: int | None = None) -> tuple[Tensor, Tensor | None]:
    """The first ``num_real`` (None: all) token sequences of a text model's validation split, and their labels."""
    text = load_text_dataset(
        config.data.dataset, config.data.seq_len, split="validation", tokenizer=config.data.tokenizer
    )
    tokens = text.tokens[:num_real] if num_real is not None else text.tokens
    return tokens, text.labels[: len(tokens)] if text.labels is not None else None


def load_reference_data(config: Any, num_real: int | None = None, seed: int = 0) -> tuple[Tensor, str]:
    """Held-out real data of a model's dataset and a description: images in [0, 1] from the test split where
    the dataset has one (digits, MNIST, CIFAR-10; a plain folder: all its images), or fresh toy points."""
    name = config.data.dataset
    toy = _toy_name(config)
    if is_text_dataset(name):
        tokens = held_out_text(config, num_real)[0]
        return tokens, f"{name} validation split ({len(tokens)} sequences)"
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


def _training_rows(config: Any, say: Callable[[str], None]) -> Any:
    """The rows the model was trained on (its dataset CSV), or None (said) where that file is gone."""
    path = table_dataset_path(config.data.dataset)
    if not path.is_file():
        say(f"{path} (the training CSV) is gone: train-on-real efficacy and privacy are not measured.")
        return None
    return read_csv_table(path)


def _to_8bit(images: Tensor) -> Tensor:
    """Round images in [0, 1] to 8-bit levels, as saving them as PNG would (FID protocols read PNGs)."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0


def _likelihood_denoiser(model: EvaluableModel, n: int) -> tuple[DenoiserLike, dict[str, Tensor] | None]:
    """The unconditional model without thresholding (likelihoods are of p(x); clipping would break the ODE)."""
    return model.guided_denoiser(n, thresholding="none")


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
    options: EvaluationOptions | None = None,
    extractor: feats.FeatureExtractor | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Sample ``num_samples`` (class-conditional models: balanced labels, the model's guidance unless given),
    compare them with held-out real data and return a plain dict: settings, ``metrics`` and ``seconds``.

    ``options`` or its fields by name (``num_samples``, ``features``, ``seed``, ``sampler``, ``steps``,
    ``guidance``, ``probe``, ``rtol``, ...: see ``EvaluationOptions.from_settings``); ``extractor`` replaces
    the feature network ``features`` names; ``log`` receives one line per stage.
    """
    opts = EvaluationOptions.of(options, settings)
    names = parse_metrics(metrics, model.config, opts.features)
    if not names:
        raise ValueError(
            f"a {model.config.space} model has no metrics here; bench/{model.config.space}.py measures it."
        )
    run = _Evaluation(model, names, opts, progress, log or (lambda _msg: None))
    request = run.request()
    resolved = request.resolve(model.config.sample)
    if model.config.space == "table":
        real, real_desc = _table_reference(opts)
    else:
        real, real_desc = load_reference_data(model.config, opts.num_real, opts.seed)
    result: dict[str, Any] = {
        "dataset": model.config.data.dataset,
        "real": real_desc,
        "num_real": len(real),
        "num_samples": opts.num_samples,
        "sampler": resolved.sampler.sampler,
        "steps": resolved.sampler.steps,
        "nfe": resolved.sampler.nfe,
        "guidance": resolved.guidance.guidance if run.num_classes else None,
        "seed": opts.seed,
        "metrics": run.values,
        "seconds": run.seconds,
    }
    samples = run.sample(request, result) if any(m in _SAMPLE_METRICS for m in names) else None
    if any(m in _FEATURE_METRICS for m in names):
        result["features"] = run.feature_metrics(real, samples, extractor)
    if any(m in POINT_METRICS for m in names):
        run.point_metrics(real, samples)
    if "bpd" in names:
        run.bits_per_dim(real)
    if "vlb" in names:
        run.variational_bound(real)
    if "bits_per_token" in names:
        run.bits_per_token(*held_out_text(model.config, opts.num_real))
    if any(m in TABLE_METRICS for m in names):
        result["table"] = run.table_scores(real, samples)
    return result


def _sem(values: Tensor) -> float:
    """Standard error of a mean over samples (0 for one sample)."""
    return float(values.std().item() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _feature_scores(names: Sequence[str], real: Tensor, fake: Tensor, seed: int) -> dict[str, float]:
    """The feature metrics asked for, of real and generated features (N, D)."""
    values: dict[str, float] = {}
    if "fid" in names:
        values["fid"] = fid_from_features(real, fake)
    if "kid" in names:
        values["kid"], values["kid_std"] = kernel_inception_distance(real, fake, seed=seed)
    if "pr" in names:
        values["precision"], values["recall"] = precision_recall(real, fake)
    if "dc" in names:
        values["density"], values["coverage"] = density_coverage(real, fake)
    return values


def _point_scores(
    names: Sequence[str], real: Tensor, samples: Tensor | None, toy: str | None, seed: int
) -> dict[str, float]:
    """SWD, MMD and the true-density NLL (of the samples and of the real points) of the toy ``toy``."""
    values: dict[str, float] = {}
    if samples is not None:
        samples = samples.float().cpu()
        if not torch.isfinite(samples).all():
            raise ValueError("the samples hold NaN or infinite values; the model has diverged.")
    if "swd" in names:
        values["swd"] = sliced_wasserstein(real, samples, seed=seed)
    if "mmd" in names:
        values["mmd"] = mmd_rbf(real, samples)
    if "true_nll" in names:
        params = _TRUE_DENSITIES[toy]()
        values["true_nll"] = -gaussian_mixture_log_prob(samples, params).mean().item()
        values["true_nll_real"] = -gaussian_mixture_log_prob(real, params).mean().item()
    return values


class _Evaluation:
    """One run of ``evaluate_model``: the model, its checked options and metric names, and the numbers and
    seconds each stage adds."""

    def __init__(
        self,
        model: EvaluableModel,
        names: tuple[str, ...],
        options: EvaluationOptions,
        progress: bool,
        say: Callable[[str], None],
    ) -> None:
        self.model, self.names, self.opts, self.progress, self.say = model, names, options, progress, say
        self.num_classes = model.config.network.num_classes or 0
        self.values: dict[str, float | int] = {}
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record the wall-clock seconds of a stage that completes."""
        start = time.perf_counter()
        yield
        self.seconds[stage] = time.perf_counter() - start

    def request(self) -> SampleRequest:
        """The sampling request: the options' sampler and guidance, balanced labels, the evaluation's seed."""
        req = self.opts.sampling
        balanced = self.num_classes and getattr(getattr(self.model, "space", None), "balanced_labels", True)
        labels = [i % self.num_classes for i in range(self.opts.num_samples)] if balanced else None
        conditioning = req.conditioning.model_copy(update={"labels": labels})
        return req.model_copy(update={"conditioning": conditioning, "seed": self.opts.seed})

    def sample(self, request: SampleRequest, result: Mapping[str, Any]) -> Tensor:
        """The ``num_samples`` samples the request asks for (``result`` holds its resolved settings, for the log)."""
        n = self.opts.num_samples
        what = f"{result['sampler']}, {result['steps']} steps (NFE {result['nfe']}), guidance {result['guidance']}"
        self.say(f"sampling {n} with {what} ...")
        with self.timed("sampling"):
            return self.model.sample(n, request=request, batch_size=self.opts.batch_size, progress=self.progress)

    def feature_metrics(self, real: Tensor, samples: Tensor | None, extractor: feats.FeatureExtractor | None) -> str:
        """FID, KID, precision/recall, density/coverage asked for; returns the extractor's name."""
        assert samples is not None
        opts, config = self.opts, self.model.config
        if extractor is None:
            with self.timed("feature_network"):
                kind = default_features(config) if opts.features == "auto" else opts.features
                weights, device = opts.inception_weights, self.model.device
                extractor = make_feature_extractor(kind, config, weights, opts.cache_dir, device, self.say)
        with self.timed("features"):
            self.say(f"features: {extractor.name} ...")
            real_f = feats.reference_features(
                extractor, _to_8bit(real), config.data.dataset, opts.batch_size, opts.cache_dir
            )
            fake_f = feats.extract_features(extractor, _to_8bit(samples), opts.batch_size)
        with self.timed("metrics"):
            self.values.update(_feature_scores(self.names, real_f, fake_f, opts.seed))
        if "accuracy" in self.names:
            self.values["accuracy"] = self.class_accuracy(extractor, samples)
        if "fid_real" in self.names:
            with self.timed("fid_real"):
                self.values["fid_real"] = self.real_fid(extractor, real_f)
        return extractor.name

    def class_accuracy(self, extractor: feats.FeatureExtractor, samples: Tensor) -> float:
        """The share of samples the domain classifier assigns to the label they were drawn for."""
        if not isinstance(extractor, feats.ClassifierFeatures):
            raise ValueError(f"accuracy needs features 'classifier' (a domain classifier); got {extractor.name!r}.")
        labels = torch.arange(len(samples)) % self.num_classes
        predicted = predict(extractor.classifier, _to_8bit(samples) * 2.0 - 1.0, self.opts.batch_size)
        return float((predicted.cpu() == labels).float().mean())

    def real_fid(self, extractor: feats.FeatureExtractor, real_f: Tensor) -> float:
        """FID of ``num_samples`` real training images (seeded draw) against the same held-out reference: the
        score a perfect model would get at this sample count, which FID's bias depends on (Chong & Forsyth 2020)."""
        config, n = self.model.config, self.opts.num_samples
        train = load_dataset(config.data.dataset, config.data.image_size, config.data.channels, split="train")
        if len(train) < n:
            raise ValueError(
                f"fid_real needs num_samples={n} real training images; the train split holds {len(train)}."
            )
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.opts.seed))[:n]
        images = (train.images[keep.sort().values] + 1.0) / 2.0
        features = feats.extract_features(extractor, _to_8bit(images), self.opts.batch_size)
        return fid_from_features(real_f, features)

    def point_metrics(self, real: Tensor, samples: Tensor | None) -> None:
        """SWD, MMD, the true-density NLL of the samples; the model's NLL of held-out points (exact divergence)."""
        with self.timed("metrics"):
            self.values.update(_point_scores(self.names, real, samples, _toy_name(self.model.config), self.opts.seed))
        if "nll" not in self.names:
            return
        x = real[:1000].to(self.model.device)
        denoiser, cond = _likelihood_denoiser(self.model, len(x))
        self.say(f"model NLL of {len(x)} held-out points (probability-flow ODE, exact divergence) ...")
        options = self.opts.likelihood.model_copy(update={"probe": "exact"})
        with self.timed("nll"):
            res = ode_log_likelihood(denoiser, x, cond, options=options, seed=self.opts.seed, progress=self.progress)
        self.values.update({"nll": -res.log_prob.mean().item(), "nll_nfe": res.nfe, "nll_points": len(x)})

    def bits_per_dim(self, real: Tensor) -> None:
        """Bits/dim of the first ``bpd_images`` real images through the probability-flow ODE."""
        x = _model_space(self.model, _to_8bit(real[: self.opts.bpd_images]))
        denoiser, cond = _likelihood_denoiser(self.model, len(x))
        self.say(f"bits/dim of {len(x)} real images (probability-flow ODE, {self.opts.likelihood.probe} probe) ...")
        with self.timed("bpd"):
            res = bits_per_dim(
                denoiser, x, cond, options=self.opts.likelihood, seed=self.opts.seed,
                batch_size=self.opts.bpd_batch_size, progress=self.progress,
            )  # fmt: skip
        self.values.update({"bpd": res.bpd.mean().item(), "bpd_nfe": res.nfe, "bpd_images": len(x)})
        self.values["bpd_sem"] = _sem(res.bpd)

    def variational_bound(self, real: Tensor) -> None:
        """The variational bound (bits/dim) of the first ``bpd_images`` real images: DDPM's for a discrete-time
        model, the continuous-time VLB (VDM eq. 17, ``VLB_DRAWS`` times per image) for any other."""
        x = _model_space(self.model, _to_8bit(real[: self.opts.bpd_images]))
        denoiser, cond = _likelihood_denoiser(self.model, len(x))
        common = {"seed": self.opts.seed, "batch_size": self.opts.bpd_batch_size, "progress": self.progress}
        with self.timed("vlb"):
            if isinstance(denoiser.process, DiscreteVPProcess):
                self.say(f"DDPM variational bound of {len(x)} real images ({denoiser.process.num_steps} steps) ...")
                vlb = ddpm_vlb(denoiser, x, cond, **common)
            else:
                self.say(f"continuous-time variational bound of {len(x)} real images ({VLB_DRAWS} times each) ...")
                vlb = continuous_vlb(denoiser, x, cond, draws=VLB_DRAWS, **common)
        self.values.update({"vlb": vlb.bpd.mean().item(), "vlb_images": len(x), "vlb_sem": _sem(vlb.bpd)})
        self.values.update({"vlb_prior": vlb.prior.mean().item(), "vlb_decoder": vlb.decoder.mean().item()})

    def table_scores(self, real: Any, samples: Tensor | None) -> dict[str, Any]:
        """Fidelity against the held-out rows, ML efficacy (train on synthetic or on the training CSV, test on the
        held-out rows) and privacy (distances to the training rows and to ``holdout``, or the held-out rows)."""
        assert samples is not None
        config, opts = self.model.config, self.opts
        schema, synth = config.data.table, self.model.space.frame(samples)
        train = holdout = None
        if "ml_efficacy" in self.names or "privacy" in self.names:
            train = _training_rows(config, self.say)
        if "privacy" in self.names and train is not None:
            holdout = read_csv_table(opts.holdout) if opts.holdout is not None else real
        self.say(f"scoring {len(synth)} synthetic rows against {len(real)} held-out rows ...")
        with self.timed("table"):
            report = table_report(real, synth, schema, train=train, holdout=holdout, seed=opts.seed)
        self.values["column_shapes"] = report["column_shapes"]["mean"]
        self.values["pair_trends"] = report["pair_trends"]["mean"]
        efficacy = report.get("ml_efficacy")
        if efficacy is not None and "ml_efficacy" in self.names:
            self.values["ml_efficacy"] = efficacy["synthetic"]["score"]
            if "real" in efficacy:
                self.values.update(
                    {"ml_efficacy_real": efficacy["real"]["score"], "ml_efficacy_ratio": efficacy["ratio"]}
                )
        privacy = report.get("privacy")
        if privacy is not None and "privacy" in self.names:
            for key in ("dcr_share", "dcr_median", "exact_copies", "holdout_exact_copies", "attack_auc"):
                self.values[key] = privacy[key]
        if opts.plot is not None:
            plot_table_report(real, synth, schema, opts.plot)
            self.say(f"wrote {opts.plot}")
        return report

    def bits_per_token(self, tokens: Tensor, labels: Tensor | None) -> None:
        """The NELBO of held-out sequences in bits per token (MDLM, Sahoo et al. 2024, eq. 10-11), averaged over
        ``NELBO_DRAWS`` stratified time draws per sequence; conditioned on their labels where the model has classes."""
        model, gen = self.model, torch.Generator().manual_seed(self.opts.seed)
        net = model.denoiser_network()
        labels = labels if self.num_classes else None
        self.say(f"bits/token of {len(tokens)} held-out sequences (NELBO, {NELBO_DRAWS} time draws each) ...")
        per_sequence = torch.zeros(len(tokens), dtype=torch.float64)
        size = self.opts.bpd_batch_size
        with self.timed("bits_per_token"), torch.no_grad():
            for _ in range(NELBO_DRAWS):
                t = stratified_times(len(tokens), gen)
                for i in range(0, len(tokens), size):
                    x0 = tokens[i : i + size].to(model.device)
                    cond = {"labels": labels[i : i + size].to(model.device)} if labels is not None else None
                    nats = nelbo(
                        model.process, lambda x, s, c: net(x, s, **(c or {})), x0, t[i : i + size], cond, generator=gen
                    )
                    per_sequence[i : i + size] += nats.double().cpu() / NELBO_DRAWS
        bits = per_sequence / tokens.shape[1] / math.log(2)
        self.values.update({"bits_per_token": bits.mean().item(), "bits_per_token_sem": _sem(bits)})
        self.values.update({"perplexity": 2 ** bits.mean().item(), "tokens": tokens.numel()})


_LABELS = {
    "fid": ("FID", "lower is better"),
    "kid": ("KID", "unbiased MMD^2, polynomial kernel; ~0 when equal"),
    "precision": ("precision", "share of samples on the real manifold (k=3)"),
    "recall": ("recall", "share of real data covered by samples (k=3)"),
    "density": ("density", "~1 when equal (k=5)"),
    "coverage": ("coverage", "~1 when equal (k=5)"),
    "bpd": ("bits/dim (ODE)", "NLL of real data; lower is better"),
    "vlb": ("bits/dim (VLB: DDPM's, or continuous-time)", "upper bound on the NLL"),
    "accuracy": ("class accuracy", "share of samples the domain classifier assigns to their label"),
    "fid_real": ("FID of real images", "real training images vs the same reference: FID's floor at this count"),
    "swd": ("sliced Wasserstein", "~0 when equal"),
    "mmd": ("MMD^2 (RBF)", "unbiased; ~0 when equal"),
    "true_nll": ("NLL of samples under the true density", "nats/point"),
    "nll": ("model NLL of held-out points (ODE)", "nats/point; lower is better"),
    "bits_per_token": ("bits/token (NELBO)", "held-out text; bits/char for a character tokenizer; an upper bound"),
    "column_shapes": ("column shapes", "mean KS / TV complement per column vs held-out rows; 1 when equal"),
    "pair_trends": ("pair trends", "mean correlation / contingency similarity per pair; 1 when equal"),
    "ml_efficacy": ("ML efficacy (train on synthetic)", "F1 (macro) or R^2 on the held-out rows"),
    "ml_efficacy_real": ("ML efficacy (train on real)", "the same model trained on the training rows"),
    "dcr_share": ("DCR share closer to train", "synthetic rows nearer a training row than a held-out one; ideal 0.5"),
    "dcr_median": ("median DCR to train", "distance to the closest training record"),
    "exact_copies": ("exact copies of training rows", "synthetic rows equal to a training row"),
    "attack_auc": ("membership attack AUC", "distance-based membership inference; 0.5: nothing leaks"),
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
        if key == "bits_per_token":
            value += f" ± {m['bits_per_token_sem']:.3f}"
            note += f"; perplexity <= {m['perplexity']:.3f}; {m['tokens']} tokens"
        if key in ("bpd", "vlb"):
            value += f" ± {m[key + '_sem']:.3f}"
            extra = f"; {m[key + '_images']} images" + (f", {m['bpd_nfe']} NFE" if key == "bpd" else "")
            note = note + extra
        if key in ("exact_copies",):
            value = f"{m[key]:d}"
            note += f"; the held-out rows' own: {m.get('holdout_exact_copies')}"
        if key == "ml_efficacy" and m.get("ml_efficacy_ratio") is not None:
            note += f"; {m['ml_efficacy_ratio']:.3f} of train-on-real"
        if key == "true_nll":
            note += f"; real data: {m['true_nll_real']:.4f}"
        if key == "nll":
            note += f"; {m['nll_points']} points, {m['nll_nfe']} NFE"
        lines.append(f"| {label} | {value} | {note} |")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    lines += ["", f"time: {timing}"]
    return "\n".join(lines)
