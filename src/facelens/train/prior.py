"""The training sample's age distribution, and the logit adjustment that takes it out of the answers.

An age-bins head trained with cross-entropy learns ``p(age | face)`` under the ages its sampler drew,
crowded at 20-39; where the face is ambiguous, that prior pulls the answer towards the crowd (teenagers
answered too old, the over-40s too young). Subtracting ``tau * log(prior)`` from the logits removes a
share ``tau`` of that pull (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021). The
adjustment is a fixed vector, so it could be added to the head's bias at no cost per face; measured in
``benchmarks/age_prior_adjustment.py`` and not shipped (it trades error for band bias: docs/experiments.md).
Pure functions (no I/O).
"""

from __future__ import annotations

import numpy as np

from facelens.agebins import AGE_MIN, NUM_AGE_BINS


def age_prior(ages: np.ndarray, weights: np.ndarray | None = None, sigma: float = 1.5,
              pseudo_count: float = 1.0) -> np.ndarray:
    """Distribution over the age bins of the samples a run drew: each age spread as its soft label
    (a Gaussian of ``sigma`` years, as the loss saw it), weighted by the sampler's weights, plus
    ``pseudo_count`` per bin (in units of one average sample) so no bin has probability 0."""
    a = np.asarray(ages, dtype=np.float64).reshape(-1)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(a):
        raise ValueError(f"{len(w)} weights for {len(a)} ages")
    if len(a) == 0:
        raise ValueError("age_prior needs at least one age")
    if sigma <= 0 or pseudo_count < 0:
        raise ValueError(f"need sigma > 0 and pseudo_count >= 0, got {sigma}, {pseudo_count}")
    bins = np.arange(NUM_AGE_BINS, dtype=np.float64) + AGE_MIN
    soft = np.exp(-0.5 * ((bins[None, :] - a[:, None]) / sigma) ** 2)
    soft /= soft.sum(axis=1, keepdims=True)
    mass = (w / w.mean()) @ soft + pseudo_count
    return mass / mass.sum()


def prior_adjustment(prior: np.ndarray, tau: float) -> np.ndarray:
    """The vector to add to the age logits: ``-tau * log(prior)``, centred (a constant shift of all
    logits changes nothing, and a zero-mean vector keeps the head's bias near its trained scale)."""
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (NUM_AGE_BINS,) or np.any(p <= 0):
        raise ValueError(f"prior must be {NUM_AGE_BINS} positive probabilities, got shape {p.shape}")
    v = -tau * np.log(p)
    return v - v.mean()
