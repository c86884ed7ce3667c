"""The diffusion objective: a denoising loss on data noised to drawn times, labels and prompts dropped per sample
for classifier-free guidance (floor 5).

Fitting the config to the data (``fit_diffusion_config``) is a pure step before training: the fitted config is
exactly what is trained and saved, and nothing rewrites it once training has started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn

from ..config import ModelConfig
from ..data import DataError, make_image_condition
from ..families import FAMILIES
from ..io import CheckpointError
from ..losses import make_time_sampling, make_weighting
from ..networks.autoencoder import Autoencoder
from ..networks.text import TextEmbedding, TextEncoder
from ..pipeline import Pipeline, write_class_grid, write_condition_grid, write_prompt_grid
from ..sampling import sample_seed
from ..spaces import make_space, space_for_data
from .data import TrainingData, load_training_data
from .objective import Objective, resumed_config, start_weights
from .privacy import poisson_rows

__all__ = ["DiffusionObjective", "DiffusionBatch", "Captions", "fit_diffusion_config", "fit_labels", "fit_text"]


class DiffusionBatch(NamedTuple):
    """Clean data x0, times t, the forward process's draw (Gaussian noise eps, or corrupted tokens x_t), the
    network's conditioning (labels, prompt tokens, condition images, observations) and the elements of x0 the loss
    counts (None: all; a conditional imputation model's missing points)."""

    x0: Tensor
    t: Tensor
    noise: Tensor
    cond: dict[str, Tensor] | None
    loss_mask: Tensor | None = None


@dataclass(frozen=True)
class Captions:
    """Every distinct caption's tokens (the empty prompt last) and each example's phrasings as indices into them."""

    text: TextEmbedding
    table: Tensor  # (N, most phrasings): an example's phrasings, padded with its first
    counts: Tensor  # (N,): how many phrasings each example has

    @classmethod
    def encode(cls, encoder: TextEncoder, captions: list[list[str]]) -> Captions:
        """Encode every distinct caption once with the frozen text encoder."""
        distinct = sorted({c for caps in captions for c in caps} - {""}) + [""]
        position = {c: i for i, c in enumerate(distinct)}
        parts = [encoder(distinct[i : i + 256]) for i in range(0, len(distinct), 256)]
        length = max(p.tokens.shape[1] for p in parts)
        padded = [p.padded(length) for p in parts]
        text = TextEmbedding(torch.cat([p.tokens for p in padded]), torch.cat([p.mask for p in padded]))
        ids = [[position[c] for c in caps] for caps in captions]
        most = max(len(i) for i in ids)
        table = torch.tensor([i + i[:1] * (most - len(i)) for i in ids], dtype=torch.long)
        return cls(text, table, torch.tensor([len(i) for i in ids]))

    def draw(self, idx: Tensor, drop: Tensor, generator: torch.Generator) -> Tensor:
        """One phrasing of each drawn example, or the empty prompt where dropped: indices into ``text``."""
        phrasing = torch.randint(1 << 30, (len(idx),), generator=generator) % self.counts[idx]
        ids = self.table[idx, phrasing]
        return torch.where(drop, torch.full_like(ids, len(self.text) - 1), ids)


def fit_text(config: ModelConfig, text_dim: int | None) -> ModelConfig:
    """Text-conditional if the data has captions (``text_dim``: the encoder's width), else no text encoder."""
    if text_dim is None:
        return config.model_copy(update={"text_encoder": None})
    net = config.network.model_copy(update={"text_dim": text_dim, "num_classes": None})
    return config.model_copy(update={"network": net})


def fit_labels(config: ModelConfig, data: TrainingData) -> ModelConfig:
    """``num_classes=0`` asks for "conditional if the data has labels": the data's classes, or unconditional."""
    net = config.network
    if net.num_classes == 0 and data.labels is None:
        net = net.model_copy(update={"num_classes": None})
    if data.labels is not None and net.num_classes is not None:
        net = net.model_copy(update={"num_classes": data.num_classes})
        classes = {"num_classes": data.num_classes, "class_names": data.class_names}
        config = config.model_copy(update={"data": config.data.model_copy(update=classes)})
    elif net.num_classes is not None and data.labels is None:
        raise DataError(f"a class-conditional model was asked for, but dataset {config.data.dataset!r} has no labels.")
    return config.model_copy(update={"network": net})


def fit_tokenizer(config: ModelConfig, data: TrainingData) -> ModelConfig:
    """Text data: the tokenizer it was read with, by name (stored with the model to decode its samples)."""
    if data.tokenizer is None:
        return config
    return config.model_copy(update={"data": config.data.model_copy(update={"tokenizer": data.tokenizer})})


def fit_table(config: ModelConfig, data: TrainingData) -> ModelConfig:
    """Tables: the schema the rows were read with, a categorical target's class frequencies filled in."""
    if data.table is None:
        if config.data.match_marginals:
            raise DataError(
                f"match_marginals is for tables; dataset {config.data.dataset!r} is not one (leave it off)."
            )
        return config
    schema = data.table
    if data.labels is not None:
        counts = torch.bincount(data.labels, minlength=data.num_classes or 1).double()
        shares = (counts / counts.sum()).tolist()
        columns = [
            c.model_copy(update={"frequencies": shares}) if c.name == schema.target else c for c in schema.columns
        ]
        schema = schema.model_copy(update={"columns": columns})
    return config.model_copy(update={"data": config.data.model_copy(update={"table": schema})})


def fit_signal(config: ModelConfig, data: TrainingData) -> ModelConfig:
    """Audio and series: what one signal is (channels, length, rate or the series' columns and statistics)."""
    if data.signal is None:
        if config.data.signal_condition is not None:
            raise DataError(
                f"signal_condition={config.data.signal_condition!r} is for audio and series data; dataset "
                f"{config.data.dataset!r} is neither."
            )
        if config.data.window_scaling != "series":
            raise DataError(
                f"window_scaling={config.data.window_scaling!r} is for series data; dataset "
                f"{config.data.dataset!r} is not one (use 'series')."
            )
        if config.data.audio_space != "waveform":
            raise DataError(
                f"audio_space={config.data.audio_space!r} is for audio data; dataset {config.data.dataset!r} is not "
                "audio (use 'waveform')."
            )
        if config.train.scale_augment > 0:
            raise DataError(
                f"scale_augment={config.train.scale_augment:g} is for audio and series data; dataset "
                f"{config.data.dataset!r} is neither (use 0)."
            )
        return config
    if data.signal.kind != "audio" and config.data.audio_space != "waveform":
        raise DataError(
            f"audio_space={config.data.audio_space!r} is for audio data; dataset {config.data.dataset!r} is a series "
            "(use 'waveform')."
        )
    if data.signal.kind != "series" and config.data.window_scaling != "series":
        raise DataError(
            f"window_scaling={config.data.window_scaling!r} is for series data; dataset {config.data.dataset!r} "
            "is audio (use 'series')."
        )
    return config.model_copy(update={"data": config.data.model_copy(update={"signal": data.signal})})


def fit_diffusion_config(
    config: ModelConfig, data: TrainingData, autoencoder: Autoencoder | None = None, text_dim: int | None = None
) -> ModelConfig:
    """The config fitted to its training data, a pure step before training: prompts (``text_dim``) or classes,
    the tokenizer of text, then the model space's shapes, network kind and (latent models, with their
    ``autoencoder``) scaling factor. The result shares nothing with ``config``."""
    config = fit_signal(fit_table(fit_tokenizer(fit_labels(fit_text(config, text_dim), data), data), data), data)
    learned = config.diffusion.process.learned  # a VDM network carries its schedule
    config = config.model_copy(update={"network": config.network.model_copy(update={"learned_schedule": learned})})
    return space_for_data(config, data.x).fit_config(config, data.x, autoencoder).model_copy(deep=True)


def _autoencoder(config: ModelConfig, saved: Pipeline | None, device: torch.device) -> Autoencoder | None:
    """A latent model's autoencoder: the checkpoint's own copy on resume, else the folder ``config.latent`` names."""
    if config.latent is None:
        return None
    if saved is not None and saved.autoencoder is not None:
        return saved.autoencoder.to(device)
    if config.latent.autoencoder is None:
        raise ValueError("config.latent.autoencoder is not set; set it to the autoencoder folder to train in.")
    return Autoencoder.load(config.latent.autoencoder).to(device)


def _check_resumable(fitted: ModelConfig, saved: ModelConfig, checkpoint: Path) -> None:
    if fitted != saved:
        raise CheckpointError(
            f"the training data no longer fits the model of {checkpoint} (its shapes, classes or captions differ); "
            "resume with the data it was trained on."
        )


class DiffusionObjective(Objective):
    """Train a ``Pipeline``: the denoising loss of ``losses.denoising_loss`` in the network's target space."""

    def __init__(
        self, config: ModelConfig, pipeline: Pipeline, data: TrainingData, captions: Captions | None = None
    ) -> None:
        self.config, self.train_config, self.model = config, config.train, pipeline
        self.data, self.captions = data, captions  # data in the model's space (latents for a latent model)
        self.time_sampling = make_time_sampling(config.train.time_sampling)
        self.weighting = make_weighting(config.train.weighting, config.diffusion.sigma_data)

    @property
    def preview_name(self) -> str:  # type: ignore[override]
        """The picture (or text) of samples written beside the finished model."""
        return "samples" + self.model.space.suffix

    @classmethod
    def prepare(
        cls, config: ModelConfig, data: TrainingData | None, checkpoint: Path | None, device: torch.device
    ) -> DiffusionObjective:
        """Fit ``config`` to the data, then build the model: seeded fresh weights, or the checkpoint's."""
        saved = Pipeline.load(checkpoint) if checkpoint is not None else None
        if saved is not None:
            config = resumed_config(saved.config, config)
        FAMILIES[config.diffusion.process.family].check_config(config)
        data = data if data is not None else load_training_data(config)
        autoencoder = _autoencoder(config, saved, device)
        wants_text = config.text_encoder is not None and data.captions is not None
        encoder = TextEncoder(config.text_encoder.name, config.text_encoder.max_length) if wants_text else None
        text_dim = encoder.dim if encoder is not None else None
        fitted = fit_diffusion_config(config, data, autoencoder, text_dim)
        if saved is not None and checkpoint is not None:
            _check_resumable(fitted, config, checkpoint)
        captions = (
            Captions.encode(encoder, data.captions) if encoder is not None and data.captions is not None else None
        )
        with torch.no_grad():
            data = replace(data, x=make_space(fitted, autoencoder).to_model_space(data.x).cpu())
        set_seed(fitted.train.seed)  # same seed, same initial weights (and dropout draws)
        pipeline = Pipeline(fitted, autoencoder=autoencoder)
        start_weights(pipeline, saved)
        return cls(fitted, pipeline, data, captions)

    @property
    def text(self) -> TextEmbedding | None:
        """Every distinct caption's tokens, the empty prompt last (None: not text-conditional)."""
        return self.captions.text if self.captions is not None else None

    def global_batch(self, step: int) -> DiffusionBatch:
        """Examples, times, noise, per-sample label (or prompt) dropout of ``step`` and the model space's own training
        condition (a conditional imputation model's masks), in that order of draws; the loss counts only the points
        the data holds (``TrainingData.observed``), never the filled gaps of a series."""
        tc, data = self.train_config, self.data
        gen = torch.Generator().manual_seed(sample_seed(tc.seed, step))
        if tc.dp_epsilon is None:
            idx = torch.randint(len(data.x), (tc.batch_size,), generator=gen)
        else:  # DP-SGD's accountant assumes Poisson sampling: each row in with probability batch_size / N
            idx = poisson_rows(len(data.x), tc.batch_size / len(data.x), gen)
        n = len(idx)
        family, cond = self.model.family, {}
        observed = data.observed[idx] if data.observed is not None else None
        x0 = self.model.space.augment(data.x[idx], tc.scale_augment, gen, observed)
        t = family.times(self.model.process, n, self.time_sampling, gen)
        noise = family.noise(self.model.process, x0, t, gen)
        drop = torch.rand(n, generator=gen) < tc.label_dropout
        if self.config.network.num_classes and data.labels is not None:
            cond["labels"] = torch.where(drop, torch.full_like(idx, -1), data.labels[idx])
        if self.captions is not None:
            ids = self.captions.draw(idx, drop, gen)
            cond["text"], cond["text_mask"] = self.captions.text.tokens[ids], self.captions.text.mask[ids]
        if self.config.data.image_condition is not None:
            kind, factor = self.config.data.image_condition, self.config.data.superres_factor
            cond["cond_image"] = make_image_condition(kind, x0, factor)
        x0, extra, loss_mask = self.model.space.training_condition(x0, gen, observed)
        return DiffusionBatch(x0, t, noise, {**cond, **extra} or None, loss_mask)

    def loss(self, network: nn.Module, batch: DiffusionBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The family's loss of the batch: the weighted denoising loss, or the NELBO per token."""
        x0, t, noise, cond, loss_mask = batch
        family = self.model.family
        return family.loss(self.model, network, x0, t, noise, cond, self.weighting, loss_mask=loss_mask), {}

    def save(self, folder: str | os.PathLike[str]) -> None:
        self.model.save(folder)

    def write_preview(self, path: Path, per_class: int) -> None:
        """A labelled grid of images (one row per class or prompt; or conditions, samples and targets), or a
        scatter plot of 2-D points over the data."""
        seed, data = self.train_config.seed, self.config.data
        if data.image_condition is not None:
            targets = self.data.x[:: max(1, len(self.data.x) // 8)][:8]
            conds = make_image_condition(data.image_condition, targets, data.superres_factor)
            write_condition_grid(self.model, path, (conds + 1) / 2, (targets + 1) / 2, seed=seed)
        elif self.captions is not None:
            write_prompt_grid(self.model, path, self.grid_prompts(), per_prompt=per_class, seed=seed)
        elif self.model.space.grid_preview:
            write_class_grid(self.model, path, per_class=per_class, seed=seed)
        else:
            points = self.model.sample(2000, seed=seed)
            self.model.space.save(points, path, reference=self.data.x[:2000])

    def grid_prompts(self, count: int = 10) -> list[str]:
        """Prompts for sample grids: the shortest caption of each example, distinct, in data order."""
        out: list[str] = []
        for caps in self.data.captions or []:
            shortest = min(caps, key=len)
            if shortest not in out:
                out.append(shortest)
            if len(out) == count:
                break
        return out

    @property
    def evaluates(self) -> bool:  # type: ignore[override]
        """Whether ``evaluate`` measures anything: not for a model space without metrics (video)."""
        from ..evaluation import parse_metrics

        return bool(parse_metrics(self.train_config.eval_metrics, self.config, self.train_config.eval_features))

    def check_evaluation(self) -> None:
        from ..evaluation import parse_metrics

        parse_metrics(self.train_config.eval_metrics, self.config, self.train_config.eval_features)

    def evaluate(self) -> dict[str, Any]:
        """``diffusionlab evaluate``'s metrics of the EMA model (``eval_metrics``, ``eval_samples``, ...)."""
        from ..evaluation import evaluate_model

        tc = self.train_config
        features = None if tc.eval_features == "auto" else tc.eval_features
        return evaluate_model(
            self.model,
            tc.eval_metrics,
            num_samples=tc.eval_samples,
            features=features,
            seed=tc.seed,
            guidance=tc.eval_guidance,
        )
