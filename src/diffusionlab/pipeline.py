"""A trained model as one object: config + network (+ EMA network) + process + denoiser (floor 4).

A model is a folder, as in diffusers: ``config.json`` (the whole ``ModelConfig``), ``model.safetensors`` and
``ema.safetensors``. Loading never runs pickled code.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from .conditioning import check_batch_size, check_labels, network_conditioning
from .config import FORMAT_VERSION, ModelConfig, migrate_model_config
from .denoisers import Denoiser, DenoiserLike, make_parameterisation
from .discrete.processes import DiscreteProcess
from .families import FAMILIES, Family
from .io import CheckpointError, load_json, save_json, save_tensors
from .limits import check_samples
from .networks import NoiseAwareClassifier
from .networks.autoencoder import Autoencoder
from .networks.loading import FallbackWarning, check_format_version, load_weights
from .networks.text import TextEmbedding, TextEncoder
from .processes import GaussianProcess
from .sampling import ClassifierFreeGuidance, ClassifierGuidance, StepCallback, Thresholded
from .sampling.request import SampleRequest
from .spaces import ModelSpace, build_network, make_space

__all__ = [
    "Pipeline",
    "read_model_config",
    "build_network",
    "build_process",
    "write_class_grid",
    "write_prompt_grid",
    "write_condition_grid",
    "CONFIG_NAME",
    "MODEL_NAME",
    "EMA_NAME",
    "AUTOENCODER_DIR",
]

CONFIG_NAME, MODEL_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"
AUTOENCODER_DIR = "autoencoder"  # a latent model's own copy of its autoencoder, a sub-folder of the model folder
CLASSIFIER_NAME, CLASSIFIER_CONFIG_NAME = "classifier.safetensors", "classifier.json"


def build_process(config: ModelConfig) -> GaussianProcess | DiscreteProcess:
    """The forward process a config names (a discrete one over the config's vocabulary)."""
    return config.diffusion.process.build_for(config.data)


def _load_weights(module: nn.Module, path: Path, what: str = "the network in config.json") -> None:
    """Load weights that fit ``module`` exactly and are finite, else one ``CheckpointError`` naming the tensor."""
    load_weights(module, path, what)


def _load_ema(pipe: Pipeline, folder: Path) -> None:
    """The EMA weights into ``pipe.ema``; when the file is absent, a ``FallbackWarning`` if training kept an EMA
    (``train.ema_decay`` > 0), since sampling then uses the raw weights."""
    if (folder / EMA_NAME).exists() or (folder / EMA_NAME).is_symlink():
        pipe.ema = build_network(pipe.config.network)
        _load_weights(pipe.ema, folder / EMA_NAME)
        pipe.ema.requires_grad_(False)  # a moving average, never trained (as copy_for_ema makes it)
    elif pipe.config.train.ema_decay > 0:
        warnings.warn(f"{folder} has no {EMA_NAME}; sampling uses the raw weights.", FallbackWarning, stacklevel=3)


def _load_classifier(folder: Path) -> NoiseAwareClassifier:
    """The noise-aware classifier of classifier.json + classifier.safetensors, or one ``CheckpointError``."""
    path = folder / CLASSIFIER_CONFIG_NAME
    hparams = load_json(path)
    try:
        classifier = NoiseAwareClassifier(**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} does not describe a noise-aware classifier ({err}).") from None
    _load_weights(classifier, folder / CLASSIFIER_NAME, f"the classifier in {CLASSIFIER_CONFIG_NAME}")
    return classifier


def read_model_config(folder: Path) -> ModelConfig:
    """A model folder's config.json, migrated from any earlier format, or one clear error."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; expected a model folder with {CONFIG_NAME}.")
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}; it is not a diffusionlab model folder.")
    raw = load_json(folder / CONFIG_NAME)
    if isinstance(raw, dict) and (raw.get("kind") == "autoencoder_kl" or "_class_name" in raw):
        raise CheckpointError(
            f"{folder} is an autoencoder, not a diffusion model; train one in its latent space with "
            f"`diffusionlab train --autoencoder {folder}`."
        )
    check_format_version(raw, folder / CONFIG_NAME, range(1, FORMAT_VERSION + 1))
    try:
        config = ModelConfig.model_validate(migrate_model_config(raw) if isinstance(raw, dict) else raw)
    except ValidationError as err:
        raise CheckpointError(f"{folder / CONFIG_NAME} is not a valid model config ({_config_error(err)}).") from None
    names, k = config.data.class_names, config.network.num_classes
    if names is not None and k and len(names) != k:
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: data.class_names has {len(names)} names for network.num_classes={k} classes."
        )
    return config


def _config_error(err: ValidationError) -> str:
    """The first error of a config as ``field.path=value: what was expected`` (long values shortened)."""
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "config"
    msg = str(e["msg"]).removeprefix("Value error, ")
    if "input" not in e or isinstance(e["input"], dict | list):
        return f"{where}: {msg}"
    shown = repr(e["input"])
    return f"{where}={shown if len(shown) <= 40 else shown[:37] + '...'}: {msg}"


def _check_samples_fit_network(pipe: Pipeline, path: Path) -> None:
    """One clear error when the config's samples do not fit the network it describes (``ModelSpace.check_fits``)."""
    try:
        pipe.space.check_fits(pipe.config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}; the config contradicts itself.") from None


def check_finite_samples(samples: Tensor, request: SampleRequest) -> Tensor:
    """The samples, or one clear error when any is NaN or infinite (never black images reported as success)."""
    bad = int((~torch.isfinite(samples.reshape(len(samples), -1))).any(1).sum()) if samples.numel() else 0
    if bad:
        g, s = request.guidance, request.sampler
        raise ValueError(
            f"{bad} of {len(samples)} samples hold NaN or infinite values: the weights or the settings "
            f"(sampler={s.sampler}, steps={s.steps}, guidance={g.guidance}) made the sampler diverge; nothing was "
            "written."
        )
    return samples


def _request(request: SampleRequest | None, settings: dict[str, Any]) -> SampleRequest:
    """``request``, or one built from settings by name; one clear error when both are given."""
    given = sorted(k for k, v in settings.items() if v is not None)
    if request is not None and given:
        raise ValueError(f"give request= or the settings {given} by name, not both.")
    return request if request is not None else SampleRequest.from_settings(**settings)


class Pipeline:
    """A diffusion model ready to sample: ``Pipeline.load(folder).sample(16, labels=[3] * 16, seed=0)``."""

    def __init__(
        self,
        config: ModelConfig,
        network: nn.Module | None = None,
        ema: nn.Module | None = None,
        autoencoder: Autoencoder | None = None,
    ) -> None:
        self.config = config
        self.network = network if network is not None else build_network(config.network)
        self.ema = ema
        self.autoencoder = autoencoder  # latent models only (config.latent); frozen
        if autoencoder is not None:
            autoencoder.network.requires_grad_(False)
        self._process = build_process(config)
        self.family: Family = FAMILIES[config.diffusion.process.family]  # how this kind of process trains and samples
        d = config.diffusion
        self.parameterisation = make_parameterisation(d.parameterisation, d.sigma_data)
        self.classifier: NoiseAwareClassifier | None = None  # for classifier guidance (train-classifier)
        self._text_encoder: TextEncoder | None = None

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> Pipeline:
        """Load a model folder (config.json + model.safetensors [+ ema.safetensors]) of format 1 or 2, or a diffusers
        folder (``interop.load_diffusers``).

        Weights must fit the network exactly and be finite; an absent ema.safetensors of a model trained with an
        EMA is a ``FallbackWarning`` (sampling uses the raw weights); anything else untrusted is a CheckpointError.
        """
        folder = Path(folder)
        from .interop import is_diffusers_folder, load_diffusers  # diffusers folders (issue 20)

        if is_diffusers_folder(folder):
            return load_diffusers(folder, device=device)
        config = read_model_config(folder)
        pipe = cls(config)
        _load_weights(pipe.network, folder / MODEL_NAME)
        _load_ema(pipe, folder)
        if (folder / CLASSIFIER_NAME).exists():
            pipe.classifier = _load_classifier(folder)
        if config.latent is not None:
            pipe.autoencoder = Autoencoder.load(folder / AUTOENCODER_DIR)
        _check_samples_fit_network(pipe, folder / CONFIG_NAME)
        return pipe.to(device)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write config.json, model.safetensors and (if any) ema.safetensors, each file atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self.network.state_dict(), folder / MODEL_NAME)
        if self.ema is not None:
            save_tensors(self.ema.state_dict(), folder / EMA_NAME)
        if self.classifier is not None:
            self.save_classifier(folder)
        if self.autoencoder is not None:
            self.autoencoder.save(folder / AUTOENCODER_DIR)
        save_json(self.config.model_dump(mode="json"), folder / CONFIG_NAME)

    def save_classifier(self, folder: str | os.PathLike[str]) -> None:
        """Write the noise-aware classifier (classifier.safetensors + classifier.json) into a model folder."""
        if self.classifier is None:
            raise ValueError("this pipeline has no classifier to save.")
        save_tensors(self.classifier.state_dict(), Path(folder) / CLASSIFIER_NAME)
        save_json(self.classifier.hparams, Path(folder) / CLASSIFIER_CONFIG_NAME)

    def inpaint_condition(self, images: Tensor, fill: Tensor) -> dict[str, Tensor]:
        """Inputs an inpainting network takes beside x to fill ``images`` (as users hold them) where ``fill`` is
        True: the model space's (a conditional imputation model's observations; an SD inpainting UNet's mask and
        masked latents: interop); none for the others, which inpaint by keeping the known part."""
        return self.space.inpaint_condition(images, fill)

    def to(self, device: str | torch.device) -> Pipeline:
        """Move every network to ``device``."""
        for module in (self.network, self.ema, self.classifier, self._text_encoder, self.autoencoder):
            if module is not None:
                module.to(device)
        return self

    @property
    def process(self) -> Any:
        """The forward process; a learned schedule (VDM) is the sampling network's own (the EMA's, if any)."""
        if isinstance(self._process, GaussianProcess):
            return self._process.for_network(self.ema if self.ema is not None else self.network)
        return self._process

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def denoiser_network(self, use_ema: bool = True) -> nn.Module:
        """The EMA network (or the raw one), in eval mode."""
        net = self.ema if (use_ema and self.ema is not None) else self.network
        return net.eval()

    def denoiser(self, use_ema: bool = True) -> Denoiser:
        """The denoiser of the EMA network (or the raw one), in eval mode (Gaussian processes)."""
        return Denoiser(self.denoiser_network(use_ema), self.process, self.parameterisation)

    def copy_for_ema(self) -> nn.Module:
        """A frozen copy of the network to hold EMA weights."""
        ema = copy.deepcopy(self.network).eval()
        ema.requires_grad_(False)
        return ema

    # ------------------------------------------------------------------ the model space
    @property
    def space(self) -> ModelSpace:
        """What one sample is (``config.space``): its shape, encode/decode, clipping, how samples are written."""
        return make_space(self.config, self.autoencoder)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.space.sample_shape

    def encode(self, data: Tensor) -> Tensor:
        """Data as users hold it (images in [0, 1], (N, C, H, W); points) to the model's space."""
        return self.space.encode(data)

    def decode(self, x: Tensor) -> Tensor:
        """The model's space back to data as users hold it (images in [0, 1]; points as they are)."""
        return self.space.decode(x)

    # ------------------------------------------------------------------ conditioning and guidance
    @property
    def text_encoder(self) -> TextEncoder:
        """The model's frozen text encoder, loaded on first use (one clear error for a model without text)."""
        cfg = self.config.text_encoder
        if cfg is None or not self.config.network.text_dim:
            raise ValueError("a prompt was given, but this model was trained without text conditioning.")
        if self._text_encoder is None:
            self._text_encoder = TextEncoder(cfg.name, cfg.max_length).to(self.device)
        return self._text_encoder

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbedding:
        """Token embeddings of prompts, padded to one length (the empty prompt "" is the unconditional one)."""
        return self.text_encoder(list(prompts))

    def check_labels(
        self, labels: Sequence[int] | Tensor | int | None, n: int | None, num_classes: int | None = None
    ) -> Tensor | None:
        """Labels as a long tensor of length n, or one clear error (unconditional model, out of range)."""
        return check_labels(labels, n, num_classes or self.config.network.num_classes)

    def guided_denoiser(
        self, num_samples: int, request: SampleRequest | None = None, **settings: Any
    ) -> tuple[DenoiserLike, dict[str, Tensor] | None]:
        """The denoiser every sampler and task runs (guidance and thresholding applied) and the conditioning
        of ``num_samples`` samples (on the CPU; slice it per batch). ``settings`` build the request by name.

        No labels (or no prompt) on a conditional model samples the unconditional model, where no guidance
        applies; ``classifier_scale`` > 0 adds classifier guidance from the model's noise-aware classifier.
        """
        req = _request(request, settings).resolve(self.config.sample)
        g, c, net = req.guidance, req.conditioning, self.config.network
        if (c.prompt is not None or c.negative_prompt is not None) and not net.text_dim:
            raise ValueError("a prompt was given, but this model was trained without text conditioning.")
        if g.classifier_scale and self.classifier is None:
            raise ValueError(
                f"classifier_scale={g.classifier_scale} needs a noise-aware classifier; train one with "
                "`diffusionlab train-classifier MODEL`."
            )
        if g.classifier_scale and c.labels is None:
            raise ValueError("classifier guidance needs the labels to guide towards; give labels.")
        classes = net.num_classes or (self.classifier.num_classes if g.classifier_scale else None)
        encoder = self.text_encoder if net.text_dim else None
        nc = network_conditioning(self.config, num_samples, c, encoder, classes)
        denoiser: DenoiserLike = self.denoiser(req.use_ema)
        if net.num_classes or net.text_dim:
            scale = g.guidance if nc.guided else 0.0  # nothing to guide towards: the unconditional model
            denoiser = ClassifierFreeGuidance(denoiser, scale, nc.uncond, g.guidance_rescale, g.guidance_interval)
        if g.classifier_scale:
            classifier = self.classifier.to(self.device).eval()
            denoiser = ClassifierGuidance(denoiser, classifier, g.classifier_scale, keep_labels=bool(net.num_classes))
        if self.space.clip_x0 and g.thresholding != "none":
            denoiser = Thresholded(denoiser, g.thresholding)
        return denoiser, nc.cond or None

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        num_samples: int | None = None,
        labels: Sequence[int] | Tensor | int | None = None,
        *,
        request: SampleRequest | None = None,
        batch_size: int = 256,
        indices: Sequence[int] | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
        **settings: Any,
    ) -> Tensor:
        """Generate samples, decoded by the model space: images in [0, 1] (N, C, H, W), points as they are.

        ``settings`` are the request's fields by name (``sampler``, ``steps``, ``spacing``, ``guidance``,
        ``prompt``, ``negative_prompt``, ``cond_image``, ``thresholding``, ``mixed_precision``, ``seed``, ...;
        any other name is a solver option such as ``eta``), or pass one ``SampleRequest``. Sample i is drawn
        from the noise stream (seed, i), so it does not depend on ``batch_size``; ``indices`` draws only those
        samples of the ``num_samples`` (one process's share when several split a run), the same as in a full run.
        """
        req = _request(request, {**settings, "labels": labels}).resolve(self.config.sample)
        n = num_samples if num_samples is not None else req.conditioning.count()
        if n is None:
            raise ValueError("give num_samples, or a list of labels or prompts (one per sample).")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"num_samples={n!r} must be a positive integer.")
        shape = self.sample_shape  # unset sizes (a config not yet fitted to data) leave only the count to check
        check_samples("num_samples", n, math.prod(shape) if all(isinstance(d, int) for d in shape) else 1)
        check_batch_size(batch_size)
        self.family.check_sampler(req.sampler.sampler)
        todo = list(range(n)) if indices is None else [int(i) for i in indices]
        if any(not 0 <= i < n for i in todo):
            raise ValueError(f"indices must lie in 0..{n - 1} (num_samples={n}).")
        out = self.family.draw(self, req, n, todo, batch_size, progress=progress, callback=callback)
        return check_finite_samples(out, req)


def write_class_grid(
    pipe: Pipeline, path: str | os.PathLike[str], per_class: int = 8, metadata: dict[str, str] | None = None, **kw: Any
) -> Tensor:
    """Sample ``per_class`` of every class and save a grid with one labelled row per class (or, for an
    unconditional model, a per_class x per_class grid)."""
    k = pipe.config.network.num_classes
    if not k:
        images = pipe.sample(per_class * per_class, **kw)
        pipe.space.save(images, path, nrow=per_class, metadata=metadata)
        return images
    images = pipe.sample(labels=[c for c in range(k) for _ in range(per_class)], **kw)
    names = pipe.config.data.class_names or [str(c) for c in range(k)]
    pipe.space.save(images, path, nrow=per_class, row_labels=names, metadata=metadata)
    return images


def write_prompt_grid(
    pipe: Pipeline, path: str | os.PathLike[str], prompts: Sequence[str], per_prompt: int = 8, **kw: Any
) -> Tensor:
    """Sample ``per_prompt`` of every prompt and save a grid with one labelled row per prompt."""
    prompts = list(prompts)
    images = pipe.sample(prompt=[p for p in prompts for _ in range(per_prompt)], **kw)
    pipe.space.save(images, path, nrow=per_prompt, row_labels=prompts)
    return images


def write_condition_grid(
    pipe: Pipeline, path: str | os.PathLike[str], cond_images: Tensor, targets: Tensor | None = None, **kw: Any
) -> Tensor:
    """Sample one image per condition image and save a grid: conditions, samples (and targets) as rows."""
    images = pipe.sample(len(cond_images), cond_image=cond_images, **kw)
    size = images.shape[-1]
    shown = torch.nn.functional.interpolate(cond_images.float(), size=(size, size), mode="nearest")
    rows, names = [shown.expand(-1, images.shape[1], -1, -1), images], ["condition", "sample"]
    if targets is not None:
        rows.append(targets)
        names.append("target")
    pipe.space.save(torch.cat(rows), path, nrow=len(images), row_labels=names)
    return images
