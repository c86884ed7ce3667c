"""How signals are shown and written: spectrogram or line-plot grids, WAV files and series CSVs (floor 1).

Audio previews are log-magnitude spectrograms (a short-time Fourier transform with a Hann window, as DiffWave's
figures show them); series previews are line plots in the data's own units (the model's standardisation undone).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import SignalInfo
from .io import atomic_path

__all__ = ["spectrogram", "to_data_units", "plot_signals", "write_signal_files", "write_series_bands"]


def spectrogram(signal: Tensor, n_fft: int = 256) -> Tensor:
    """log(1 + |STFT|) of a mono signal (L,) with a Hann window and hop n_fft / 4: (frequencies, frames)."""
    n_fft = max(8, min(n_fft, 2 ** int(np.log2(max(8, signal.shape[-1])))))
    window = torch.hann_window(n_fft, dtype=signal.dtype)
    stft = torch.stft(signal, n_fft, hop_length=n_fft // 4, window=window, return_complex=True, center=True)
    return torch.log1p(stft.abs())


def to_data_units(samples: Tensor, info: SignalInfo) -> Tensor:
    """Series windows (N, C, L) from the model's standardised space back to the data's units (its transform
    inverted); audio as it is."""
    if info.kind != "series" or info.mean is None or info.std is None:
        return samples
    from .data.signals import destandardise_series

    return torch.from_numpy(destandardise_series(samples, info)).to(samples.dtype)


def plot_signals(
    samples: Tensor,
    info: SignalInfo,
    path: str | os.PathLike[str],
    nrow: int = 8,
    row_labels: Sequence[str] | None = None,
    bands: Tensor | None = None,
) -> None:
    """A grid of spectrograms (audio, first channel) or line plots (series, every channel), ``nrow`` per row, each
    row labelled; ``bands`` (2, N, C, L) adds a shaded interval per plot (series). Written atomically as a PNG."""
    from matplotlib.figure import Figure

    samples = to_data_units(samples.detach().float().cpu(), info)
    n = len(samples)
    cols = max(1, min(nrow, n))
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.2 * cols, 1.8 * rows) if n > 1 else (8.0, 2.5), dpi=80)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        if info.kind == "audio":
            ax.imshow(spectrogram(samples[i, 0]).numpy(), origin="lower", aspect="auto", cmap="magma")
        else:
            t = np.arange(samples.shape[-1])
            for c in range(samples.shape[1]):
                ax.plot(t, samples[i, c].numpy(), linewidth=0.8)
                if bands is not None:
                    low, high = to_data_units(bands[0], info)[i, c], to_data_units(bands[1], info)[i, c]
                    ax.fill_between(t, low.numpy(), high.numpy(), alpha=0.25)
        if row_labels and i % cols == 0 and i // cols < len(row_labels):
            ax.set_ylabel(str(row_labels[i // cols])[:16], fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_signal_files(
    samples: Tensor, info: SignalInfo, folder: Path, labels: Sequence[int] | None = None
) -> list[Path]:
    """Audio: one 16-bit WAV per sample, ``NNNN.wav`` (under a folder per label when labelled); series: one CSV
    ``samples.csv`` of every window in the data's units (columns sample, t and the series' columns)."""
    from .data.signals import write_series_csv, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    if info.kind == "series":
        path = folder / "samples.csv"
        write_series_csv(samples.detach().float().cpu().numpy(), info, path)
        return [path]
    written = []
    for i, signal in enumerate(samples.detach().float().cpu()):
        where = folder / str(labels[i]) if labels is not None else folder
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{i:04d}.wav"
        write_wav(signal.numpy(), path, int(info.sample_rate or 16000))
        written.append(path)
    return written


def write_series_bands(
    samples: Tensor,
    info: SignalInfo,
    path: str | os.PathLike[str],
    level: float = 0.9,
    time: Sequence[str] | None = None,
    time_name: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    given: dict[str, list[str]] | None = None,
    observed: Tensor | None = None,
) -> None:
    """Samples (S, C, T) of one series (the model's standardised space) as a CSV in the data's units: the time
    column if given, then per value column its median and the central ``level`` interval (``<name>_low``,
    ``<name>_high``); where ``observed`` (C, T), the cells of ``given`` (the input's text per column) are written as
    they were read. ``plot`` also draws the median with its band. Written atomically."""
    import pandas as pd

    data = to_data_units(samples.detach().double().cpu(), info)
    q = torch.tensor([0.5, (1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    median, low, high = torch.quantile(data, q, dim=0)
    columns = info.columns or [f"value{c}" for c in range(data.shape[1])]
    table: dict[str, object] = {}
    if time is not None:
        table[time_name or "t"] = list(time)[-data.shape[2] :]
    for c, name in enumerate(columns):
        cells = [[f"{float(v):.8g}" for v in row] for row in (median[c], low[c], high[c])]
        if given is not None and observed is not None and name in given:
            original = list(given[name])[-data.shape[2] :]
            for t in observed[c].nonzero().flatten().tolist():  # observed points: the input's own text
                cells[0][t] = cells[1][t] = cells[2][t] = original[t]
        table[name], table[f"{name}_low"], table[f"{name}_high"] = cells
    frame = pd.DataFrame(table)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    if plot is not None:
        standard = torch.quantile(samples.detach().double().cpu(), q, dim=0).float()
        plot_signals(standard[0][None], info, plot, nrow=1, bands=standard[1:, None])
