"""What one kind of training learns: an objective, run by the one training loop (floor 5).

An objective holds the fitted config, the training data and the model being trained. It draws every random number
of a step's global batch from a generator seeded by ``(seed, step)`` and computes the loss of a micro-batch; it
writes the model folder, its preview pictures and its evaluation. Everything else (processes and micro-batches,
the optimiser, the LR schedule, EMA, checkpoints, logging, interruption) is the loop's, written once in
``training.trainer``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from ..config import AutoencoderConfig, ModelConfig, TrainConfig
from .data import TrainingData

__all__ = ["Objective", "take", "resumed_config", "start_weights", "RESUMABLE_SETTINGS"]

# the model is the checkpoint's; how long to train, how to log and how to split batches may change on resume
RESUMABLE_SETTINGS = frozenset(
    {"steps", "minutes", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"}
    | {"eval_every", "eval_metrics", "eval_samples", "eval_features", "eval_guidance", "final_eval"}
    | {"grad_accumulation", "log_with"}
)

C = TypeVar("C", ModelConfig, AutoencoderConfig)


class Objective(ABC):
    """What a run learns: how to draw the global batch of a step, the loss of a micro-batch, and its pictures.

    ``model`` is what training returns (a ``Pipeline``, an ``Autoencoder``, a classifier network), ``network`` what
    the optimiser trains, ``ema`` its moving average (None: no average is kept), ``config`` the fitted config saved
    beside the weights, ``train_config`` its settings.
    """

    progress_label: ClassVar[str] = "train"  # the progress bar's name
    preview_name: ClassVar[str | None] = None  # the picture written beside the finished model (None: none)
    evaluates: ClassVar[bool] = False  # whether ``evaluate`` measures anything (final_eval runs it)

    config: Any
    train_config: TrainConfig
    data: TrainingData
    model: Any

    @property
    def network(self) -> nn.Module:
        """The network the optimiser trains (by default the model's ``network``)."""
        return self.model.network

    @property
    def ema(self) -> nn.Module | None:
        """The network holding the moving average of its weights (by default the model's ``ema``), or None."""
        return self.model.ema

    @abstractmethod
    def global_batch(self, step: int) -> Any:
        """The whole batch of ``step`` (over every process and micro-batch) on the CPU: tensors of ``batch_size``
        rows, in tuples and dicts; every random number drawn from a generator seeded by ``(seed, step)``."""

    @abstractmethod
    def loss(self, network: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The mean loss of a micro-batch (rows of ``global_batch``) under ``network``, and detached terms to log."""

    @abstractmethod
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the model folder (config.json last) with the weights as they are."""

    def write_preview(self, path: Path, per_class: int) -> None:
        """Write a picture of what the model does now (samples, reconstructions); by default none."""
        return None

    def check_evaluation(self) -> None:
        """Fail now, not mid-run, if the evaluation the settings ask for does not fit this model."""
        return None

    def evaluate(self) -> dict[str, Any]:
        """Measure the model as it is now: a plain dict whose ``metrics`` are logged as eval/*."""
        return {"metrics": {}}


def take(batch: Any, rows: slice, device: torch.device | None = None) -> Any:
    """The rows of every tensor of a batch (a tensor, or tuples, named tuples and dicts of them), on ``device``."""
    if isinstance(batch, Tensor):
        part = batch[rows]
        return part if device is None else part.to(device)
    if isinstance(batch, dict):
        return {k: take(v, rows, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        parts = [take(v, rows, device) for v in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else tuple(parts)
    return batch


def resumed_config(saved: C, requested: ModelConfig | AutoencoderConfig) -> C:
    """A checkpoint's config with the settings that may change on resume (``RESUMABLE_SETTINGS``) as requested."""
    train = saved.train.model_copy(update={k: getattr(requested.train, k) for k in RESUMABLE_SETTINGS})
    return saved.model_copy(update={"train": train})


def start_weights(model: Any, saved: Any | None) -> None:
    """Give a freshly built model (a ``Pipeline``, an ``Autoencoder``) the checkpoint's weights and moving average,
    or, without a checkpoint, a moving average that starts as a copy of its weights."""
    if saved is not None:
        model.network.load_state_dict(saved.network.state_dict())
    model.ema = saved.ema if saved is not None and saved.ema is not None else model.copy_for_ema()
