"""Label noise estimated from byte-identical copies of a photo (data hygiene reports it).

Why in ``data/``: the hygiene check computes it while reading a dataset, and the data layer must
not import evaluation code to do so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import chi2


def duplicate_label_noise(groups: Iterable[Sequence[float]], confidence: float = 0.9) -> dict:
    """Label noise estimated from byte-identical copies of one photo that carry their own labels.

    One photo has one true age, so the spread of the labels its copies carry is pure label
    noise: the pooled within-group standard deviation estimates the noise std (unbiased for the
    variance, with ``sum(n_g - 1)`` degrees of freedom), and a chi-square interval gives its
    ``confidence`` range. Copies that agree count too (they are evidence of clean labels).
    Caveat for readers: copies are a selected sample (a photo that was filed twice may well be
    filed wrongly more often), so treat the estimate as indicative, not as the noise of every image.
    Returns ``groups``, ``conflicting``, ``dof``, ``noise_std``, ``low``, ``high`` (``None`` without copies).
    """
    ss, dof, n_groups, conflicting = 0.0, 0, 0, 0
    for g in groups:
        x = np.asarray(list(g), dtype=np.float64)
        if len(x) < 2:
            continue
        n_groups += 1
        conflicting += int(np.ptp(x) > 0)
        ss += float(np.sum((x - x.mean()) ** 2))
        dof += len(x) - 1
    out: dict[str, Any] = {"groups": n_groups, "conflicting": conflicting, "dof": dof,
                           "noise_std": None, "low": None, "high": None}
    if dof == 0:
        return out
    alpha = 1.0 - confidence
    out["noise_std"] = float(np.sqrt(ss / dof))
    out["low"] = float(np.sqrt(ss / chi2.ppf(1 - alpha / 2, dof)))
    out["high"] = float(np.sqrt(ss / chi2.ppf(alpha / 2, dof)))
    return out
