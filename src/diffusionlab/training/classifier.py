"""The noise-aware classifier objective of classifier guidance (Dhariwal & Nichol 2021, sec. 4.1): cross-entropy on
x_t drawn from the model's own forward process at uniformly drawn times, run by the one training loop (floor 5)."""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import Tensor, nn

from ..config import TrainConfig
from ..denoisers import noise_conditioning
from ..losses import UniformTimes
from ..networks import NoiseAwareClassifier
from ..pipeline import Pipeline
from ..processes import GaussianProcess, broadcast_like
from ..sampling import sample_seed
from .data import TrainingData
from .objective import Objective
from .trainer import Trainer, make_accelerator

__all__ = [
    "ClassifierObjective",
    "NoisyBatch",
    "classifier_train_config",
    "noisy_inputs",
    "draw_noisy_batch",
    "train_noise_aware_classifier",
    "noisy_accuracy",
]


class NoisyBatch(NamedTuple):
    """Clean examples x0, times t, noise eps and the examples' labels."""

    x0: Tensor
    t: Tensor
    eps: Tensor
    labels: Tensor


def draw_noisy_batch(process: GaussianProcess, data: TrainingData, n: int, generator: torch.Generator) -> NoisyBatch:
    """n labelled examples, uniform training times of ``process`` and standard normal noise, in that order of draws."""
    if data.labels is None:
        raise ValueError("classifier guidance needs a labelled dataset; this one has no labels.")
    idx = torch.randint(len(data.x), (n,), generator=generator)
    x0 = data.x[idx]
    t = UniformTimes()(process, n, generator=generator)
    return NoisyBatch(x0, t, torch.randn(x0.shape, generator=generator), data.labels[idx])


def noisy_inputs(process: GaussianProcess, x0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The classifier's inputs for x_t = alpha x0 + sigma eps: x_t / sqrt(alpha^2 + sigma^2) and c_noise, the
    same input scaling and noise-level input as the denoising network (``denoisers.Denoiser``)."""
    x_t = process.add_noise(x0, t, eps)
    alpha, sigma = broadcast_like(process.alpha(t), x0), broadcast_like(process.sigma(t), x0)
    return (x_t / torch.sqrt(alpha**2 + sigma**2)).float(), noise_conditioning(process, t).float()


def classifier_train_config(steps: int, batch_size: int, lr: float, seed: int) -> TrainConfig:
    """The classifier's settings: AdamW (weight decay 0.05) under a one-cycle schedule, no clipping, no EMA."""
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size} and lr={lr} must all be positive.")
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lr_schedule="onecycle",
        warmup_steps=0,
        weight_decay=0.05,
        grad_clip=0.0,
        label_dropout=0.0,
        seed=seed,
        sample_every=0,
        checkpoint_every=0,
    )


class ClassifierObjective(Objective):
    """Train a ``NoiseAwareClassifier`` of p(y | x_t) for a pipeline's process on labelled data in its space."""

    progress_label = "classifier"

    def __init__(
        self, pipeline: Pipeline, data: TrainingData, train_config: TrainConfig, base_channels: int = 32
    ) -> None:
        if data.labels is None or not data.num_classes:
            raise ValueError("classifier guidance needs a labelled dataset; this one has no labels.")
        self.pipeline, self.config, self.train_config = pipeline, pipeline.config, train_config
        self.data = model_space_data(pipeline, data)
        set_seed(train_config.seed)  # same seed, same initial weights
        channel_mults = tuple(pipeline.config.network.channel_mults)
        self.model = NoiseAwareClassifier(self.data.x.shape[1], data.num_classes, base_channels, channel_mults)

    @property
    def network(self) -> nn.Module:
        return self.model

    @property
    def ema(self) -> nn.Module | None:
        return None

    def global_batch(self, step: int) -> NoisyBatch:
        gen = torch.Generator().manual_seed(sample_seed(self.train_config.seed, step))
        return draw_noisy_batch(self.pipeline.process, self.data, self.train_config.batch_size, gen)

    def loss(self, network: nn.Module, batch: NoisyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the labels under the classifier's logits on the noisy examples."""
        x_in, c_noise = noisy_inputs(self.pipeline.process, batch.x0, batch.t, batch.eps)
        return F.cross_entropy(network(x_in, c_noise), batch.labels), {}

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write classifier.safetensors and classifier.json into a model folder."""
        holder = copy.copy(self.pipeline)
        holder.classifier = self.model
        holder.save_classifier(folder)

    def evaluate(self) -> dict[str, object]:
        """The share of noisy training examples (uniform times) it labels correctly."""
        return {"metrics": {"noisy_accuracy": _accuracy(self.pipeline.process, self.model, self.data)}}


def model_space_data(pipe: Pipeline, data: TrainingData) -> TrainingData:
    """Training data as ``load_training_data`` gives it, in the model's space (a latent model's scaled latents)."""
    with torch.no_grad():
        return replace(data, x=pipe.space.to_model_space(data.x.to(pipe.device)).cpu())


def train_noise_aware_classifier(
    pipe: Pipeline,
    data: TrainingData,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    base_channels: int = 32,
    progress: bool = True,
) -> NoiseAwareClassifier:
    """A classifier of p(y | x_t) for the pipeline's process, trained in memory where the pipeline is, on labelled
    data as ``load_training_data`` gives it."""
    objective = ClassifierObjective(pipe, data, classifier_train_config(steps, batch_size, lr, seed), base_channels)
    accelerator = make_accelerator("no", cpu=pipe.device.type == "cpu")
    classifier = Trainer.in_memory(objective, accelerator, progress=progress).train()
    return classifier.to(pipe.device).eval().requires_grad_(False)


@torch.no_grad()
def noisy_accuracy(
    pipe: Pipeline, classifier: NoiseAwareClassifier, data: TrainingData, n: int = 1024, seed: int = 1
) -> float:
    """Share of noisy examples (uniform times) the classifier labels correctly: a check of what it learned."""
    return _accuracy(pipe.process, classifier, model_space_data(pipe, data), n, seed)


@torch.no_grad()
def _accuracy(
    process: GaussianProcess, classifier: nn.Module, data: TrainingData, n: int = 1024, seed: int = 1
) -> float:
    batch = draw_noisy_batch(process, data, n, torch.Generator().manual_seed(seed))
    x_in, c_noise = noisy_inputs(process, batch.x0, batch.t, batch.eps)
    device = next(classifier.parameters()).device
    return float((classifier(x_in.to(device), c_noise.to(device)).argmax(1).cpu() == batch.labels).float().mean())
