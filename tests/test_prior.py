"""The training sample's age prior and the logit adjustment that removes it (facelens.train.prior)."""

from __future__ import annotations

import numpy as np
import pytest

from facelens.agebins import NUM_AGE_BINS
from facelens.infer.postprocess import age_from_bins, softmax
from facelens.train.prior import age_prior, prior_adjustment


def test_prior_is_a_distribution_centred_where_the_ages_are() -> None:
    p = age_prior(np.array([30.0] * 50 + [60.0] * 10))
    assert p.shape == (NUM_AGE_BINS,) and np.all(p > 0) and p.sum() == pytest.approx(1.0)
    assert int(np.argmax(p)) == 30
    assert p[60] > p[45] and p[30] > 3 * p[60]


def test_weights_move_the_prior_as_the_sampler_would() -> None:
    ages = np.array([30.0] * 50 + [60.0] * 10)
    lifted = age_prior(ages, np.r_[np.ones(50), np.full(10, 5.0)])  # the old drawn 5x as often: as many as the young
    assert lifted[60] == pytest.approx(lifted[30], rel=1e-6)


def test_full_adjustment_turns_the_prior_itself_into_a_flat_answer() -> None:
    p = age_prior(np.random.default_rng(0).normal(30, 8, 500).clip(0, 100))
    flat = softmax((np.log(p) + prior_adjustment(p, 1.0))[None])[0]
    assert np.allclose(flat, 1 / NUM_AGE_BINS)
    assert np.allclose(prior_adjustment(p, 0.0), 0.0)
    assert prior_adjustment(p, 0.5).mean() == pytest.approx(0.0, abs=1e-12)


def test_adjustment_moves_answers_away_from_the_crowded_ages() -> None:
    p = age_prior(np.random.default_rng(1).normal(30, 6, 1000).clip(0, 100))
    bins = np.arange(NUM_AGE_BINS)
    old = -0.5 * ((bins - 42.0) / 6.0) ** 2 + np.log(p)  # a face that looks 42, answered under the prior
    before = age_from_bins(old[None])[0][0]
    after = age_from_bins((old + prior_adjustment(p, 1.0))[None])[0][0]
    assert before < 39 and after == pytest.approx(42.0, abs=0.1)


@pytest.mark.parametrize("bad", [np.ones(10) / 10, np.r_[np.zeros(1), np.ones(NUM_AGE_BINS - 1)]])
def test_adjustment_refuses_what_is_not_a_prior(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="prior must be"):
        prior_adjustment(bad, 0.5)


def test_prior_refuses_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="weights for"):
        age_prior(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="at least one"):
        age_prior(np.array([]))
