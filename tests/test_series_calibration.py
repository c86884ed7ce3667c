"""Calibrated bands of series models (issue 17): the split-conformal spread scale on a known Gaussian case, the
held-out masks of each task, and scaling that leaves observed points bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusionlab.evaluation.series import interval_coverage
from diffusionlab.tasks import Calibration, SeriesSamples, calibration_cases, conformal_scale, scale_about_median


def test_conformal_scale_widens_too_narrow_gaussian_draws_to_nominal_coverage() -> None:
    """Truth N(1, 1), draws N(1, 0.5^2): their 90% interval covers 59%; the fitted scale is about 2 (the exact
    answer: 2) and scaled draws of 4000 new points cover 90% +- 2 points; on the calibration points themselves the
    conformal rank guarantees at least the level."""
    rng = np.random.default_rng(0)
    n, m, s = 2000, 4000, 200
    truth, fresh = rng.normal(1, 1, n), rng.normal(1, 1, m)
    draws, new = rng.normal(1, 0.5, (s, n)), torch.from_numpy(rng.normal(1, 0.5, (s, m)))
    assert abs(interval_coverage(new.numpy(), fresh, np.ones(m, bool), 0.9) - 0.59) < 0.03
    scale = conformal_scale(draws, truth, 0.9)
    assert abs(scale - 2.0) < 0.12, scale
    widened = scale_about_median(new, scale).numpy()
    assert abs(interval_coverage(widened, fresh, np.ones(m, bool), 0.9) - 0.9) < 0.02
    itself = scale_about_median(torch.from_numpy(draws), scale).numpy()
    assert interval_coverage(itself, truth, np.ones(n, bool), 0.9) >= 0.9
    assert conformal_scale(rng.normal(1, 2.0, (s, n)), truth, 0.9) < 0.6  # too wide: narrowed (exact 0.5)
    with pytest.raises(ValueError, match="level=1.5 must lie in"):
        conformal_scale(draws, truth, 1.5)


def test_scaling_keeps_observed_points_bit_for_bit_and_round_trips_through_json(tmp_path) -> None:
    """Points whose draws all equal the observation come back exactly; elsewhere every quantile's distance to the
    median is multiplied by the scale; a saved calibration loads equal, a file that is not one is one clear error."""
    drawn = torch.randn(9, 2, 12, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.1
    observed = torch.rand(2, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    given = torch.randn(2, 12, generator=torch.Generator().manual_seed(2))
    drawn = torch.where(observed, given, drawn)
    fitted = Calibration(level=0.9, scale=1.7, points=40, task="missing", size=0.1)
    out = fitted.apply(SeriesSamples(drawn, observed))
    assert torch.equal(out.samples[:, observed], given[observed].expand(9, -1))
    before = SeriesSamples(drawn, observed)
    widened = out.quantile(0.95) - out.median
    assert float((widened - 1.7 * (before.quantile(0.95) - before.median)).abs().max()) < 1e-6
    fitted.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == fitted
    (tmp_path / "bad.json").write_text('{"scale": 2}')
    with pytest.raises(ValueError, match="bad.json is not a calibration file"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "text.json").write_text('{"level": 0.9, "scale": "wide", "points": 4, "task": "block", "size": 3}')
    with pytest.raises(ValueError, match="text.json is not a calibration file"):
        Calibration.load(tmp_path / "text.json")


def test_calibration_cases_hide_points_the_way_each_task_does() -> None:
    """missing: the share of the held-out steps (from ``start``) at random, the rest observed; block: one run of
    ``size`` steps inside the held-out part, the model's window around it; horizon: the last ``size`` steps of the
    windows ending ``size`` after ``draws`` origins spread evenly over the held-out part."""
    random = list(calibration_cases(100, 16, "missing", 0.25, start=60, draws=3))
    assert len(random) == 3
    for part, mask in random:
        assert part == slice(0, 100) and mask[0, :60].all() and (~mask[0, 60:]).sum() == 10
    for part, mask in calibration_cases(100, 16, "block", 4, start=60, draws=5):
        hidden = np.flatnonzero(~mask[0]) + part.start
        assert mask.shape == (1, 16) and len(hidden) == 4 and np.all(np.diff(hidden) == 1) and hidden[0] >= 60
    ahead = list(calibration_cases(100, 16, "horizon", 4, start=60, draws=5))
    assert [p.stop for p, _ in ahead] == [64, 73, 82, 91, 100]
    assert all(m.shape == (1, 16) and (~m[0, -4:]).all() and m[0, :-4].all() for _, m in ahead)
    with pytest.raises(ValueError, match="block=16 must be a whole number of steps from 1 to 15"):
        list(calibration_cases(100, 16, "block", 16))
    with pytest.raises(ValueError, match="task='gaps' is not one of missing, block, horizon"):
        list(calibration_cases(100, 16, "gaps", 0.1))
