"""Metric values against hand-computed cases, known identities and brute-force references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from facelens.data.noise import duplicate_label_noise
from facelens.evaluate.metrics import (
    age_metrics,
    binary_metrics,
    cs_curve,
    decade_label,
    expected_calibration_error,
    noise_limits,
    paired_difference,
    reliability_bins,
    roc_auc,
    roc_curve,
)


def _plain(obj) -> None:
    """Fail on numpy scalars/arrays or NaN anywhere in a result."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            _plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _plain(v)
    else:
        assert obj is None or type(obj) in (int, float, str, bool), type(obj)
        if isinstance(obj, float):
            assert math.isfinite(obj)


# ------------------------------------------------------------------------------------------- age


def test_age_metrics_hand_computed():
    m = age_metrics([10, 20, 30, 40], [12, 18, 30, 50])
    # errors (pred - true): +2, -2, 0, +10
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(3.5)
    assert m["rmse"] == pytest.approx(math.sqrt(108 / 4))
    assert m["r2"] == pytest.approx(1 - 108 / 500)
    assert m["cs5"] == pytest.approx(0.75)
    assert m["mean_signed_error"] == pytest.approx(2.5)
    assert list(m["by_decade"]) == ["10-19", "20-29", "30-39", "40-49"]
    assert m["by_decade"]["40-49"] == {"n": 1, "mae": pytest.approx(10.0), "mean_signed_error": pytest.approx(10.0)}
    assert m["by_decade"]["20-29"]["mean_signed_error"] == pytest.approx(-2.0)
    assert "coverage" not in m
    _plain(m)
    json.dumps(m, allow_nan=False)


def test_age_interval_coverage_and_width():
    m = age_metrics([10, 20, 30, 40], [12, 18, 30, 50], low=[9, 21, 25, 45], high=[15, 25, 35, 55])
    # inside: 10 in [9,15] yes; 20 in [21,25] no; 30 in [25,35] yes; 40 in [45,55] no
    assert m["coverage"] == pytest.approx(0.5)
    assert m["mean_interval_width"] == pytest.approx((6 + 4 + 10 + 10) / 4)
    assert m["by_decade"]["10-19"]["coverage"] == 1.0
    assert m["by_decade"]["20-29"]["coverage"] == 0.0


def test_age_groups_skip_missing_values():
    groups = {"gender": ["female", "male", None, "female"], "race": ["", "white", float("nan"), "white"]}
    m = age_metrics([10, 20, 30, 40], [12, 18, 30, 50], groups=groups)
    g = m["by_group"]["gender"]
    assert set(g) == {"female", "male"}
    assert g["female"] == {"n": 2, "mae": pytest.approx(6.0), "mean_signed_error": pytest.approx(6.0)}
    assert g["male"]["mean_signed_error"] == pytest.approx(-2.0)
    assert set(m["by_group"]["race"]) == {"white"}
    assert m["by_group"]["race"]["white"]["n"] == 2
    _plain(m)


def test_age_identities():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 90, 500)
    perfect = age_metrics(y, y)
    assert perfect["mae"] == 0.0 and perfect["rmse"] == 0.0 and perfect["cs5"] == 1.0
    assert perfect["r2"] == pytest.approx(1.0)
    assert age_metrics(y, np.full_like(y, y.mean()))["r2"] == pytest.approx(0.0, abs=1e-12)
    assert age_metrics(y, y + 3)["mean_signed_error"] == pytest.approx(3.0)
    assert age_metrics([30, 30, 30], [29, 30, 33])["r2"] is None  # constant target: R² undefined


def test_age_input_validation():
    with pytest.raises(ValueError):
        age_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        age_metrics([], [])
    with pytest.raises(ValueError):
        age_metrics([1, 2], [1, float("nan")])
    with pytest.raises(ValueError):
        age_metrics([1, 2], [1, 2], low=[0, 1])
    with pytest.raises(ValueError):
        age_metrics([1, 2], [1, 2], groups={"gender": ["f"]})


def test_cs_curve_and_decades():
    assert cs_curve([0, 1, 5, 6, 20], ks=[0, 1, 5, 15]) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    curve = cs_curve(np.random.default_rng(1).exponential(4, 300))
    assert len(curve) == 16 and all(a <= b for a, b in zip(curve, curve[1:], strict=False))
    assert [decade_label(a) for a in (0, 9.99, 10, 57, 116)] == ["0-9", "0-9", "10-19", "50-59", "110-119"]


# ---------------------------------------------------------------------------------------- binary


def test_binary_hand_computed():
    y = [0, 0, 1, 1]
    p = [0.1, 0.6, 0.4, 0.9]
    m = binary_metrics(y, p)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 (pos, neg) pairs are ordered correctly
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4)
    _plain(m)


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_data():
    y = [0] * 8 + [1] * 2
    p = [0.1] * 8 + [0.9, 0.2]  # all negatives right, one of two positives right
    m = binary_metrics(y, p)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_auc_identities_and_ties():
    y = np.r_[np.zeros(50), np.ones(50)]
    s = np.r_[np.linspace(0, 0.4, 50), np.linspace(0.6, 1, 50)]
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, 1 - s) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    rng = np.random.default_rng(2)
    yr = rng.integers(0, 2, 4000)
    assert roc_auc(yr, rng.uniform(size=4000)) == pytest.approx(0.5, abs=0.04)


def test_auc_matches_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.uniform(size=300) * 0.5 + 0.3 * y, 1)  # coarse rounding creates many ties
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    brute = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    assert roc_auc(y, s) == pytest.approx(brute)
    fpr, tpr = roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute)


def test_one_class_is_none_safe():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m["roc_auc"] is None
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError):
        roc_curve([1, 1], [0.2, 0.3])


def test_ece_hand_computed():
    # confidences of the predicted class: 0.9 (right), 0.9 (wrong), 0.8 (right), 0.6 (right), three distinct bins
    y, p = [1, 0, 0, 1], [0.9, 0.9, 0.2, 0.6]
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.8) + 0.25 * abs(1 - 0.6)
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert binary_metrics(y, p)["ece"] == pytest.approx(expected)
    bins = reliability_bins(y, p)
    assert sum(bins["count"]) == 4 and len(bins["count"]) == 15
    assert sorted(c for c in bins["count"] if c) == [1, 1, 2]


def test_ece_calibrated_small_overconfident_large():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 20000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)
    calibrated = expected_calibration_error(y, 1 / (1 + np.exp(-z)))
    overconfident = expected_calibration_error(y, 1 / (1 + np.exp(-5 * z)))
    assert calibrated < 0.02
    assert overconfident > 0.08
    bins = reliability_bins(y, 1 / (1 + np.exp(-z)))
    for lo, hi, c, n in zip(bins["lower"], bins["upper"], bins["confidence"], bins["count"], strict=True):
        assert (c is None) == (n == 0)
        if n:
            assert lo <= c <= hi


def test_binary_group_accuracy():
    y = [1, 1, 0, 0, 1, 0]
    p = [0.9, 0.4, 0.2, 0.7, 0.8, 0.1]  # correct: T F T F T T
    groups = {"colour": ["grayscale", "grayscale", "colour", "colour", "colour", None],
              "size": ["<48px", "48-63px", ">=64px", "<48px", "48-63px", ">=64px"]}
    g = binary_metrics(y, p, groups=groups)["by_group"]
    assert g["colour"]["grayscale"]["accuracy"] == 0.5 and g["colour"]["grayscale"]["n"] == 2
    assert g["colour"]["colour"]["accuracy"] == pytest.approx(2 / 3)
    assert "None" not in g["colour"]
    assert g["size"][">=64px"]["accuracy"] == 1.0
    assert g["size"]["<48px"]["accuracy"] == 0.5
    assert list(g["size"]) == ["<48px", "48-63px", ">=64px"]  # natural order, not string order


def test_binary_input_validation():
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError):
        binary_metrics([0, 1, 1], [0.1, 0.2])


def test_duplicate_label_noise_pools_within_group_spread():
    # pairs (20, 24) and (30, 30): ss = 8 + 0, dof = 2 -> std 2; singletons are ignored
    est = duplicate_label_noise([[20, 24], [30, 30], [41]])
    assert est["groups"] == 2 and est["conflicting"] == 1 and est["dof"] == 2
    assert est["noise_std"] == pytest.approx(2.0)
    assert est["low"] < 2.0 < est["high"]
    _plain(est)
    assert duplicate_label_noise([[5], []])["noise_std"] is None


def test_duplicate_label_noise_recovers_simulated_noise():
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 50, 2000)
    groups = [t + rng.normal(0, 5.0, 2) for t in truth]
    est = duplicate_label_noise(groups, confidence=0.99)
    assert est["low"] < 5.0 < est["high"]
    assert est["noise_std"] == pytest.approx(5.0, rel=0.05)


def test_noise_limits():
    lim = noise_limits(6.0, 10.0)
    assert lim == {"rmse_floor": 6.0, "r2_ceiling": pytest.approx(0.64)}
    with pytest.raises(ValueError):
        noise_limits(1.0, 0.0)


def test_paired_difference_is_exact_for_a_constant_gap_and_zero_for_equal_losses():
    a = np.array([1.0, 5.0, 2.0, 8.0])
    same = paired_difference(a, a)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    shifted = paired_difference(a, a + 0.5)  # per-image differences all 0.5: no sampling doubt at all
    assert shifted["difference"] == pytest.approx(0.5)
    assert shifted["low"] == pytest.approx(0.5) and shifted["high"] == pytest.approx(0.5)


def test_paired_difference_interval_separates_a_real_gap_from_noise():
    rng = np.random.default_rng(1)
    hard = rng.exponential(5.0, 2000)  # image difficulty, shared by both models
    real = paired_difference(hard, hard + 0.2 + rng.normal(0, 1.0, 2000))
    assert 0.0 < real["low"] < 0.2 < real["high"]
    noise = paired_difference(hard, hard + rng.normal(0, 1.0, 2000))
    assert noise["low"] < 0.0 < noise["high"]
    unpaired = paired_difference(hard, rng.permutation(hard) + 0.2)  # pairing lost: far wider interval
    assert unpaired["high"] - unpaired["low"] > 3 * (real["high"] - real["low"])


def test_paired_difference_input_validation():
    with pytest.raises(ValueError, match="expected 3"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [2.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])


def test_paired_comparisons_use_only_images_both_models_scored_and_split_by_source():
    from facelens.evaluate.pipeline import paired_comparisons

    sources = ["utk", "utk", "utk", "f2050", "f2050", "f2050"]
    ref = (np.array([0, 1, 2, 3, 4]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    other = (np.array([1, 2, 3, 4, 5]), np.array([3.0, 4.0, 6.0, 7.0, 99.0]))  # image 0 had no crop here
    out = paired_comparisons({"a": ref, "b": other}, sources)["b"]
    assert out["against"] == "a" and out["all"]["n"] == 4  # images 1-4
    assert out["all"]["difference"] == pytest.approx(1.5)  # (1 + 1 + 2 + 2) / 4: image 5 (loss 99) not compared
    assert out["by_source"]["utk"]["difference"] == pytest.approx(1.0)
    assert out["by_source"]["f2050"]["difference"] == pytest.approx(2.0)
    disjoint = (np.array([5]), np.array([1.0]))
    assert "c" not in paired_comparisons({"a": ref, "b": other, "c": disjoint}, sources)  # skipped, no crash


def test_ece_noise_floor_tells_sampling_noise_from_miscalibration():
    """A calibrated model on 100 images shows a sizeable ECE from noise alone (the floor) and is not flagged;
    the same probabilities with labels that contradict them are flagged (p-value 0)."""
    from facelens.evaluate.metrics import ece_noise_floor

    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 100)
    y = rng.random(100) < p
    calibrated = ece_noise_floor(y, p)
    assert 0.04 < calibrated["floor"] < 0.15  # noise alone, far above a 0.03 target
    assert calibrated["p_value"] > 0.05
    contradicted = ece_noise_floor(p < 0.5, p)
    assert contradicted["p_value"] == 0.0
    big = rng.uniform(0.05, 0.95, 20_000)
    assert ece_noise_floor(rng.random(20_000) < big, big)["floor"] < 0.01  # the floor shrinks with n


def test_ece_noise_floor_is_reported_per_group():
    from facelens.evaluate.metrics import binary_metrics

    rng = np.random.default_rng(4)
    p = rng.uniform(0.05, 0.95, 300)
    m = binary_metrics(rng.random(300) < p, p, groups={"band": ["a"] * 100 + ["b"] * 200})
    assert m["ece_floor"] < m["by_group"]["band"]["a"]["ece_floor"]  # fewer images, higher floor
    assert set(m["by_group"]["band"]["b"]) >= {"ece", "ece_floor", "ece_p_value"}


def test_binary_groups_say_which_way_they_are_off() -> None:
    """Mean confidence against accuracy tells over- from under-confidence; mean P against the share tells a lean."""
    y = np.array([1, 0] * 50)
    over = np.where(y == 1, 0.99, 0.01)
    over[:20] = 1 - over[:20]  # 80% right at 99% confidence
    lean = np.full(100, 0.3)  # half are positive, every answer says 30%
    m = binary_metrics(y, over, groups={"g": ["a"] * 100})
    a = m["by_group"]["g"]["a"]
    assert a["accuracy"] == pytest.approx(0.8) and a["mean_confidence"] == pytest.approx(0.99)
    m = binary_metrics(y, lean)
    assert m["mean_p_positive"] == pytest.approx(0.3) and m["positive_share"] == pytest.approx(0.5)
