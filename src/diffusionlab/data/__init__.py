"""Datasets: embedded digits, image folders, MNIST and CIFAR-10 files, 2-D toys; text corpora and tokenizers; CSV
tables (schema, quantile transform, encoding of rows).

Images are (N, C, S, S) float32 in [-1, 1].
Signals over time (audio folders, series CSVs, .npy windows) are (N, C, L) float32; soundfile loads on first use.

This floor imports only torch, numpy, PIL, pandas and scipy (tables, on first use), `diffusionlab.limits` (floor 0)
and its own floor (`config`, `io`), never the floors above.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DataError,
    ImageDataset,
    PointDataset,
    convert_channels,
    resize_images,
    stratified_split,
)
from .captions import load_captioned_digits
from .cifar import load_cifar10
from .conditions import IMAGE_CONDITIONS, condition_channels, low_resolution, make_image_condition
from .digits import load_digits_dataset
from .folder import IMAGE_EXTENSIONS, load_image_folder
from .mnist import load_mnist
from .signals import (
    AUDIO_EXTENSIONS,
    SIGNAL_DATASET_FORMS,
    SignalDataset,
    is_audio_dataset,
    is_series_dataset,
    load_audio_folder,
    load_series,
    load_signal_dataset,
    read_audio,
    read_series_csv_for_model,
    read_series_input,
    write_series_csv,
    write_wav,
)
from .table import (
    MISSING_SPELLINGS,
    TABLE_DATASET_FORMS,
    TableLayout,
    TableTensors,
    decode_table,
    encode_table,
    from_normal,
    infer_schema,
    is_table_dataset,
    load_table_dataset,
    rank_matched,
    read_csv_table,
    read_schema_overrides,
    table_holes,
    table_layout,
    to_normal,
    write_csv_table,
)
from .text import (
    TEXT8_ALPHABET,
    TEXT_DATASET_FORMS,
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    MarkovSource,
    TextDataset,
    Tokenizer,
    is_text_dataset,
    load_text_dataset,
    make_tokenizer,
    markov_source,
    normalise_text8,
    pydocs_text,
)
from .toys import (
    TOY_DATASETS,
    GaussianMixtureParams,
    eight_gaussians_params,
    load_toy_dataset,
    sample_checkerboard,
    sample_eight_gaussians,
    sample_swiss_roll,
    sample_two_moons,
    toy_name,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "SIGNAL_DATASET_FORMS",
    "SignalDataset",
    "is_audio_dataset",
    "is_series_dataset",
    "load_audio_folder",
    "load_series",
    "load_signal_dataset",
    "read_audio",
    "read_series_csv_for_model",
    "read_series_input",
    "write_series_csv",
    "write_wav",
    "MISSING_SPELLINGS",
    "TABLE_DATASET_FORMS",
    "TableLayout",
    "TableTensors",
    "decode_table",
    "encode_table",
    "from_normal",
    "infer_schema",
    "is_table_dataset",
    "load_table_dataset",
    "rank_matched",
    "read_csv_table",
    "read_schema_overrides",
    "table_holes",
    "table_layout",
    "to_normal",
    "write_csv_table",
    "TEXT8_ALPHABET",
    "TEXT_DATASET_FORMS",
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "MarkovSource",
    "TextDataset",
    "Tokenizer",
    "is_text_dataset",
    "load_text_dataset",
    "make_tokenizer",
    "markov_source",
    "normalise_text8",
    "pydocs_text",
    "IMAGE_CONDITIONS",
    "condition_channels",
    "load_captioned_digits",
    "low_resolution",
    "make_image_condition",
    "IMAGE_EXTENSIONS",
    "TOY_DATASETS",
    "DataError",
    "GaussianMixtureParams",
    "ImageDataset",
    "PointDataset",
    "convert_channels",
    "eight_gaussians_params",
    "load_cifar10",
    "load_dataset",
    "load_digits_dataset",
    "load_image_folder",
    "load_mnist",
    "load_toy_dataset",
    "toy_name",
    "resize_images",
    "sample_checkerboard",
    "sample_eight_gaussians",
    "sample_swiss_roll",
    "sample_two_moons",
    "stratified_split",
]

DATASET_FORMS = (
    "'digits'",
    "'captioned-digits'",
    "'mnist:<folder>'",
    "'cifar10:<folder>'",
    "a path to an existing image folder",
)


def load_dataset(
    name_or_path: str | os.PathLike, image_size: int, channels: int | None = None, split: str = "train"
) -> ImageDataset:
    """Load "digits", "mnist:<folder>", "cifar10:<folder>" or an image folder path as an ImageDataset.

    ``channels`` None keeps the source's own (1 for digits/MNIST, 3 for CIFAR-10 and folders); ``split``
    applies to digits/MNIST/CIFAR-10 and is ignored for a plain image folder.
    """
    if channels is not None and (channels not in (1, 3) or isinstance(channels, bool)):
        raise DataError(f"channels must be 1 (grayscale), 3 (RGB) or None (the source's own), got {channels!r}.")
    spec = os.fspath(name_or_path)
    key, _, rest = spec.partition(":")
    key = key.strip().lower()
    if spec.strip().lower() == "digits":
        dataset = load_digits_dataset(image_size=image_size, split=split)
    elif spec.strip().lower() == "captioned-digits":
        dataset = load_captioned_digits(image_size=image_size, split=split)
    elif key == "mnist" and rest:
        dataset = load_mnist(rest, split=split, image_size=image_size)
    elif key == "cifar10" and rest:
        dataset = load_cifar10(rest, split=split, image_size=image_size)
    elif spec and Path(spec).expanduser().is_dir():
        return load_image_folder(spec, image_size=image_size, channels=3 if channels is None else channels)
    else:
        raise DataError(f"unknown dataset {spec!r}; expected {', '.join(DATASET_FORMS)}.")
    return dataset if channels is None else convert_channels(dataset, channels)
