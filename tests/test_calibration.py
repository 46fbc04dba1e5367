"""Temperature scaling and interval scaling on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from facelens.evaluate.calibration import (
    apply_interval_scale,
    apply_temperature,
    binary_nll,
    fit_interval_scale,
    fit_temperature,
    interval_coverage,
)


def _calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(float)
    return z, y


def test_temperature_recovers_two():
    z, y = _calibrated_logits(20000, 0)
    t = fit_temperature(2 * z, y)  # an over-confident model: logits doubled
    assert t == pytest.approx(2.0, rel=0.08)
    assert binary_nll(2 * z, y, t) < binary_nll(2 * z, y, 1.0)


def test_temperature_near_one_when_already_calibrated_and_below_one_when_underconfident():
    z, y = _calibrated_logits(20000, 1)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.08)
    assert fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.08)


def test_temperature_respects_bounds_on_separable_data():
    z = np.r_[-np.linspace(1, 3, 50), np.linspace(1, 3, 50)]
    y = np.r_[np.zeros(50), np.ones(50)]
    t = fit_temperature(z, y)  # NLL keeps falling as T -> 0: the search must stop at the bound
    assert 0.05 <= t < 0.06


def test_apply_temperature_keeps_ranking_and_matches_sigmoid():
    z = np.array([-3.0, -0.5, 0.0, 0.2, 4.0])
    p = apply_temperature(z, 2.0)
    assert np.allclose(p, 1 / (1 + np.exp(-z / 2)))
    assert np.all(np.diff(p) > 0)
    assert p[2] == 0.5
    with pytest.raises(ValueError):
        apply_temperature(z, 0.0)


def test_fit_temperature_validates_labels():
    with pytest.raises(ValueError):
        fit_temperature([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        fit_temperature([0.1, 0.2], [0])


def _age_data(n: int, seed: int, sd: float = 5.0, half: float = 3.0):
    rng = np.random.default_rng(seed)
    value = rng.uniform(5, 80, n)
    y = value + rng.normal(0, sd, n)
    return y, value, value - half, value + half


def test_interval_scale_reaches_target_on_fresh_data():
    y, v, lo, hi = _age_data(4000, 0)
    assert interval_coverage(y, lo, hi) < 0.5  # the raw interval is far too narrow
    s = fit_interval_scale(y, v, lo, hi, target=0.8)
    # normal errors (sd 5) need a half-width of 1.2816 * 5 years; the raw half-width is 3
    assert s == pytest.approx(1.2816 * 5 / 3, rel=0.06)
    assert interval_coverage(y, *apply_interval_scale(v, lo, hi, s)) == pytest.approx(0.8, abs=0.002)
    y2, v2, lo2, hi2 = _age_data(4000, 1)  # held-out data from the same distribution
    assert interval_coverage(y2, *apply_interval_scale(v2, lo2, hi2, s)) == pytest.approx(0.8, abs=0.03)


def test_interval_scale_narrows_too_wide_intervals():
    y, v, lo, hi = _age_data(3000, 2, sd=2.0, half=10.0)
    s = fit_interval_scale(y, v, lo, hi, target=0.8)
    assert s < 1.0
    assert interval_coverage(y, *apply_interval_scale(v, lo, hi, s)) == pytest.approx(0.8, abs=0.005)


def test_interval_scale_other_target():
    y, v, lo, hi = _age_data(3000, 3)
    s50 = fit_interval_scale(y, v, lo, hi, target=0.5)
    s90 = fit_interval_scale(y, v, lo, hi, target=0.9)
    assert s50 < s90
    assert interval_coverage(y, *apply_interval_scale(v, lo, hi, s90)) == pytest.approx(0.9, abs=0.005)
    with pytest.raises(ValueError):
        fit_interval_scale(y, v, lo, hi, target=1.5)


def test_apply_interval_scale_keeps_skew():
    low, high = apply_interval_scale(np.array([30.0]), np.array([28.0]), np.array([36.0]), 1.5)
    assert low[0] == pytest.approx(27.0) and high[0] == pytest.approx(39.0)
    low, high = apply_interval_scale([30.0], [28.0], [36.0], 0.0)
    assert low[0] == high[0] == 30.0
