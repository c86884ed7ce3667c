"""Baselines for ``bench/series.py``: linear interpolation, seasonal naive, ARIMA and ETS (statsmodels).

Every function is pure and works per channel on numpy arrays ``(C, T)``, with ``mask`` (C, T) True where a value
was observed (unobserved values are never read, so they may be NaN). Imputers return ``(C, T)`` or samples
``(S, C, T)`` with the observed values kept exactly; forecasters take the history and return samples
``(S, C, horizon)`` of the ``horizon`` steps after it. Scores come from ``diffusionlab.evaluation.series``.

Choices:
- The probabilistic baselines return a *quantile sample set*: the S values of their predictive distribution at
  the levels (i + 1/2) / S, i = 0..S-1, per point (marginals, not paths), so CRPS and coverage carry no
  Monte-Carlo noise. CRPS and interval coverage only look at marginals, so paths are not needed.
- ``linear_interpolation`` is a point estimate; as a sample set of one (``values[None]``) its CRPS is its MAE
  divided by the CRPS normaliser. Past the last observed point it repeats that point (a naive forecast).
- ``seasonal_naive_forecast`` repeats the last season (Hyndman & Athanasopoulos, FPP3 sec. 5.2); its spread is the
  empirical distribution of the past seasonal differences y_t - y_{t-m}, widened by sqrt(k + 1) at the k-th
  season ahead (k = floor((h - 1) / m)), the seasonal naive variance of FPP3 sec. 5.5, table 5.2.
- ``arima_forecast`` / ``arima_impute``: statsmodels SARIMAX, the differencing d chosen by a KPSS test at 5% (as
  auto.arima, Hyndman & Khandakar 2008), then (p, q) among ``ARIMA_ORDERS`` by AIC, with a constant when d = 0; an
  optional fixed seasonal order. Gaps are NaN, which the Kalman filter skips; imputation uses the Kalman smoother
  (``information_set="smoothed"``), the mean and variance of each missing value given all observed ones.
- ``ets_forecast``: statsmodels ETSModel with additive errors (its forecast distribution is then normal, with an
  exact variance), no trend or a damped additive trend, additive seasonality when a season is given, chosen by
  AIC; ETSModel cannot skip gaps, so they are filled by linear interpolation first.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import ndtri
from statsmodels.tsa.exponential_smoothing.ets import ETSModel
from statsmodels.tsa.statespace.mlemodel import MLEResults
from statsmodels.tsa.statespace.sarimax import SARIMAX
from statsmodels.tsa.stattools import kpss

__all__ = [
    "ARIMA_ORDERS",
    "quantile_levels",
    "normal_quantile_samples",
    "linear_interpolation",
    "seasonal_naive_forecast",
    "arima_forecast",
    "arima_impute",
    "ets_forecast",
]

ARIMA_ORDERS: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (0, 1), (1, 1), (2, 1))
"""The (p, q) candidates of the ARIMA baselines."""


def quantile_levels(num_samples: int) -> np.ndarray:
    """The levels (i + 1/2) / S of a quantile sample set of S values."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return (np.arange(num_samples) + 0.5) / num_samples


def normal_quantile_samples(mean: np.ndarray, std: np.ndarray, num_samples: int) -> np.ndarray:
    """(S, *mean.shape): the normal N(mean, std^2)'s quantiles at ``quantile_levels(S)``."""
    z = ndtri(quantile_levels(num_samples)).reshape((-1,) + (1,) * np.ndim(mean))
    return np.asarray(mean)[None] + z * np.asarray(std)[None]


def _checked(values: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (C, T), got {values.shape}")
    mask = np.isfinite(values) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask {mask.shape} must have the values' shape {values.shape}")
    if not mask.any(axis=1).all():
        raise ValueError(f"channel {int(np.argmin(mask.any(axis=1)))} has no observed value")
    if not np.isfinite(values[mask]).all():
        raise ValueError("values are not finite at observed points")
    return values, mask


def linear_interpolation(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C, T): each channel's observed points joined by straight lines, the nearest observed value past either end."""
    values, mask = _checked(values, mask)
    steps = np.arange(values.shape[1])
    filled = np.stack([np.interp(steps, steps[m], row[m]) for row, m in zip(values, mask, strict=True)])
    filled[mask] = values[mask]
    return filled


def seasonal_naive_forecast(
    history: np.ndarray, horizon: int, season: int, mask: np.ndarray | None = None, num_samples: int = 100
) -> np.ndarray:
    """(S, C, horizon): the last season repeated, plus sqrt(k + 1) times the quantiles of the past seasonal
    differences (FPP3 sec. 5.2 and table 5.2); gaps in the history are linearly interpolated first."""
    filled = linear_interpolation(*_checked(history, mask))
    length = filled.shape[1]
    if horizon < 1 or season < 1 or length <= season:
        raise ValueError(f"need horizon >= 1, season >= 1 and more than one season of history (T={length})")
    ahead = np.arange(horizon)
    point = filled[:, length - season + ahead % season]  # (C, H): y_{T + h - m (k + 1)}
    differences = filled[:, season:] - filled[:, :-season]  # (C, T - m)
    spread = np.quantile(differences, quantile_levels(num_samples), axis=1)  # (S, C)
    return point[None] + spread[:, :, None] * np.sqrt(ahead // season + 1)[None, None]


def _differencing(series: np.ndarray) -> int:
    """1 if KPSS rejects level stationarity at 5%, else 0 (on the series with gaps interpolated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KPSS warns when its p-value lies outside its table
        return int(kpss(series, regression="c", nlags="auto")[1] < 0.05)


def _fit_arima(
    series: np.ndarray, filled: np.ndarray, orders: Sequence[tuple[int, int]], seasonal_order: tuple | None
) -> MLEResults:
    """The SARIMAX fit with the least AIC over ``orders`` at the KPSS-chosen d; NaN in ``series`` are gaps."""
    d = _differencing(filled)
    best = None
    for p, q in orders:
        model = SARIMAX(
            series,
            order=(p, d, q),
            seasonal_order=seasonal_order or (0, 0, 0, 0),
            trend="c" if d == 0 and not (seasonal_order and seasonal_order[1]) else "n",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence and start-parameter warnings of small models
            fit = model.fit(disp=False)
        if np.isfinite(fit.aic) and (best is None or fit.aic < best.aic):
            best = fit
    if best is None:
        raise ValueError("no ARIMA candidate could be fitted")
    return best


def arima_forecast(
    history: np.ndarray,
    horizon: int,
    mask: np.ndarray | None = None,
    orders: Sequence[tuple[int, int]] = ARIMA_ORDERS,
    seasonal_order: tuple[int, int, int, int] | None = None,
    num_samples: int = 100,
) -> np.ndarray:
    """(S, C, horizon): the normal predictive distribution of the AIC-best SARIMAX per channel, as quantile samples."""
    values, mask = _checked(history, mask)
    filled = linear_interpolation(values, mask)
    out = []
    for row, m, fill in zip(values, mask, filled, strict=True):
        fit = _fit_arima(np.where(m, row, np.nan), fill, orders, seasonal_order)
        forecast = fit.get_forecast(horizon)
        variance = np.asarray(forecast.var_pred_mean)
        if not np.all(variance >= 0):  # a numerically unstable fit: refused, so the caller may leave its order out
            raise ValueError(f"the ARIMA fit gave a negative forecast variance ({variance.min():.3g})")
        out.append(normal_quantile_samples(forecast.predicted_mean, np.sqrt(variance), num_samples))
    return np.stack(out, axis=1)


def arima_impute(
    values: np.ndarray,
    mask: np.ndarray,
    orders: Sequence[tuple[int, int]] = ARIMA_ORDERS,
    seasonal_order: tuple[int, int, int, int] | None = None,
    num_samples: int = 100,
) -> np.ndarray:
    """(S, C, T): each missing value's Kalman-smoothed normal distribution under the AIC-best SARIMAX, as quantile
    samples; observed values kept exactly."""
    values, mask = _checked(values, mask)
    filled = linear_interpolation(values, mask)
    out = []
    for row, m, fill in zip(values, mask, filled, strict=True):
        fit = _fit_arima(np.where(m, row, np.nan), fill, orders, seasonal_order)
        smoothed = fit.get_prediction(information_set="smoothed")
        std = np.sqrt(np.maximum(smoothed.var_pred_mean, 0.0))
        samples = normal_quantile_samples(smoothed.predicted_mean, std, num_samples)
        samples[:, m] = row[m]
        out.append(samples)
    return np.stack(out, axis=1)


def ets_forecast(
    history: np.ndarray,
    horizon: int,
    mask: np.ndarray | None = None,
    season: int | None = None,
    num_samples: int = 100,
) -> np.ndarray:
    """(S, C, horizon): the AIC-best additive-error ETS per channel (no trend or damped trend, additive season if
    ``season``), its exact normal forecast distribution as quantile samples; gaps linearly interpolated first."""
    filled = linear_interpolation(*_checked(history, mask))
    length = filled.shape[1]
    out = []
    for row in filled:
        best = None
        for trend in (None, "add"):
            model = ETSModel(
                pd.Series(row),  # statsmodels 0.14-0.15 get_prediction needs a pandas input
                error="add",
                trend=trend,
                damped_trend=trend is not None,
                seasonal="add" if season else None,
                seasonal_periods=season,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = model.fit(disp=False)
            if np.isfinite(fit.aic) and (best is None or fit.aic < best.aic):
                best = fit
        if best is None:
            raise ValueError("no ETS candidate could be fitted")
        prediction = best.get_prediction(start=length, end=length + horizon - 1)
        mean = np.asarray(prediction.predicted_mean, dtype=np.float64)
        std = np.sqrt(np.asarray(prediction.forecast_variance, dtype=np.float64))
        out.append(normal_quantile_samples(mean, std, num_samples))
    return np.stack(out, axis=1)
