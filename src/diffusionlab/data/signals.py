"""Signals over time, (C, L) float32: audio clips read and written through soundfile, and windows of time series.

Audio (``"audio:<folder>"``, ``load_audio_folder``): the WAV/FLAC/OGG files directly in a folder (unlabelled), or in
class sub-folders (searched recursively; one label per sub-folder, classes the sorted names), as soundfile reads
them: float32 in [-1, 1] (values outside are clipped). Every file must have the same channel count. Sample rates
must agree unless ``sample_rate`` is given; then every clip is resampled to it with ``scipy.signal.resample_poly``
at the exact rational ratio. The clip length is ``round(clip_seconds * rate)`` (default: the shortest file); a file
shorter than that is an error naming it, longer ones are centre-cropped. Every file's header is read before any is
decoded, so a bad folder fails fast.

Series (``"series:<file.csv>"``, ``"array:<file.npy>"`` or a path ending in .npy; ``load_series``):

- A wide CSV has a header and one row per time step, in file order (never re-sorted). The first column is a time
  column, kept aside and never modelled, when its name is one of ``TIME_COLUMN_NAMES`` (any case) or when none of
  its cells is a number (dates such as "1990-01"); every other column is a value column, one channel each.
- A long CSV (``id_column`` given) holds several series with the same value columns: rows are grouped by the id
  (series in order of first appearance, rows in file order); the time column rule applies to the first column other
  than the id. Windows never cross from one series into the next.
- Cells that are empty or one of ``MISSING_SPELLINGS`` (after stripping spaces) are missing; any other cell of a
  value column must be a finite number. Each channel is standardised, ``(x - mean) / std``, with the mean and the
  population standard deviation of all its observed values over every series (a std of 0 becomes 1); with a
  ``transform`` (``SERIES_TRANSFORMS``: "sqrt" or "log") the values are transformed first and the mean and std are
  those of the transformed values; ``destandardise_series`` inverts both (``SignalInfo.transform`` stores it).
- Windows of ``window`` steps start every ``stride`` steps (default ``default_stride``: 1, every window, raised just
  enough to keep at most ``MAX_DEFAULT_WINDOWS`` of them); when the last start misses the end, one more window ends
  exactly at the series' end, so every step is in some window. A series shorter than the window is an error.
- Missing points inside a window are filled by linear interpolation along time within that window (before its
  first and after its last observed point: that point's value; a channel with nothing observed in the window: 0,
  the channel's mean), and ``mask`` marks the observed points (None when nothing is missing).
- A .npy array of shape (N, L) or (N, C, L) is N windows of length L as they are (``window`` does not apply),
  standardised per channel in the same way, NaN marking missing values; its columns are "value" (C = 1) or
  "value0", "value1", ....

``write_series_csv`` writes windows back de-standardised as a long CSV (sample, t, then the value columns), and
``read_series_csv_for_model`` reads one wide series with gaps (to impute or forecast) in a model's own columns and
scale.

This floor imports only torch and numpy at import time (soundfile, scipy and pandas on first use), and floors 0-1
(``limits``, ``config``, ``io``).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import SeriesTransform, SignalInfo
from ..io import atomic_path
from ..limits import limits
from .base import DataError
from .table import MISSING_SPELLINGS, read_csv_table

if TYPE_CHECKING:  # pandas loads on first use: importing diffusionlab.data stays fast for the other data
    import pandas as pd

__all__ = [
    "AUDIO_EXTENSIONS",
    "MAX_DEFAULT_WINDOWS",
    "SERIES_TRANSFORMS",
    "SIGNAL_DATASET_FORMS",
    "TIME_COLUMN_NAMES",
    "WINDOW_STD_FLOOR",
    "SeriesInput",
    "SignalDataset",
    "WindowScale",
    "default_stride",
    "destandardise_series",
    "draw_observed",
    "fill_gaps",
    "find_audio",
    "is_audio_dataset",
    "is_series_dataset",
    "load_audio_folder",
    "load_series",
    "load_signal_dataset",
    "read_audio",
    "read_series_csv_for_model",
    "read_series_input",
    "resample",
    "standardise_series",
    "transform_series",
    "untransform_series",
    "write_series_csv",
    "write_wav",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SIGNAL_DATASET_FORMS = ("'audio:<folder>'", "'series:<file.csv>'", "'array:<file.npy>'", "a path ending in .npy")
TIME_COLUMN_NAMES = frozenset(
    {"time", "date", "datetime", "timestamp", "t", "ds", "year", "month", "week", "day", "period", "index"}
)
SERIES_TRANSFORMS: tuple[str, ...] = get_args(SeriesTransform)  # config's names, in one place
MAX_DEFAULT_WINDOWS = 100_000  # the default stride grows so that a long series gives at most about this many windows
_AUDIO_KINDS = "WAV, FLAC, OGG"


@dataclass
class SignalDataset(Dataset):
    """Signals (N, C, L) float32 in memory, optional labels (N,) with class names, what one signal is (``info``),
    and for series with gaps ``mask`` (N, C, L) bool, True where a value was observed.

    ``ds[i] -> {"signal": (C, L), "label": (), "mask": (C, L)}`` (label and mask when present);
    ``ds.tensors() -> (x, labels)``.
    """

    x: Tensor
    labels: Tensor | None
    class_names: list[str] | None
    info: SignalInfo
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        x = self.x
        if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"signals must be a float tensor of shape (N, C, L), got {got}.")
        if tuple(x.shape[1:]) != (self.info.channels, self.info.length):
            raise DataError(
                f"signals have shape {tuple(x.shape)}, but info says {self.info.channels} channels of "
                f"{self.info.length} steps."
            )
        if self.labels is not None:
            labels = self.labels
            if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
                raise DataError("labels must be a 1-D integer tensor of shape (N,).")
            if labels.shape[0] != x.shape[0]:
                raise DataError(f"got {x.shape[0]} signals but {labels.shape[0]} labels; expected equal counts.")
            self.labels = labels.to(torch.long)
        if self.mask is not None and (self.mask.shape != x.shape or self.mask.dtype != torch.bool):
            raise DataError(f"mask must be a bool tensor of the signals' shape {tuple(x.shape)}.")

    @property
    def num_classes(self) -> int | None:
        """The number of classes (labelled data), else None."""
        if self.labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"signal": self.x[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.mask is not None:
            item["mask"] = self.mask[index]
        return item

    def tensors(self) -> tuple[Tensor, Tensor | None]:
        """Return ``(x, labels)``; labels is None for unlabelled data."""
        return self.x, self.labels

    def subset(self, indices: Tensor | list[int]) -> SignalDataset:
        """A new dataset holding only the given indices (class names and info kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        mask = self.mask[idx] if self.mask is not None else None
        return SignalDataset(self.x[idx], labels, self.class_names, self.info, mask)


# --- dataset specs ---------------------------------------------------------------------------------------------------


def is_audio_dataset(spec: object) -> bool:
    """Whether ``spec`` names an audio folder: "audio:<folder>"."""
    return isinstance(spec, (str, os.PathLike)) and os.fspath(spec).strip().lower().startswith("audio:")


def is_series_dataset(spec: object) -> bool:
    """Whether ``spec`` names series: "series:<file.csv>", "array:<file.npy>" or a path ending in .npy."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    name = os.fspath(spec).strip().lower()
    return name.startswith(("series:", "array:")) or name.endswith(".npy")


def _spec_path(spec: str | os.PathLike[str]) -> tuple[str, Path]:
    """("audio" | "series" | "array", the path) of a signal dataset spec."""
    text = os.fspath(spec).strip()
    key, sep, rest = text.partition(":")
    key = key.lower()
    if sep and key in ("audio", "series", "array"):
        kind, path = key, rest.strip()
    elif text.lower().endswith(".npy"):
        kind, path = "array", text
    else:
        raise DataError(f"{text!r} is not a signal dataset; expected {', '.join(SIGNAL_DATASET_FORMS)}.")
    if not path:
        raise DataError(f"{text!r} names no file or folder; expected {', '.join(SIGNAL_DATASET_FORMS)}.")
    if kind == "series" and path.lower().endswith(".npy"):
        kind = "array"
    return kind, Path(path).expanduser()


def load_signal_dataset(spec: str | os.PathLike[str], data_config: object) -> SignalDataset:
    """Load "audio:<folder>", "series:<file.csv>", "array:<file.npy>" or a .npy path with ``data_config``'s
    settings (``sample_rate``, ``clip_seconds``, ``window``, ``id_column``, ``series_transform``).

    When ``data_config.signal`` is already fitted (a trained model's), the data are read the model's way: audio at
    its rate and clip length (unless set explicitly), series in its columns and scale; a mismatch is an error.
    """
    kind, path = _spec_path(spec)
    fitted: SignalInfo | None = getattr(data_config, "signal", None)
    if fitted is not None and fitted.kind != ("audio" if kind == "audio" else "series"):
        raise DataError(f"{os.fspath(spec)!r} is {kind} data, but the model was trained on {fitted.kind}.")
    if kind == "audio":
        rate = getattr(data_config, "sample_rate", None)
        seconds = getattr(data_config, "clip_seconds", None)
        if fitted is not None:
            rate = rate or fitted.sample_rate
            if seconds is None and fitted.sample_rate:
                seconds = fitted.length / fitted.sample_rate
        dataset = load_audio_folder(path, sample_rate=rate, clip_seconds=seconds)
        if fitted is not None:
            got, want = dataset.info, fitted
            if (got.channels, got.length, got.sample_rate) != (want.channels, want.length, want.sample_rate):
                raise DataError(
                    f"audio folder '{path}' gives {got.channels}-channel clips of {got.length} samples at "
                    f"{got.sample_rate} Hz, but the model was trained on {want.channels}-channel clips of "
                    f"{want.length} samples at {want.sample_rate} Hz."
                )
        return dataset
    window = int(getattr(data_config, "window", 64))
    return load_series(
        f"{kind}:{path}",
        window,
        id_column=getattr(data_config, "id_column", None),
        fitted=fitted,
        transform=getattr(data_config, "series_transform", "none"),
    )


# --- audio files ---------------------------------------------------------------------------------------------------


def _check_bytes(what: str, nbytes: int) -> None:
    """One clear error when holding ``nbytes`` of float32 would pass the output-memory bound."""
    current = limits()
    if nbytes > current.max_output_bytes:
        raise DataError(
            f"{what} needs {nbytes / 2**30:.1f} GiB as float32, more than the limit of "
            f"{current.max_output_bytes / 2**30:.1f} GiB; set {current.env_name('max_output_bytes')} to raise it."
        )


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise DataError(f"{what} is a folder; expected an audio file ({_AUDIO_KINDS}).")
    if not path.is_file():
        raise DataError(f"{what} does not exist.")
    if path.stat().st_size == 0:
        raise DataError(f"{what} is empty (0 bytes); expected an audio file ({_AUDIO_KINDS}).")


def _not_audio(path: Path, err: Exception) -> DataError:
    """The one line for a file soundfile cannot decode, with libsndfile's reason (e.g. "Format not recognised")."""
    reason = str(err).rsplit(": ", 1)[-1].strip().rstrip(".")
    return DataError(f"'{path}' is not an audio file soundfile can read ({_AUDIO_KINDS}): {reason}.")


def _audio_info(path: Path) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from an audio file's header, or one DataError naming the file."""
    import soundfile as sf

    what = f"audio file '{path}'"
    _check_file(path, what)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise _not_audio(path, err) from None
    if info.frames <= 0:
        raise DataError(f"{what} is an empty clip (0 samples); expected at least one sample.")
    _check_bytes(what, int(info.frames) * int(info.channels) * 4)
    return int(info.frames), int(info.samplerate), int(info.channels)


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """One audio file as (float32 (C, L) in [-1, 1], sample rate); a file that is not audio, or an empty one, is
    one DataError naming it. Values outside [-1, 1] (float files) are clipped."""
    import soundfile as sf

    path = Path(path)
    _audio_info(path)
    what = f"audio file '{path}'"
    try:
        data, rate = sf.read(str(path), always_2d=True, dtype="float32")
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise _not_audio(path, err) from None
    if data.shape[0] == 0:
        raise DataError(f"{what} is an empty clip (0 samples); expected at least one sample.")
    if not np.isfinite(data).all():
        raise DataError(f"{what} holds non-finite samples (NaN or inf).")
    signal = np.ascontiguousarray(data.T)
    np.clip(signal, -1.0, 1.0, out=signal)
    return signal, int(rate)


def write_wav(signal: np.ndarray | Tensor, path: str | os.PathLike[str], sample_rate: int) -> None:
    """Write a (C, L) signal (or (L,) mono) in [-1, 1] as a 16-bit PCM WAV file, atomically; values are clipped."""
    import soundfile as sf

    if isinstance(signal, Tensor):
        signal = signal.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(signal, dtype=np.float32)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(f"a signal to write must have shape (C, L) with L >= 1, got {tuple(array.shape)}.")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise DataError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}.")
    if not np.isfinite(array).all():
        raise DataError(f"the signal for {Path(path)} holds non-finite values (NaN or inf); nothing was written.")
    frames = np.clip(array, -1.0, 1.0).T
    with atomic_path(path) as tmp:
        sf.write(str(tmp), frames, int(sample_rate), subtype="PCM_16", format="WAV")


def resample(signal: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample (C, L) along time from ``from_rate`` to ``to_rate`` Hz (polyphase, exact rational ratio); the new
    length is ``ceil(L * to_rate / from_rate)``."""
    if from_rate == to_rate:
        return signal
    from scipy.signal import resample_poly

    ratio = Fraction(int(to_rate), int(from_rate))
    out = resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    return np.asarray(out, dtype=np.float32)


def _resampled_length(frames: int, from_rate: int, to_rate: int) -> int:
    ratio = Fraction(int(to_rate), int(from_rate))
    return -(-frames * ratio.numerator // ratio.denominator)


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def _audio_in(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_audio(p))
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in sorted(filenames)) if _is_audio(p))
    return found


def find_audio(folder: str | os.PathLike[str]) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """A folder's audio files as (files, labels, class_names); labels are None for a flat folder.

    Class layout is used when non-hidden sub-folders hold audio (searched recursively); classes are the sorted
    sub-folder names. Loose files beside class sub-folders are an error, not silently dropped.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise DataError(f"audio folder '{root}' does not exist.")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; expected a folder of audio files.")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [(d, files) for d in subdirs if (files := _audio_in(d, recursive=True))]
    loose = _audio_in(root, recursive=False)
    if not classes:
        if not loose:
            raise DataError(
                f"audio folder '{root}' contains no audio; looked for files ending in {', '.join(AUDIO_EXTENSIONS)} "
                "(any case), directly or in class sub-folders."
            )
        return loose, None, None
    if loose:
        raise DataError(
            f"audio folder '{root}' mixes loose audio files (e.g. '{loose[0].name}') with class sub-folders; "
            "expected either only audio files or only class sub-folders."
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, (_, class_files) in enumerate(classes):
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return files, labels, [d.name for d, _ in classes]


def _seconds(samples: int, rate: int) -> str:
    return f"{samples / rate:.3g} s ({samples} samples at {rate} Hz)"


def load_audio_folder(
    folder: str | os.PathLike[str], sample_rate: int | None = None, clip_seconds: float | None = None
) -> SignalDataset:
    """Every WAV/FLAC/OGG file of a folder (class sub-folders give labels) as clips (N, C, L) in [-1, 1].

    All files share one channel count; mixed sample rates need ``sample_rate`` (every clip is resampled to it).
    L is ``round(clip_seconds * rate)``, by default the shortest file's length; longer files are centre-cropped.
    """
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate < 1
    ):
        raise DataError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}.")
    if clip_seconds is not None and not (isinstance(clip_seconds, (int, float)) and clip_seconds > 0):
        raise DataError(f"clip_seconds must be a positive number of seconds, got {clip_seconds!r}.")
    root = Path(folder).expanduser()
    files, labels, class_names = find_audio(root)
    headers = [_audio_info(f) for f in files]
    channels = headers[0][2]
    for file, (_, _, c) in zip(files, headers, strict=True):
        if c != channels:
            raise DataError(
                f"audio folder '{root}' mixes channel counts: '{files[0]}' has {channels} channel"
                f"{'s' * (channels != 1)}, '{file}' has {c}; convert the files to one channel count."
            )
    rates = sorted({r for _, r, _ in headers})
    if sample_rate is None:
        if len(rates) > 1:
            first = next(f for f, h in zip(files, headers, strict=True) if h[1] == rates[0])
            other = next(f for f, h in zip(files, headers, strict=True) if h[1] == rates[-1])
            raise DataError(
                f"audio folder '{root}' mixes sample rates: '{first}' is {rates[0]} Hz, '{other}' is {rates[-1]} Hz; "
                f"pass --sample-rate (e.g. --sample-rate {rates[-1]}) to resample every clip to one rate."
            )
        sample_rate = rates[0]
    rate = int(sample_rate)
    lengths = [_resampled_length(frames, r, rate) for frames, r, _ in headers]
    length = round(clip_seconds * rate) if clip_seconds is not None else min(lengths)
    if length < 1:
        raise DataError(f"clip_seconds={clip_seconds!r} at {rate} Hz is less than one sample.")
    short = [i for i, n in enumerate(lengths) if n < length]
    if short:
        i = short[0]
        more = f" ({len(short) - 1} more files are shorter too)" if len(short) > 1 else ""
        raise DataError(
            f"audio file '{files[i]}' lasts {_seconds(headers[i][0], headers[i][1])}, shorter than the clip length "
            f"of {_seconds(length, rate)}{more}; pass a shorter --clip-seconds or remove the file."
        )
    _check_bytes(f"audio folder '{root}' ({len(files)} clips)", len(files) * channels * length * 4)
    clips = torch.empty(len(files), channels, length, dtype=torch.float32)
    for i, file in enumerate(files):
        signal, file_rate = read_audio(file)
        signal = resample(signal, file_rate, rate)
        if signal.shape[1] < length:  # a header that promised more samples than the file holds
            raise DataError(
                f"audio file '{file}' lasts {_seconds(signal.shape[1], rate)}, shorter than the clip length of "
                f"{_seconds(length, rate)}; pass a shorter --clip-seconds or remove the file."
            )
        start = (signal.shape[1] - length) // 2
        clips[i] = torch.from_numpy(np.clip(signal[:, start : start + length], -1.0, 1.0))
    label_tensor = torch.tensor(labels, dtype=torch.long) if labels is not None else None
    info = SignalInfo(kind="audio", channels=channels, length=length, sample_rate=rate)
    return SignalDataset(clips, label_tensor, class_names, info)


# --- time series ---------------------------------------------------------------------------------------------------


def draw_observed(n: int, channels: int, length: int, generator: torch.Generator) -> Tensor:
    """n training masks (n, C, L), True = observed, for a conditional imputation model (CSDI's self-supervised
    targets, Tashiro et al. 2021, sec. 4): each mask is, with equal chance, random points (each point missing with
    a probability drawn uniformly from [0, 1], CSDI's random strategy), one block of missing steps in every channel
    (the "historical" gaps of real series), or a missing tail (forecasting); blocks and tails last 1 to 3L/4 steps.
    At least one point of each mask is missing."""
    kind = torch.randint(3, (n,), generator=generator)
    ratio = torch.rand(n, generator=generator)
    points = torch.rand(n, channels, length, generator=generator) < ratio[:, None, None]
    longest = max(1, 3 * length // 4)
    span = 1 + (torch.rand(n, generator=generator) * longest).long().clamp(max=longest - 1)
    start = (torch.rand(n, generator=generator) * (length - span + 1)).long()
    start = torch.where(kind == 2, length - span, start)
    steps = torch.arange(length)
    block = ((steps >= start[:, None]) & (steps < (start + span)[:, None]))[:, None].expand(-1, channels, -1)
    missing = torch.where((kind == 0)[:, None, None], points, block)
    first = torch.randint(length, (n,), generator=generator)
    none = ~missing.flatten(1).any(1)
    missing[none, :, first[none]] = True  # a random mask that left everything observed: one point missing
    return ~missing


WINDOW_STD_FLOOR = 0.1  # the smallest per-window std (in the series' standardised units): a flat window is not blown up


@dataclass(frozen=True)
class WindowScale:
    """Per-window instance normalisation (RevIN, Kim et al. 2022, eq. 1 and 3, without the affine part; DeepAR's
    mean scaling, Salinas et al. 2020, sec. 3.3): each window's channel shifted by ``mean`` and divided by ``std``
    (B, C, 1), both taken from its observed points only."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor, observed: Tensor | None = None, floor: float = WINDOW_STD_FLOOR) -> WindowScale:
        """The mean and std (floored at ``floor``) of each window's channel of x (B, C, L) over its ``observed``
        points (None: all); a channel with fewer than two observed points keeps the series' scale (0, 1)."""
        keep = torch.ones_like(x, dtype=torch.bool) if observed is None else observed.expand_as(x)
        count = keep.sum(-1, keepdim=True)
        mean = torch.where(keep, x, 0).sum(-1, keepdim=True) / count.clamp(min=1)
        var = torch.where(keep, (x - mean) ** 2, 0).sum(-1, keepdim=True) / count.clamp(min=1)
        enough = count > 1
        mean = torch.where(enough, mean, torch.zeros_like(mean))
        std = torch.where(enough, var.sqrt().clamp(min=floor), torch.ones_like(var))
        return cls(mean, std)

    def normalise(self, x: Tensor) -> Tensor:
        """(x - mean) / std, RevIN's eq. 1."""
        return (x - self.mean) / self.std

    def denormalise(self, x: Tensor) -> Tensor:
        """x * std + mean, RevIN's eq. 3: back to the series' standardised units."""
        return x * self.std + self.mean


def fill_gaps(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Fill unobserved points of (..., L) by linear interpolation along the last axis (outside the observed span:
    the nearest observed value; a row with nothing observed: 0)."""
    values = np.asarray(values, dtype=np.float64)
    observed = np.asarray(observed, dtype=bool)
    out = np.where(observed, values, 0.0)
    flat_out = out.reshape(-1, out.shape[-1])
    flat_obs = observed.reshape(-1, observed.shape[-1])
    steps = np.arange(out.shape[-1])
    for row in np.flatnonzero(flat_obs.any(axis=1) & ~flat_obs.all(axis=1)):
        seen = flat_obs[row]
        flat_out[row] = np.interp(steps, steps[seen], flat_out[row, seen])
    return flat_out.reshape(out.shape)


def transform_series(values: np.ndarray, transform: str) -> np.ndarray:
    """Values (NaN = missing) in the data's units -> the transform's scale, float64: "none" as they are, "sqrt" the
    square root (values >= 0) or "log" the natural log (values > 0), the variance-stabilising transforms of counts
    and of multiplicative series (Bartlett 1947, "The use of transformations", Biometrics 3(1), sec. 2-3); a value
    outside the transform's domain is one DataError."""
    array = np.asarray(values, dtype=np.float64)
    if transform == "none":
        return array
    if transform not in SERIES_TRANSFORMS:
        raise DataError(f"series transform {transform!r} is not one of {', '.join(map(repr, SERIES_TRANSFORMS))}.")
    low = np.nanmin(array) if np.isfinite(array).any() else np.nan
    if transform == "sqrt" and low < 0:
        raise DataError(f"the series transform 'sqrt' takes values >= 0, but a value is {low:g}; use 'none'.")
    if transform == "log" and low <= 0:
        raise DataError(f"the series transform 'log' takes values > 0, but a value is {low:g}; use 'sqrt' or 'none'.")
    return np.sqrt(array) if transform == "sqrt" else np.log(array)


def untransform_series(values: np.ndarray, transform: str) -> np.ndarray:
    """The inverse of ``transform_series`` (float64): "sqrt" squares max(y, 0) (a sample below 0 on the square-root
    scale is the data's 0), "log" exponentiates; both are monotone, so quantiles of samples map to quantiles."""
    array = np.asarray(values, dtype=np.float64)
    if transform == "sqrt":
        return np.square(np.maximum(array, 0.0))
    if transform == "log":
        return np.exp(array)
    return array


def standardise_series(values: np.ndarray | Tensor, info: SignalInfo) -> np.ndarray:
    """(..., C, L) values in the data's units -> transformed (``info.transform``) and standardised with ``info``'s
    per-channel mean and std."""
    mean, std = _stats(info)
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    return (transform_series(array, info.transform) - mean[:, None]) / std[:, None]


def destandardise_series(values: np.ndarray | Tensor, info: SignalInfo) -> np.ndarray:
    """(..., C, L) standardised values -> the data's units (``x * std + mean`` per channel, then the inverse of
    ``info.transform``; float64)."""
    mean, std = _stats(info)
    array = values.detach().to("cpu", torch.float64).numpy() if isinstance(values, Tensor) else np.asarray(values)
    return untransform_series(array.astype(np.float64) * std[:, None] + mean[:, None], info.transform)


def _stats(info: SignalInfo) -> tuple[np.ndarray, np.ndarray]:
    if info.kind != "series" or info.mean is None or info.std is None or info.columns is None:
        raise DataError("this signal info holds no series scaling (columns, mean, std); expected a series model.")
    return np.asarray(info.mean, dtype=np.float64), np.asarray(info.std, dtype=np.float64)


def _fit_stats(series: list[np.ndarray], columns: list[str], where: str) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std over every observed value of every (C, T) series."""
    joined = np.concatenate(series, axis=1)
    means, stds = [], []
    for c, name in enumerate(columns):
        seen = joined[c][~np.isnan(joined[c])]
        if seen.size == 0:
            raise DataError(f"{where}: the value column {name!r} has no values (every cell is missing).")
        mean = float(seen.mean())
        std = float(seen.std())
        means.append(mean)
        stds.append(std if std > 0 and math.isfinite(std) else 1.0)
    return means, stds


def default_stride(lengths: list[int], window: int) -> int:
    """1 (every window), raised just enough that series of these lengths give at most ``MAX_DEFAULT_WINDOWS``."""
    positions = sum(max(0, n - window + 1) for n in lengths)
    return max(1, -(-positions // MAX_DEFAULT_WINDOWS))


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _column_numbers(frame: pd.DataFrame, name: str, where: str) -> np.ndarray:
    """A value column's cells as float64, NaN where missing; text or a non-finite number is one DataError."""
    import pandas as pd

    cells = frame[name].astype(str).str.strip()
    missing = cells.isin(MISSING_SPELLINGS).to_numpy()
    numbers = np.array(pd.to_numeric(cells.where(~missing, "nan"), errors="coerce"), dtype=np.float64)
    bad = np.flatnonzero(~missing & ~np.isfinite(numbers))
    if bad.size:
        row = int(bad[0])
        value = frame[name].iloc[row]
        kind = "a finite number" if cells.iloc[row].lower().lstrip("+-") in ("inf", "infinity") else "a number"
        more = f" ({bad.size - 1} more such cells in this column)" if bad.size > 1 else ""
        raise DataError(
            f"{where}: column {name!r} row {row + 1} holds {value!r}, which is not {kind}{more}; value columns hold "
            "numbers (an empty cell or NA for a missing value)."
        )
    numbers[missing] = np.nan
    return numbers


def _is_time_column(frame: pd.DataFrame, name: str) -> bool:
    """A time column: named like one (``TIME_COLUMN_NAMES``), or none of its present cells is a number."""
    import pandas as pd

    if name.strip().lower() in TIME_COLUMN_NAMES:
        return True
    cells = frame[name].astype(str).str.strip()
    present = cells[~cells.isin(MISSING_SPELLINGS)]
    return bool(present.size) and bool(pd.to_numeric(present, errors="coerce").isna().all())


def _split_columns(
    frame: pd.DataFrame, where: str, id_column: str | None, known: list[str] | None = None
) -> tuple[str | None, list[str]]:
    """(the time column or None, the value columns) of a series CSV."""
    names = [str(c) for c in frame.columns]
    rest = [n for n in names if n != id_column]
    time = rest[0] if rest and (known is None or rest[0] not in known) and _is_time_column(frame, rest[0]) else None
    values = [n for n in rest if n != time]
    if not values:
        raise DataError(f"{where} has no value columns (columns: {', '.join(map(repr, names))}); expected numbers.")
    return time, values


def _fitted_columns(values: list[str], fitted: SignalInfo, where: str, time: str | None) -> list[str]:
    """The model's columns, checked against a file's value columns (any order)."""
    model = list(fitted.columns or [])
    missing = [c for c in model if c not in values]
    extra = [c for c in values if c not in model]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks the model's column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"has column{'s' * (len(extra) > 1)} {', '.join(map(repr, extra))} the model does not know")
        kept = f" (the time column {time!r} is kept aside)" if time else ""
        raise DataError(
            f"{where} {' and '.join(parts)}; the model's value columns are {', '.join(map(repr, model))}, plus an "
            f"optional time column first{kept}."
        )
    return model


def load_series(
    spec: str | os.PathLike[str],
    window: int,
    id_column: str | None = None,
    stride: int | None = None,
    fitted: SignalInfo | None = None,
    transform: str = "none",
) -> SignalDataset:
    """Windows (N, C, window) of "series:<file.csv>" (wide, or long with ``id_column``), ``transform``-ed
    (``SERIES_TRANSFORMS``) and standardised per channel; "array:<file.npy>" (or a .npy path) loads ready windows.
    ``fitted`` (a model's info) fixes columns, transform and scale.

    See the module docstring for the time column, missing cells, the default stride and the gap filling.
    """
    text = os.fspath(spec).strip()
    kind, path = _spec_path(text if text.lower().startswith(("series:", "array:")) else f"series:{text}")
    if fitted is None and transform not in SERIES_TRANSFORMS:
        raise DataError(f"series transform {transform!r} is not one of {', '.join(map(repr, SERIES_TRANSFORMS))}.")
    transform = fitted.transform if fitted is not None else transform
    if kind == "array":
        return _load_array(path, fitted, transform)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise DataError(f"window must be an integer of at least 2 time steps, got {window!r}.")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1):
        raise DataError(f"stride must be a positive integer, got {stride!r}.")
    where = f"series file {path}"
    frame = read_csv_table(path)
    if id_column is not None and id_column not in frame.columns:
        raise DataError(
            f"{where} has no id column {id_column!r}; its columns are {', '.join(map(repr, frame.columns))}."
        )
    time, columns = _split_columns(frame, where, id_column, fitted.columns if fitted is not None else None)
    if fitted is not None:
        columns = _fitted_columns(columns, fitted, where, time)
    table = np.stack([_column_numbers(frame, name, where) for name in columns])  # (C, rows)
    if id_column is None:
        names, series = [None], [table]
    else:
        ids = frame[id_column].astype(str).str.strip()
        empty = np.flatnonzero(ids.isin(MISSING_SPELLINGS).to_numpy())
        if empty.size:
            raise DataError(f"{where}: row {int(empty[0]) + 1} has no id in the id column {id_column!r}.")
        codes, names = ids.factorize()  # series in order of first appearance
        series = [table[:, codes == k] for k in range(len(names))]
    for name, s in zip(names, series, strict=True):
        if s.shape[1] < window:
            which = where if name is None else f"{where}, series {name!r} (column {id_column!r}),"
            raise DataError(
                f"{which} has {s.shape[1]} time step{'s' * (s.shape[1] != 1)}, fewer than the window of {window}; "
                "pass a shorter --window."
            )
    if fitted is not None:
        mean, std = list(fitted.mean or []), list(fitted.std or [])
    else:
        mean, std = _fit_stats([_transformed(s, transform, where) for s in series], columns, where)
    step = default_stride([s.shape[1] for s in series], window) if stride is None else int(stride)
    starts = [(k, t) for k, s in enumerate(series) for t in _window_starts(s.shape[1], window, step)]
    _check_bytes(f"{where} ({len(starts)} windows)", len(starts) * len(columns) * window * 4)
    windows = np.stack([series[k][:, t : t + window] for k, t in starts])
    info = SignalInfo(
        kind="series", channels=len(columns), length=window, columns=columns, mean=mean, std=std, transform=transform
    )
    return _series_dataset(windows, info, where)


def _transformed(values: np.ndarray, transform: str, where: str) -> np.ndarray:
    """``transform_series`` with the file named in its error."""
    try:
        return transform_series(values, transform)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _series_dataset(windows: np.ndarray, info: SignalInfo, where: str) -> SignalDataset:
    """(N, C, L) raw windows with NaN for missing -> standardised, gaps filled, with the observed mask."""
    observed = ~np.isnan(windows)
    _transformed(windows, info.transform, where)  # a value outside the transform's domain: the file's error
    x = fill_gaps(standardise_series(windows, info), observed)
    mask = None if observed.all() else torch.from_numpy(observed)
    return SignalDataset(torch.from_numpy(x.astype(np.float32)), None, None, info, mask)


def _load_array(path: Path, fitted: SignalInfo | None, transform: str = "none") -> SignalDataset:
    """A .npy array (N, L) or (N, C, L) of numbers as N ready windows, standardised per channel."""
    what = f"array file '{path}'"
    if not path.is_file():
        raise DataError(f"{what} does not exist or is not a file; expected a .npy array of shape (N, L) or (N, C, L).")
    _check_bytes(what, path.stat().st_size)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{what} is not a .npy array numpy can read ({err}).") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        kind = getattr(array, "dtype", type(array).__name__)
        raise DataError(f"{what} holds {kind} values; expected numbers (float or integer).")
    if array.ndim == 2:
        array = array[:, None, :]
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[2] < 2:
        raise DataError(
            f"{what} has shape {tuple(array.shape)}; expected (N, L) or (N, C, L) with N >= 1 windows of L >= 2 steps."
        )
    windows = array.astype(np.float64)
    if np.isinf(windows).any():
        raise DataError(f"{what} holds infinite values; expected finite numbers (NaN marks a missing value).")
    channels = windows.shape[1]
    columns = ["value"] if channels == 1 else [f"value{c}" for c in range(channels)]
    if fitted is not None:
        if fitted.channels != channels or fitted.length != windows.shape[2]:
            raise DataError(
                f"{what} holds windows of {channels} channel(s) x {windows.shape[2]} steps, but the model was trained "
                f"on {fitted.channels} x {fitted.length}."
            )
        columns, mean, std = list(fitted.columns or columns), list(fitted.mean or []), list(fitted.std or [])
    else:
        flat = windows.transpose(1, 0, 2).reshape(channels, -1)
        mean, std = _fit_stats([_transformed(flat, transform, what)], columns, what)
    info = SignalInfo(
        kind="series",
        channels=channels,
        length=windows.shape[2],
        columns=columns,
        mean=mean,
        std=std,
        transform=transform,
    )
    return _series_dataset(windows, info, what)


def write_series_csv(values: np.ndarray | Tensor, info: SignalInfo, path: str | os.PathLike[str]) -> None:
    """Write standardised windows (N, C, L) (or one (C, L)) de-standardised as a long CSV, atomically: columns
    sample, t, then ``info.columns``; a NaN value is an empty cell; numbers with 8 significant digits."""
    raw = destandardise_series(values, info)
    raw = raw[None] if raw.ndim == 2 else raw
    if raw.ndim != 3 or raw.shape[1] != info.channels:
        raise DataError(f"series to write must have shape (N, {info.channels}, L), got {tuple(raw.shape)}.")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["sample", "t", *(info.columns or [])])
        for n in range(raw.shape[0]):
            for t in range(raw.shape[2]):
                cells = ["" if math.isnan(v) else f"{v:.8g}" for v in raw[n, :, t].tolist()]
                writer.writerow([n, t, *cells])


class SeriesInput(NamedTuple):
    """One series to impute or forecast: values (C, T) standardised and gap-filled, mask (C, T) True where
    observed, and the time column (its name and cells as written) when the file had one."""

    values: Tensor
    mask: Tensor
    time_name: str | None
    time: list[str] | None


def read_series_input(path: str | os.PathLike[str], info: SignalInfo) -> SeriesInput:
    """Read a wide CSV holding a model's value columns (any order; an optional time column first, kept aside), gaps
    as empty cells, standardised with the model's stats; gaps are filled by linear interpolation (``fill_gaps``)."""
    path = Path(path)
    _stats(info)
    where = f"series file {path}"
    frame = read_csv_table(path)
    time, columns = _split_columns(frame, where, None, info.columns)
    columns = _fitted_columns(columns, info, where, time)
    raw = np.stack([_column_numbers(frame, name, where) for name in columns])  # (C, T)
    observed = ~np.isnan(raw)
    for name, seen in zip(columns, observed, strict=True):
        if not seen.any():
            raise DataError(f"{where}: the value column {name!r} has no values (every cell is missing).")
    _transformed(raw, info.transform, where)
    values = fill_gaps(standardise_series(raw, info), observed)
    times = frame[time].tolist() if time is not None else None
    return SeriesInput(torch.from_numpy(values.astype(np.float32)), torch.from_numpy(observed), time, times)


def read_series_csv_for_model(path: str | os.PathLike[str], info: SignalInfo) -> tuple[Tensor, Tensor]:
    """(values (C, T) standardised with the model's stats, gaps filled; mask (C, T) bool, True where observed) of a
    wide CSV in the model's value columns; see ``read_series_input`` (which also returns the time column)."""
    read = read_series_input(path, info)
    return read.values, read.mask
