"""Per-image sampling weights that keep a photo's *source* from telling its label.

When one source holds only adults (the 20-50 set) and another mostly tight chips of every
age (UTKFace), a network can learn "this framing, this colour, this grain -> that age range".
Weighting each image by ``1 / count(source, age bin)`` and giving every source present in an
age bin an equal share of that bin makes ``P(source | age)`` flat wherever sources overlap, so
style carries no age information there; the bins keep their pooled share, so the overall age
distribution stays the data's. Pure functions (no I/O).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def balanced_weights(sources: Sequence[str], labels: np.ndarray, bin_width: float = 5.0, cap: float = 5.0,
                     flatten: float = 0.0) -> np.ndarray:
    """Sampling weights (mean 1) that equalise the sources within each label bin.

    ``labels`` are ages (binned by ``bin_width`` years) or classes (``bin_width`` 0: one bin per
    value). ``cap`` bounds any image's weight at ``cap`` times the mean, so a handful of images of
    a rare (source, bin) pair is not repeated until the network memorises them. ``flatten`` sets a
    bin's share of the samples to ``count ** (1 - flatten)``: 0 keeps the data's label distribution;
    0.5 (inverse square root, as in Yang et al., "Delving into Deep Imbalanced Regression", 2021)
    lifts rare ages, whose answers are otherwise pulled towards the crowded middle, without the
    heavy repetition of 1 (every bin equal).
    """
    if not 0.0 <= flatten <= 1.0:
        raise ValueError(f"flatten must be in [0, 1], got {flatten}")
    src = np.asarray(sources)
    y = np.asarray(labels, dtype=np.float64)
    if len(src) != len(y):
        raise ValueError(f"{len(src)} sources for {len(y)} labels")
    if len(y) == 0:
        return np.zeros(0)
    bins = np.floor(y / bin_width).astype(np.int64) if bin_width > 0 else y.astype(np.int64)
    w = np.zeros(len(y))
    for b in np.unique(bins):
        in_bin = bins == b
        present = np.unique(src[in_bin])
        share = in_bin.sum() ** (1.0 - flatten) / len(present)  # the bin's mass, split evenly between sources
        for s in present:
            m = in_bin & (src == s)
            w[m] = share / m.sum()
    w /= w.mean()
    if cap:
        for _ in range(200):  # clipping lowers the mean, which lifts the clipped ones again: settle it
            w = np.minimum(w, cap)
            w /= w.mean()
            if w.max() <= cap * (1 + 1e-6):
                break
    return w


def epoch_order(n: int, steps: int, batch_size: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Image indices of one epoch, a pure function of (seed, epoch) so a resumed run replays it.

    Without weights, a permutation; with weights, ``steps * batch_size`` draws with replacement.
    """
    rng = np.random.default_rng([seed, epoch])
    if weights is None:
        return rng.permutation(n)
    if len(weights) != n:
        raise ValueError(f"{len(weights)} sampling weights for {n} images")
    return rng.choice(n, size=steps * batch_size, replace=True, p=weights / weights.sum())
