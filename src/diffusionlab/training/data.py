"""Training data held in memory, as a dataset spec of the config names it (floor 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import SignalInfo, TableSchema
from ..data import DataError, is_text_dataset, load_dataset, load_text_dataset, load_toy_dataset, toy_name
from ..data.clips import is_clip_dataset, load_clip_dataset
from ..data.table import encode_table, is_table_dataset, load_table_dataset


def is_signal_dataset(spec: object) -> bool:
    """Whether ``spec`` names audio ("audio:<folder>") or series ("series:<csv>", "array:<npy>", a .npy path)."""
    from ..data.signals import is_audio_dataset, is_series_dataset

    return is_audio_dataset(spec) or is_series_dataset(spec)


__all__ = ["TrainingData", "load_training_data", "table_rows", "is_signal_dataset"]


@dataclass(frozen=True)
class TrainingData:
    """Training examples held in memory: data (N, ...) and optional labels (N,), class names and captions."""

    x: Tensor
    labels: Tensor | None
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None  # one or more phrasings per example, for text conditioning
    tokenizer: str | None = None  # text: the name of the tokenizer the token ids (N, L) were made with
    table: TableSchema | None = None  # tables: the schema the rows (N, D) were encoded with
    signal: SignalInfo | None = None  # audio and series: what one signal (C, L) is
    observed: Tensor | None = None  # series with gaps: True where x holds a value of the data (x's shape; None: all)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None


def load_training_data(config: Any) -> TrainingData:
    """Load the dataset a config names: ``toy:<name>`` for 2-D toys, text ("pydocs", "text:<path>", "markov:...")
    as token windows of ``data.seq_len``, video clips ("moving_digits", "clips:<folder>"), else anything
    ``data.load_dataset`` takes.

    ``config`` is any config with ``data`` and ``train.seed`` (a ``ModelConfig`` or an ``AutoencoderConfig``).
    """
    name, toy = config.data.dataset, toy_name(config.data.dataset)
    if toy is not None:
        points = load_toy_dataset(toy, n=20000, seed=config.train.seed).tensors()[0]
        return TrainingData(points.float(), None, None)
    if is_signal_dataset(name):
        from ..data.signals import load_signal_dataset

        signals = load_signal_dataset(name, config.data)
        return TrainingData(
            signals.x.float(), signals.labels, signals.class_names, signal=signals.info, observed=signals.mask
        )
    if is_clip_dataset(name):
        clips = load_clip_dataset(name, config.data.image_size, config.data.frames, config.data.channels)
        return TrainingData(clips.clips.float(), clips.labels, clips.class_names)
    if is_table_dataset(name):
        frame, schema = load_table_dataset(name, target=config.data.target_column, schema_file=config.data.schema_file)
        return table_rows(frame, schema, seed=config.train.seed)
    if is_text_dataset(name):
        text = load_text_dataset(name, config.data.seq_len, split="train", tokenizer=config.data.tokenizer)
        return TrainingData(text.tokens, text.labels, text.class_names, text.captions, tokenizer=text.tokenizer.name)
    ds = load_dataset(name, image_size=config.data.image_size, channels=config.data.channels, split="train")
    if len(ds) == 0:
        raise DataError(f"dataset {name!r} has no examples.")
    names = ds.class_names or ([str(i) for i in range(ds.num_classes)] if ds.num_classes else None)
    return TrainingData(ds.images.float(), ds.labels, names, ds.captions)


def table_rows(frame: Any, schema: TableSchema, seed: int | None = None) -> TrainingData:
    """A table (str cells, as read) as training rows in the model's space: the numeric columns' normal scores, the
    categorical columns' ids and, with a categorical target, the row's label last (``TableSpace``'s layout). With a
    ``seed``, tied numeric values are dequantised over their run of the CDF (``data.table.to_normal``)."""
    encoded = encode_table(frame, schema, spread=None if seed is None else np.random.default_rng(seed))
    parts = [encoded.numeric.float(), encoded.categorical.float()]
    names = None
    if encoded.labels is not None:
        parts.append(encoded.labels.float()[:, None])
        target = next(c for c in schema.columns if c.name == schema.target)
        names = list(target.categories or []) + (["(missing)"] if target.missing_rate > 0 else [])
    return TrainingData(torch.cat(parts, dim=1), encoded.labels, names, table=schema)
