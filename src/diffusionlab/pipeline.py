"""A trained model as one object: config + network (+ EMA network) + process + denoiser (floor 4).

A model is a folder, as in diffusers: ``config.json`` (the whole ``ModelConfig``), ``model.safetensors`` and
``ema.safetensors``. Loading never runs pickled code.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from .config import ModelConfig, NetworkConfig
from .denoisers import Denoiser, DenoiserLike
from .images import save_grid
from .io import CheckpointError, load_json, load_tensors, save_json, save_tensors
from .networks import MLP, NoiseAwareClassifier, UNet2D
from .networks.autoencoder import Autoencoder, latent_scaling_factor
from .networks.text import TextEmbedding, TextEncoder
from .processes import GaussianProcess, make_process
from .sampling import ClassifierFreeGuidance, ClassifierGuidance, Thresholded, check_sampler, check_steps, sample

__all__ = [
    "Pipeline",
    "build_network",
    "build_process",
    "fit_latent_space",
    "CONFIG_NAME",
    "MODEL_NAME",
    "EMA_NAME",
    "AUTOENCODER_DIR",
]

CONFIG_NAME, MODEL_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"
AUTOENCODER_DIR = "autoencoder"  # a latent model's own copy of its autoencoder, a sub-folder of the model folder
CLASSIFIER_NAME, CLASSIFIER_CONFIG_NAME = "classifier.safetensors", "classifier.json"


def build_network(cfg: NetworkConfig) -> nn.Module:
    """The network a ``NetworkConfig`` describes, freshly initialised."""
    if cfg.kind == "mlp":
        return MLP(dim=cfg.dim, width=cfg.width, depth=cfg.depth, num_classes=cfg.num_classes, dropout=cfg.dropout)
    return UNet2D(
        in_channels=cfg.in_channels,
        base_channels=cfg.base_channels,
        channel_mults=tuple(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=tuple(cfg.attention_levels),
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        num_classes=cfg.num_classes,
        text_dim=cfg.text_dim,
        cross_attention_levels=tuple(
            range(1, len(cfg.channel_mults)) if cfg.cross_attention_levels is None else cfg.cross_attention_levels
        ),
        cond_channels=cfg.cond_channels,
    )


def build_process(config: ModelConfig) -> GaussianProcess:
    """The forward process a config names."""
    opts = dict(config.diffusion.process)
    return make_process(opts.pop("name", "ddpm"), **opts)


def _load_weights(module: nn.Module, path: Path) -> None:
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit the network in config.json ({first}).") from None


def fit_latent_space(config: ModelConfig, images: Tensor, autoencoder: Autoencoder) -> tuple[ModelConfig, Tensor]:
    """Set up latent diffusion (Rombach et al. 2022): encode training images in [-1, 1] to posterior means, scale
    them to unit std (``config.latent.scaling_factor``, measured here unless set) and fit the network to them."""
    if config.latent is None:
        raise ValueError("config.latent is None: this is a pixel-space model, with no latent space to fit.")
    if config.network.kind != "unet" or images.ndim != 4:
        raise ValueError(f"latent diffusion needs images (N, C, H, W); got data of shape {tuple(images.shape)}.")
    if config.data.image_condition is not None:
        raise ValueError(f"image_condition={config.data.image_condition!r} is not supported on latent models.")
    shape = autoencoder.latent_shape(tuple(images.shape[1:]))
    with torch.no_grad():
        latents = autoencoder.encode(images)
    scale = config.latent.scaling_factor or latent_scaling_factor(latents)
    net = config.network.model_copy(update={"in_channels": shape[0]})
    try:
        build_network(net).check_input_size(shape[1], shape[2])
    except ValueError as err:
        raise ValueError(f"the autoencoder's latents are {shape[1]}x{shape[2]}: {err}") from None
    update = {
        "network": net,
        "latent": config.latent.model_copy(update={"scaling_factor": scale}),
        "sample": config.sample.model_copy(update={"thresholding": "none"}),  # latents have no [-1, 1] range
    }
    return config.model_copy(update=update), latents * scale


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
        self.process = build_process(config)
        self.classifier: NoiseAwareClassifier | None = None  # for classifier guidance (train-classifier)
        self._text_encoder: TextEncoder | None = None

    # ------------------------------------------------------------------ construction and files
    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> Pipeline:
        """Load a model folder (config.json + model.safetensors [+ ema.safetensors])."""
        folder = Path(folder)
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
        try:
            config = ModelConfig.model_validate(raw)
        except ValidationError as err:
            raise CheckpointError(
                f"{folder / CONFIG_NAME} is not a valid model config ({err.errors()[0]['msg']})."
            ) from None
        pipe = cls(config)
        _load_weights(pipe.network, folder / MODEL_NAME)
        if (folder / EMA_NAME).is_file():
            pipe.ema = build_network(config.network)
            _load_weights(pipe.ema, folder / EMA_NAME)
        if (folder / CLASSIFIER_NAME).is_file():
            pipe.classifier = NoiseAwareClassifier(**load_json(folder / CLASSIFIER_CONFIG_NAME))
            _load_weights(pipe.classifier, folder / CLASSIFIER_NAME)
        if config.latent is not None:
            pipe.autoencoder = Autoencoder.load(folder / AUTOENCODER_DIR)
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

    def to(self, device: str | torch.device) -> Pipeline:
        self.network.to(device)
        for module in (self.ema, self.classifier, self._text_encoder):
            if module is not None:
                module.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def denoiser(self, use_ema: bool = True) -> Denoiser:
        """The denoiser of the EMA network (or the raw one), in eval mode."""
        net = self.ema if (use_ema and self.ema is not None) else self.network
        net.eval()
        d = self.config.diffusion
        return Denoiser(net, self.process, d.parameterisation, d.sigma_data)

    def copy_for_ema(self) -> nn.Module:
        """A frozen copy of the network to hold EMA weights."""
        ema = copy.deepcopy(self.network).eval()
        ema.requires_grad_(False)
        return ema

    # ------------------------------------------------------------------ sampling
    @property
    def sample_shape(self) -> tuple[int, ...]:
        c = self.config
        if c.network.kind == "mlp":
            return (c.network.dim,)
        shape = (c.data.channels, c.data.image_size, c.data.image_size)
        return self._latent_autoencoder().latent_shape(shape) if c.latent is not None else shape

    def check_labels(
        self, labels: Sequence[int] | Tensor | int | None, n: int | None, num_classes: int | None = None
    ) -> Tensor | None:
        """Labels as a long tensor of length n, or one clear error (unconditional model, out of range)."""
        if labels is None:
            return None
        k = num_classes or self.config.network.num_classes
        if not k:
            raise ValueError("labels were given, but this model was trained without classes (unconditional).")
        t = torch.as_tensor([labels] * (n or 1) if isinstance(labels, int) else labels, dtype=torch.long).flatten()
        bad = t[(t < 0) | (t >= k)]
        if len(bad):
            raise ValueError(f"label {int(bad[0])} is outside this model's classes 0..{k - 1}.")
        if n is not None and len(t) != n:
            raise ValueError(f"{len(t)} labels were given for {n} samples; give one label per sample or one int.")
        return t

    def _latent_autoencoder(self) -> Autoencoder:
        if self.autoencoder is None or self.config.latent is None or self.config.latent.scaling_factor is None:
            raise ValueError(
                "this latent model has no autoencoder or scaling factor yet; load it with Pipeline.load(folder)."
            )
        return self.autoencoder

    def encode(self, images: Tensor) -> Tensor:
        """Images in [0, 1], shape (N, C, H, W), to the model's space: pixels in [-1, 1], or for a latent model
        the autoencoder's posterior means times the scaling factor."""
        if self.config.network.kind == "mlp":
            return images
        if self.config.latent is not None:
            return self._latent_autoencoder().encode(images * 2 - 1) * self.config.latent.scaling_factor
        return images * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        """The model's space back to images in [0, 1] (a latent model decodes; points come back as they are)."""
        if self.config.network.kind == "mlp":
            return x
        if self.config.latent is not None:
            x = self._latent_autoencoder().decode(x / self.config.latent.scaling_factor)
        return ((x + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ conditioning
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

    def _text_conditioning(
        self, n: int, prompt: str | Sequence[str] | None, negative_prompt: str | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        prompts = [prompt or ""] * n if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts were given for {n} samples; give one prompt or one per sample.")
        unique = sorted(set(prompts))
        emb = self.encode_prompts([*unique, negative_prompt or ""])
        where = torch.tensor([unique.index(p) for p in prompts])
        cond = {"text": emb.tokens[where].cpu(), "text_mask": emb.mask[where].cpu()}
        uncond = {"text": emb.tokens[-1:], "text_mask": emb.mask[-1:]}
        return cond, uncond

    def _image_conditioning(self, n: int, cond_image: Tensor | None) -> Tensor | None:
        want = self.config.network.cond_channels
        kind = self.config.data.image_condition
        if cond_image is None:
            if want:
                raise ValueError(f"this model is conditioned on an image ({kind}): give cond_image.")
            return None
        if not want:
            raise ValueError("a condition image was given, but this model was trained without image conditioning.")
        image = cond_image[None] if cond_image.ndim == 3 else cond_image
        size = self.config.data.image_size
        expect = size // self.config.data.superres_factor if kind == "superres" else size
        if image.ndim != 4 or image.shape[1] != want or tuple(image.shape[-2:]) != (expect, expect):
            raise ValueError(
                f"cond_image has shape {tuple(cond_image.shape)}; this {kind} model expects "
                f"({want}, {expect}, {expect}) images in [0, 1]."
            )
        if image.shape[0] == 1:
            image = image.expand(n, -1, -1, -1)
        elif image.shape[0] != n:
            raise ValueError(f"{image.shape[0]} condition images were given for {n} samples; give one or one each.")
        return image.float() * 2 - 1

    def guided_denoiser(
        self,
        num_samples: int,
        labels: Sequence[int] | Tensor | int | None = None,
        guidance: float | None = None,
        thresholding: str | None = None,
        use_ema: bool = True,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | None = None,
        cond_image: Tensor | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        classifier_scale: float = 0.0,
    ) -> tuple[DenoiserLike, dict[str, Tensor] | None]:
        """The denoiser every sampler and task runs (guidance and thresholding applied) and the conditioning
        of ``num_samples`` samples (on the CPU; slice it per batch).

        No labels (or no prompt) on a conditional model means unconditional samples; a label, prompt or condition
        image given to a model trained without that conditioning is one clear error. ``classifier_scale`` > 0
        adds classifier guidance from the model's noise-aware classifier (``diffusionlab train-classifier``).
        """
        defaults = self.config.sample
        guidance = defaults.guidance if guidance is None else float(guidance)
        if guidance < 0:
            raise ValueError(f"guidance={guidance} must be >= 0 (0 unconditional, 1 conditional, > 1 stronger).")
        net = self.config.network
        if (prompt is not None or negative_prompt is not None) and not net.text_dim:
            raise ValueError("a prompt was given, but this model was trained without text conditioning.")
        if classifier_scale and self.classifier is None:
            raise ValueError(
                f"classifier_scale={classifier_scale} needs a noise-aware classifier; train one with "
                "`diffusionlab train-classifier MODEL`."
            )
        if classifier_scale and labels is None:
            raise ValueError("classifier guidance needs the labels to guide towards; give labels.")
        k = net.num_classes or (self.classifier.num_classes if classifier_scale else None)
        label_t = self.check_labels(labels, num_samples, num_classes=k)
        denoiser: DenoiserLike = self.denoiser(use_ema)
        cond: dict[str, Tensor] = {}
        uncond: dict[str, Tensor] = {}
        if net.num_classes:
            if label_t is None:  # no labels: sample the unconditional model
                label_t, guidance = torch.full((num_samples,), -1, dtype=torch.long), 0.0
            cond["labels"] = label_t
        if net.text_dim:
            if not prompt and not negative_prompt:
                guidance = 0.0 if guidance != 1.0 else guidance  # empty prompt: the unconditional model
            text, uncond = self._text_conditioning(num_samples, prompt, negative_prompt)
            cond.update(text)
        image = self._image_conditioning(num_samples, cond_image)
        if image is not None:
            cond["cond_image"] = image
        if net.num_classes or net.text_dim:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, uncond, guidance_rescale, guidance_interval)
        if classifier_scale:
            cond["labels"] = label_t
            classifier = self.classifier.to(self.device).eval()
            denoiser = ClassifierGuidance(denoiser, classifier, classifier_scale, keep_labels=bool(net.num_classes))
        thresholding = thresholding or defaults.thresholding
        if net.kind == "unet" and self.config.latent is None and thresholding != "none":  # pixel range only
            denoiser = Thresholded(denoiser, thresholding)
        return denoiser, cond or None

    def sample(
        self,
        num_samples: int | None = None,
        labels: Sequence[int] | Tensor | int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        guidance: float | None = None,
        seed: int = 0,
        thresholding: str | None = None,
        batch_size: int = 256,
        use_ema: bool = True,
        progress: bool = False,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | None = None,
        cond_image: Tensor | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        classifier_scale: float = 0.0,
        indices: Sequence[int] | None = None,
        **options: Any,
    ) -> Tensor:
        """Generate samples; images come back in [0, 1] with shape (N, C, H, W), points as they are.

        Sample i is drawn from the noise stream (seed, i), so it does not depend on ``batch_size``.
        ``guidance`` is the classifier-free scale w (0 unconditional, 1 conditional, > 1 stronger), towards
        ``labels`` or ``prompt`` and away from ``negative_prompt``. ``cond_image`` (in [0, 1]) conditions a
        super-resolution or colourisation model. ``thresholding`` keeps image x0 estimates in [-1, 1]: "clip"
        (default), "dynamic" or "none". ``options`` go to the sampler (e.g. ``eta``). ``indices`` draws only
        those samples of the ``num_samples`` (one process's share when several split a run), the same as in a
        full run.
        """
        defaults = self.config.sample
        sampler = check_sampler(sampler or defaults.sampler)
        steps = check_steps(steps if steps is not None else defaults.steps)
        spacing = spacing or defaults.spacing
        if num_samples is None:
            if labels is not None and not isinstance(labels, int):
                num_samples = len(labels)
            elif prompt is not None and not isinstance(prompt, str):
                num_samples = len(prompt)
            else:
                raise ValueError("give num_samples, or a list of labels or prompts (one per sample).")
        if num_samples <= 0:
            raise ValueError(f"num_samples={num_samples} must be a positive integer.")
        guided, cond_all = self.guided_denoiser(
            num_samples,
            labels,
            guidance,
            thresholding,
            use_ema,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cond_image=cond_image,
            guidance_rescale=guidance_rescale,
            guidance_interval=guidance_interval,
            classifier_scale=classifier_scale,
        )
        device = self.device
        todo = list(range(num_samples)) if indices is None else [int(i) for i in indices]
        if any(not 0 <= i < num_samples for i in todo):
            raise ValueError(f"indices must lie in 0..{num_samples - 1} (num_samples={num_samples}).")
        out = []
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            cond = {k: v[idx].to(device) for k, v in cond_all.items()} if cond_all is not None else None
            x = sample(
                guided,
                self.sample_shape,
                indices=idx,
                sampler=sampler,
                steps=steps,
                spacing=spacing,
                seed=seed,
                cond=cond,
                device=device,
                progress=progress,
                **options,
            )
            out.append(self.decode(x).cpu())  # batch by batch: a latent model's decoder runs here
        return torch.cat(out)

    def sample_class_grid(
        self,
        path: str | os.PathLike[str],
        per_class: int = 8,
        seed: int = 0,
        metadata: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample ``per_class`` images of every class and save a grid with one labelled row per class."""
        k = self.config.network.num_classes
        if not k:
            images = self.sample(per_class * per_class, seed=seed, **kwargs)
            save_grid(images, path, nrow=per_class, scale=2, metadata=metadata)
            return images
        labels = [c for c in range(k) for _ in range(per_class)]
        images = self.sample(labels=labels, seed=seed, **kwargs)
        names = self.config.data.class_names or [str(c) for c in range(k)]
        save_grid(images, path, nrow=per_class, row_labels=names, scale=2, metadata=metadata)
        return images

    def sample_prompt_grid(
        self,
        path: str | os.PathLike[str],
        prompts: Sequence[str],
        per_prompt: int = 8,
        seed: int = 0,
        metadata: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample ``per_prompt`` images of every prompt and save a grid with one row per prompt, labelled."""
        prompts = list(prompts)
        images = self.sample(prompt=[p for p in prompts for _ in range(per_prompt)], seed=seed, **kwargs)
        save_grid(images, path, nrow=per_prompt, row_labels=prompts, scale=2, metadata=metadata)
        return images

    def sample_condition_grid(
        self,
        path: str | os.PathLike[str],
        cond_images: Tensor,
        targets: Tensor | None = None,
        seed: int = 0,
        metadata: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample one image per condition image and save a grid: conditions, samples (and targets) as rows."""
        images = self.sample(len(cond_images), cond_image=cond_images, seed=seed, **kwargs)
        size = images.shape[-1]
        shown = torch.nn.functional.interpolate(cond_images.float(), size=(size, size), mode="nearest")
        rows = [shown.expand(-1, images.shape[1], -1, -1), images]
        names = ["condition", "sample"]
        if targets is not None:
            rows.append(targets)
            names.append("target")
        save_grid(torch.cat(rows), path, nrow=len(images), row_labels=names, scale=2, metadata=metadata)
        return images
