"""Calibrated bands for a series model's draws: split-conformal scaling of their spread (floor 5).

Conformalized quantile regression (Romano et al. 2019, eq. 6-7) takes an interval [lo_i, hi_i] on n held-out
points, scores each by E_i = max(lo_i - y_i, y_i - hi_i) and widens every later interval by Q, the
ceil((n + 1)(1 - alpha))-th smallest E_i: the widened interval then covers a new exchangeable point with
probability >= 1 - alpha. Here the score is measured in each point's own half-widths about the draws' median m_i
(the scaled form of the score, as in Lei et al. 2018's locally weighted split conformal),

    E_i = max((m_i - y_i) / (m_i - lo_i), (y_i - m_i) / (hi_i - m_i)),

so the calibrated interval is [m - Q (m - lo), m + Q (hi - m)]: exactly what scaling every draw's distance to its
point's median by Q gives (``scale_about_median``). The draws stay a set of samples whose every quantile is widened
(Q > 1) or narrowed (Q < 1) by one factor, and an observed point (every draw equal to it) comes back bit for bit.
The held-out points are masked the way the task will be (``calibration_cases``: random points, one block, or a
forecast's horizon) on a stretch of series the model was not trained on. Points of one series are not exchangeable,
so the guarantee is approximate; the bench measures the coverage it reaches.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_write_text
from ..pipeline import Pipeline
from .common import check_count
from .series import SeriesSamples, impute_series

__all__ = [
    "CALIBRATION_TASKS",
    "Calibration",
    "calibrate_series",
    "calibration_cases",
    "conformal_scale",
    "scale_about_median",
]

CALIBRATION_TASKS = ("missing", "block", "horizon")  # how held-out points are masked: random share, a block, ahead
WIDTH_FLOOR = 1e-12  # a half-width below this (all draws equal on one side) counts as this


def conformal_scale(samples: Tensor | np.ndarray, target: Tensor | np.ndarray, level: float) -> float:
    """Q of the scaled CQR score (module docstring) for draws (S, N) of N held-out points with truth (N,): the
    factor by which the draws' spread about their medians must be scaled for their central ``level`` interval to
    cover ``level`` of the points (Romano et al. 2019, eq. 6-7: the ceil((N + 1) level)-th smallest score)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.9.")
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.ndim != 2 or y.shape != x.shape[1:] or y.size == 0:
        raise ValueError(f"expected draws (S, N) and a truth (N,) with N >= 1; got {x.shape} and {y.shape}.")
    low, mid, high = np.quantile(x, [(1.0 - level) / 2.0, 0.5, (1.0 + level) / 2.0], axis=0)
    below = (mid - y) / np.maximum(mid - low, WIDTH_FLOOR)
    above = (y - mid) / np.maximum(high - mid, WIDTH_FLOOR)
    scores = np.sort(np.maximum(below, above))
    rank = min(math.ceil((y.size + 1) * level), y.size)  # more than N: the largest score (no finite guarantee)
    return float(max(scores[rank - 1], 0.0))


def scale_about_median(samples: Tensor, scale: float) -> Tensor:
    """Draws (S, ...) with every draw's distance to its point's median (over dim 0) multiplied by ``scale``; a point
    whose draws are all equal comes back bit for bit."""
    mid = torch.quantile(samples.float(), 0.5, dim=0).to(samples.dtype)
    return mid + scale * (samples - mid)


@dataclass(frozen=True)
class Calibration:
    """A fitted spread scale for one model and one kind of task (``task``: missing, block or horizon, with its
    ``size``): draws scaled about their median by ``scale`` have their central ``level`` interval covering
    ``level`` of the ``points`` held-out points it was fitted on."""

    level: float
    scale: float
    points: int
    task: str
    size: float

    def apply(self, drawn: SeriesSamples) -> SeriesSamples:
        """The draws with their spread scaled (observed points unchanged)."""
        return SeriesSamples(scale_about_median(drawn.samples, self.scale), drawn.observed)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write it as JSON (atomically)."""
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read one written by ``save``; one clear error for a file that is not one."""
        try:
            fields = json.loads(Path(path).read_text())
            made = cls(**fields)
            made = cls(float(made.level), float(made.scale), int(made.points), str(made.task), float(made.size))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a calibration file written by `calibrate` ({error}).") from None
        if not 0 < made.level < 1 or not made.scale >= 0:
            raise ValueError(f"{path}: level {made.level} or scale {made.scale} out of range.")
        return made


def _check_task(task: str, size: float, window: int) -> None:
    if task not in CALIBRATION_TASKS:
        raise ValueError(f"task={task!r} is not one of {', '.join(CALIBRATION_TASKS)}.")
    if task == "missing" and not 0 < size < 1:
        raise ValueError(f"missing={size} is the share of points to hide; expected a number in (0, 1), e.g. 0.1.")
    if task != "missing" and not (float(size).is_integer() and 1 <= size < window):
        raise ValueError(f"{task}={size} must be a whole number of steps from 1 to {window - 1} (the window - 1).")


def calibration_cases(
    length: int, window: int, task: str, size: float, *, start: int = 0, draws: int = 5, seed: int = 0
) -> Iterator[tuple[slice, np.ndarray]]:
    """Masks of one task on steps ``start`` to ``length`` of a series: (the slice of the series to pass, its
    observed mask (1, slice length)). missing: ``draws`` masks hiding a ``size`` share of those steps at random
    (the whole series passed); block: ``draws`` blocks of ``size`` steps at random places (the model's window
    around each passed); horizon: the ``size`` steps after ``draws`` origins spread evenly from ``start`` (or the
    first origin with a window of history) to the last (the window ending ``size`` steps after each)."""
    _check_task(task, size, window)
    span = np.arange(start, length)
    rng = np.random.default_rng([seed, CALIBRATION_TASKS.index(task)])
    if task == "missing":
        for _ in range(draws):
            mask = np.ones((1, length), dtype=bool)
            mask[0, rng.choice(span, max(1, int(round(size * span.size))), replace=False)] = False
            yield slice(0, length), mask
        return
    size = int(size)
    if task == "block":
        for _ in range(draws):
            first = int(rng.integers(start, length - size + 1))
            lo = int(np.clip(first + size // 2 - window // 2, 0, length - window))
            mask = np.ones((1, window), dtype=bool)
            mask[0, first - lo : first - lo + size] = False
            yield slice(lo, lo + window), mask
        return
    first, last = max(start, window - size), length - size
    if first > last:
        raise ValueError(f"no forecast origin fits: steps {start} to {length} hold no window's history and horizon.")
    for origin in np.unique(np.linspace(first, last, draws).round().astype(int)).tolist():
        mask = np.ones((1, window), dtype=bool)
        mask[0, -size:] = False
        yield slice(origin + size - window, origin + size), mask


def calibrate_series(
    pipe: Pipeline,
    values: Tensor,
    task: str,
    size: float,
    *,
    start: int = 0,
    draws: int = 5,
    level: float = 0.9,
    num_samples: int = 50,
    seed: int = 0,
    **settings: Any,
) -> Calibration:
    """Fit a ``Calibration`` of ``pipe`` for one task (``calibration_cases``) on a fully observed series (C, T) in
    the model's standardised space whose steps from ``start`` on the model was not trained on: every case is
    imputed with ``num_samples`` draws (``settings`` as for ``impute_series``) and its hidden points scored."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.9.")
    check_count("draws", draws)
    check_count("num_samples", num_samples)
    window = pipe.config.data.signal.length if pipe.config.data.signal is not None else 0
    _check_task(task, size, window)
    if values.ndim != 2 or not 0 <= start < values.shape[1] or values.shape[1] < window:
        raise ValueError(
            f"calibration takes a series (channels, steps) of at least the window's {window} steps and a start "
            f"inside it; got {tuple(values.shape)} and start={start}."
        )
    drawn, truth = [], []
    for k, (part, mask) in enumerate(calibration_cases(values.shape[1], window, task, size, start=start, draws=draws)):
        given = values[:, part].float()
        keep = torch.from_numpy(mask).expand_as(given)
        out = impute_series(pipe, given, keep, num_samples, seed=seed + k, **settings).samples
        drawn.append(out[:, ~keep].double().numpy())
        truth.append(given[~keep].double().numpy())
    samples, target = np.concatenate(drawn, axis=1), np.concatenate(truth)
    return Calibration(level, conformal_scale(samples, target, level), int(target.size), task, float(size))
