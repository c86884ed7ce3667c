"""Scores of sampled series (evaluation/series.py) and the series bench's baselines (bench/series_baselines.py),
against closed forms, hand-computed cases and an independent transcription of CSDI's formula."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusionlab.evaluation.series import (
    CSDI_QUANTILES,
    crps_energy,
    crps_from_samples,
    forecast_scores,
    interval_coverage,
    median_errors,
)

BENCH = Path(__file__).parents[1] / "bench" / "series_baselines.py"


def _baselines():
    spec = importlib.util.spec_from_file_location("series_baselines", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gaussian_crps(y: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2) at y (Gneiting et al. 2005, Mon. Wea. Rev., eq. 5)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def _csdi_reference(samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """CSDI's normalised quantile CRPS written out independently in torch: levels 0.05..0.95, torch.quantile over
    the sample axis, 2 * pinball loss summed over masked points / sum |target|, averaged over the levels."""
    weight = mask.double()
    denominator = (target * weight).abs().sum()
    total = 0.0
    for level in np.arange(0.05, 1.0, 0.05):
        q = torch.quantile(samples, float(level), dim=0)
        indicator = (target <= q).double()
        total += float(2 * ((q - target) * weight * (indicator - level)).abs().sum() / denominator)
    return total / 19


def test_crps_of_samples_equal_to_the_target_is_zero():
    target = np.array([[1.0, -2.0, 3.5], [0.5, 4.0, -1.0]])
    samples = np.repeat(target[None], 7, axis=0)
    mask = np.ones_like(target, dtype=bool)
    assert crps_from_samples(samples, target, mask) == 0.0
    assert crps_energy(samples, target, mask) == 0.0
    assert forecast_scores(samples, target, mask)["mae"] == 0.0


def test_quantile_crps_matches_csdi_formula_and_a_point_forecast_gives_mae_over_normaliser():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(50, 4, 30, generator=generator, dtype=torch.float64) * 2 + 1
    target = torch.randn(4, 30, generator=generator, dtype=torch.float64) + 1
    mask = torch.rand(4, 30, generator=generator) < 0.3
    ours = crps_from_samples(samples, target, mask)
    assert ours == pytest.approx(_csdi_reference(samples, target, mask), rel=1e-12)
    assert crps_from_samples(samples.numpy(), target.numpy(), mask.numpy()) == ours
    assert len(CSDI_QUANTILES) == 19 and CSDI_QUANTILES[0] == 0.05 and CSDI_QUANTILES[-1] == 0.95
    # one sample: every quantile is the sample, the mean over levels of 2 rho_q(e) is |e|: CRPS = sum|e| / sum|y|
    point, y = np.array([2.0, 0.0, 5.0]), np.array([1.0, 3.0, 4.0])
    keep = np.ones(3, dtype=bool)
    assert crps_from_samples(point[None], y, keep) == pytest.approx(5.0 / 8.0, rel=1e-12)
    assert crps_energy(point[None], y, keep) == pytest.approx(5.0 / 8.0, rel=1e-12)


def test_sample_crps_approaches_the_gaussian_closed_form():
    mu, sigma = 3.0, 2.0
    y = mu + sigma * np.linspace(-2.5, 2.5, 11)
    samples = mu + sigma * np.random.default_rng(0).standard_normal((4000, y.size))
    mask = np.ones(y.size, dtype=bool)
    exact = _gaussian_crps(y, mu, sigma)
    energy = crps_energy(samples, y, mask, normalise=False)
    assert energy == pytest.approx(exact.mean(), rel=0.02)  # measured: within 0.6% over seeds 0-4
    assert crps_energy(samples, y, mask) == pytest.approx(energy * y.size / np.abs(y).sum(), rel=1e-12)
    # the 19-level quantile form is the mean over the central levels, not the integral over (0, 1): with the
    # true normal quantiles it exceeds the closed form by 3.9-5.3% at these targets (4.8% in expectation when
    # y ~ N(mu, sigma)); the samples' quantile form is within 0.6% of that (seeds 0-4), 4.5-5.5% above the closed form
    levels = CSDI_QUANTILES[:, None]
    error = y - (mu + sigma * norm.ppf(levels))
    with_true_quantiles = np.mean(2 * np.maximum(levels * error, (levels - 1) * error), axis=0)
    quantile_form = crps_from_samples(samples, y, mask) * np.abs(y).sum() / y.size
    assert quantile_form == pytest.approx(with_true_quantiles.mean(), rel=0.02)
    assert 0.03 < quantile_form / exact.mean() - 1 < 0.07


def test_coverage_of_a_calibrated_normal_is_nominal():
    rng = np.random.default_rng(1)
    target = rng.standard_normal(2000)
    samples = rng.standard_normal((1000, 2000))
    mask = np.ones(2000, dtype=bool)
    assert interval_coverage(samples, target, mask, level=0.9) == pytest.approx(0.9, abs=0.025)
    assert interval_coverage(samples, target, mask, level=0.5) == pytest.approx(0.5, abs=0.035)
    assert interval_coverage(samples * 0.5, target, mask, level=0.9) < 0.7  # over-confident samples under-cover


def test_median_errors_and_scores_on_a_hand_made_case():
    samples = np.array([[1.0, 4.0, 7.0], [2.0, 4.0, 9.0], [10.0, 4.0, 8.0]])  # medians 2, 4, 8
    target = np.array([0.0, 5.0, np.nan])  # NaN outside the mask is never read
    mask = np.array([True, True, False])
    errors = median_errors(samples, target, mask)
    assert errors == {"mae": 1.5, "rmse": math.sqrt(2.5)}
    assert median_errors(np.array([[1.0], [3.0]]), np.array([0.0]), np.array([True]))["mae"] == 2.0  # midpoint median
    scores = forecast_scores(torch.tensor(samples), torch.tensor(target), torch.tensor(mask), level=0.5)
    assert scores["points"] == 2.0 and scores["mae"] == 1.5
    assert scores["coverage"] == 0.0  # [1.5, 6] misses 0; 4, 4, 4 misses 5
    assert scores["interval_width"] == pytest.approx((6.0 - 1.5 + 0.0) / 2)
    assert scores["crps"] == pytest.approx(crps_from_samples(samples, target, mask))


def test_bad_inputs_raise_clear_errors():
    samples, target, mask = np.zeros((5, 3, 4)), np.ones((3, 4)), np.ones((3, 4), dtype=bool)
    with pytest.raises(ValueError, match="samples .* must be"):
        crps_from_samples(np.zeros((5, 4, 3)), target, mask)
    with pytest.raises(ValueError, match="mask .* must have"):
        median_errors(samples, target, mask[:, :2])
    with pytest.raises(ValueError, match="selects no points"):
        interval_coverage(samples, target, np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="is 0"):
        crps_from_samples(samples, np.zeros((3, 4)), mask)
    with pytest.raises(ValueError, match="level"):
        interval_coverage(samples, target, mask, level=1.0)
    with pytest.raises(ValueError, match="boolean"):
        crps_energy(samples, target, np.full((3, 4), 0.5))


def test_linear_interpolation_recovers_a_linear_series():
    baselines = _baselines()
    steps = np.arange(40.0)
    values = np.stack([2.0 * steps - 3.0, -0.5 * steps + 7.0])
    mask = np.ones_like(values, dtype=bool)
    mask[0, 5:17] = mask[1, [10, 11, 30]] = False
    mask[:, [0, 39]] = False  # the ends: nearest observed value
    filled = baselines.linear_interpolation(np.where(mask, values, np.nan), mask)
    np.testing.assert_allclose(filled[:, 1:39], values[:, 1:39], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(filled[:, [0, 39]], values[:, [1, 38]])
    with pytest.raises(ValueError, match="no observed value"):
        baselines.linear_interpolation(values, np.zeros_like(mask))


def test_seasonal_naive_recovers_a_periodic_series():
    baselines = _baselines()
    season, horizon = 7, 17
    pattern = np.array([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], [0.0, -1.0, 2.0, 6.0, 5.0, 3.0, 5.0]])
    series = np.tile(pattern, 9)  # 63 steps
    samples = baselines.seasonal_naive_forecast(series[:, :40], horizon, season, num_samples=20)
    assert samples.shape == (20, 2, horizon)
    np.testing.assert_array_equal(samples, np.broadcast_to(series[:, 40 : 40 + horizon], samples.shape))
    # noise in the seasonal differences widens the band by sqrt(k + 1) at the k-th season ahead
    noisy = series[:, :40] + np.random.default_rng(0).normal(0, 0.3, (2, 40))
    spread = np.ptp(baselines.seasonal_naive_forecast(noisy, 15, season), axis=0)
    np.testing.assert_allclose(spread[:, 14] / spread[:, 0], math.sqrt(3), rtol=1e-12)


def _sunspots() -> np.ndarray:
    from statsmodels.datasets import sunspots

    return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)[None]


def test_arima_and_ets_intervals_contain_most_of_a_held_out_tail():
    baselines = _baselines()
    series, horizon = _sunspots(), 20  # yearly 1700-2008; hold out 1989-2008
    history, tail = series[:, :-horizon], series[:, -horizon:]
    mask = np.ones_like(tail, dtype=bool)
    for forecast in (baselines.arima_forecast(history, horizon), baselines.ets_forecast(history, horizon)):
        assert forecast.shape == (100, 1, horizon) and np.isfinite(forecast).all()
        scores = forecast_scores(forecast, tail, mask)
        assert scores["coverage"] >= 0.75  # measured: ARIMA 1.00, ETS 0.95
        assert scores["crps"] < 0.7  # measured: ARIMA 0.28, ETS 0.57; seasonal naive (m = 11) 0.40


def test_arima_imputation_keeps_observed_points_and_covers_a_block():
    baselines = _baselines()
    series = _sunspots()[:, -150:]
    mask = np.ones_like(series, dtype=bool)
    mask[:, 60:84] = False  # a 24-step block
    mask[:, np.random.default_rng(0).random(150) < 0.1] = False
    samples = baselines.arima_impute(np.where(mask, series, np.nan), mask)
    assert samples.shape == (100, 1, 150) and np.isfinite(samples).all()
    np.testing.assert_array_equal(samples[:, mask], np.broadcast_to(series[mask], (100, int(mask.sum()))))
    arima = forecast_scores(samples, series, ~mask)
    linear = forecast_scores(baselines.linear_interpolation(series, mask)[None], series, ~mask)
    assert arima["coverage"] >= 0.7
    assert arima["crps"] < linear["crps"]
