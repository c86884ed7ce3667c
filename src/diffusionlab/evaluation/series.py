"""Probabilistic scores of sampled series (imputation, forecasting): CRPS, median errors, interval coverage (floor 3).

Every function takes ``samples`` (S, ...) drawn for one target (...), the ``target`` itself and a boolean ``mask``
(...) of the points to score (the imputed or forecast ones), as tensors or arrays, and computes in float64 on the
CPU; points outside the mask are never read, so they may be NaN. Pass values on the data's own scale: CSDI
de-standardises before scoring, and the CRPS normaliser sum |target| is not invariant to a shift.

- ``crps_from_samples``: CSDI's CRPS (Tashiro et al. 2021, sec. 6.1 "Metrics" and the appendix on CRPS; matched to
  ``calc_quantile_CRPS`` in ermongroup/CSDI utils.py, commit 6a5b2e7): the quantile loss at the 19 levels 0.05,
  0.10, ..., 0.95 of the samples (linear interpolation, as ``torch.quantile``), doubled, summed over the scored
  points, divided by sum |target| over them and averaged over the levels.
- ``crps_energy``: the CRPS of the samples' empirical distribution, E|X - y| - E|X - X'| / 2 (Gneiting & Raftery
  2007, eq. 21), normalised the same way; a check on the quantile form, which it approximates (the quantile form
  leaves out the levels below 0.05 and above 0.95, so it is a mean over the central levels, not the integral).
- ``median_errors``: MAE and RMSE of the per-point sample median (the midpoint median; CSDI takes
  ``torch.median``, the lower of the two middle samples when S is even).
- ``interval_coverage``: the share of scored points inside the central interval of the samples at ``level``.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = [
    "CSDI_QUANTILES",
    "crps_from_samples",
    "crps_energy",
    "median_errors",
    "interval_coverage",
    "forecast_scores",
]

ArrayLike = Tensor | np.ndarray

CSDI_QUANTILES = np.arange(1, 20) / 20
"""The 19 quantile levels of CSDI's CRPS: 0.05, 0.10, ..., 0.95."""


def _as_float(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold numbers: {error}") from None


def _as_mask(mask: ArrayLike) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf" or not np.isin(array, (0, 1)).all():
        raise ValueError(f"mask must be boolean (or 0/1), got dtype {array.dtype}")
    return array.astype(bool)


def _scored(samples: ArrayLike, target: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The samples (S, P) and target (P,) at the P masked points, after checking shapes and values."""
    x = _as_float(samples, "samples")
    y = _as_float(target, "target")
    m = _as_mask(mask)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"samples must have shape (S, ...) with S >= 1, got {tuple(x.shape)}")
    if x.shape[1:] != y.shape:
        raise ValueError(f"samples {tuple(x.shape)} must be (S, *target.shape) with target {tuple(y.shape)}")
    if m.shape != y.shape:
        raise ValueError(f"mask {tuple(m.shape)} must have the target's shape {tuple(y.shape)}")
    if not m.any():
        raise ValueError("mask selects no points to score")
    x, y = x[:, m], y[m]
    if not np.isfinite(y).all():
        raise ValueError("target has non-finite values at scored points")
    if not np.isfinite(x).all():
        raise ValueError("samples have non-finite values at scored points")
    return x, y


def _normaliser(y: np.ndarray) -> float:
    total = float(np.abs(y).sum())
    if total == 0.0:
        raise ValueError("sum |target| over the scored points is 0: the normalised CRPS is undefined")
    return total


def crps_from_samples(samples: ArrayLike, target: ArrayLike, mask: ArrayLike) -> float:
    """CSDI's normalised CRPS (Tashiro et al. 2021, sec. 6.1): mean over the 19 levels q of
    sum_i 2 * rho_q(y_i - Q_q(i)) / sum_i |y_i|, with Q_q the samples' q-quantile and rho_q the pinball loss."""
    x, y = _scored(samples, target, mask)
    quantiles = np.quantile(x, CSDI_QUANTILES, axis=0)  # (19, P), linear interpolation as torch.quantile
    below = (y <= quantiles).astype(np.float64)
    losses = 2.0 * np.abs((quantiles - y) * (below - CSDI_QUANTILES[:, None])).sum(axis=1)
    return float(np.mean(losses / _normaliser(y)))


def crps_energy(samples: ArrayLike, target: ArrayLike, mask: ArrayLike, *, normalise: bool = True) -> float:
    """The samples' empirical CRPS, E|X - y| - E|X - X'| / 2 (Gneiting & Raftery 2007, eq. 21), summed over the
    scored points and divided by sum |y| (CSDI's normaliser), or averaged over the points if not ``normalise``."""
    x, y = _scored(samples, target, mask)
    count = x.shape[0]
    spread = np.abs(x - y).mean(axis=0)
    ordered = np.sort(x, axis=0)
    weights = (2.0 * np.arange(1, count + 1) - count - 1)[:, None]  # sum_{i,j} |x_i - x_j| = 2 sum_k w_k x_(k)
    pair_mean = 2.0 * (weights * ordered).sum(axis=0) / count**2
    per_point = spread - 0.5 * pair_mean
    return float(per_point.sum() / _normaliser(y)) if normalise else float(per_point.mean())


def median_errors(samples: ArrayLike, target: ArrayLike, mask: ArrayLike) -> dict[str, float]:
    """MAE and RMSE of the per-point sample median over the scored points: {"mae", "rmse"}."""
    x, y = _scored(samples, target, mask)
    error = np.median(x, axis=0) - y
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt(np.mean(error**2)))}


def _interval(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(x, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    return low, high


def interval_coverage(samples: ArrayLike, target: ArrayLike, mask: ArrayLike, level: float = 0.9) -> float:
    """Share of scored points with target inside the samples' central interval [Q_(1-level)/2, Q_(1+level)/2]."""
    x, y = _scored(samples, target, mask)
    low, high = _interval(x, level)
    return float(np.mean((low <= y) & (y <= high)))


def forecast_scores(samples: ArrayLike, target: ArrayLike, mask: ArrayLike, level: float = 0.9) -> dict[str, float]:
    """All scores at once: crps (CSDI's), crps_energy, mae, rmse, coverage and mean interval width at ``level``,
    and the number of scored points."""
    x, y = _scored(samples, target, mask)
    full = np.ones(y.shape, dtype=bool)
    low, high = _interval(x, level)
    return {
        "crps": crps_from_samples(x, y, full),
        "crps_energy": crps_energy(x, y, full),
        **median_errors(x, y, full),
        "coverage": float(np.mean((low <= y) & (y <= high))),
        "interval_width": float(np.mean(high - low)),
        "points": float(y.size),
    }
