"""Post-hoc calibration: temperature scaling (eyes) and interval scaling (age).

Both are fitted on the *validation* split only and then frozen into the model's metadata.
Fitting them on the test split would tune the very numbers we report (coverage, ECE) to the
data we report them on, so the test metrics would no longer be an honest estimate.

Neither changes which class/age is predicted: temperature scaling divides the logit by one
positive T (same sign, same ranking, same accuracy and ROC-AUC) and the interval scale only
stretches the interval around the unchanged point estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar

T_BOUNDS = (0.05, 20.0)
SCALE_BOUNDS = (0.05, 20.0)


def _vec(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _logits_and_labels(logits: Any, y01: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (logits, 0/1 labels) of one calibration fit."""
    z, y = _vec(logits, "logits"), _vec(y01, "y01")
    if len(z) != len(y) or len(z) == 0:
        raise ValueError(f"need matching, non-empty logits and labels (got {len(z)} and {len(y)})")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return z, y


def binary_nll(logits: Any, y01: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of sigmoid(logits / T), computed stably via log(1 + e^z)."""
    z = _vec(logits, "logits") / temperature
    y = _vec(y01, "y01")
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: Any, y01: Any, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """Temperature T minimising the validation NLL of sigmoid(logit / T) (Guo et al. 2017).

    Searched on log T (the NLL is smoother there and T stays positive) with a bounded 1-D
    method, because a single parameter needs no gradient machinery. Fit on validation data
    only, never on test (see module docstring). T > 1 softens over-confident predictions.
    """
    z, y = _logits_and_labels(logits, y01)
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda t: binary_nll(z, y, float(np.exp(t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def fit_platt(logits: Any, y01: Any, bounds: tuple[float, float] = T_BOUNDS) -> tuple[float, float]:
    """(T, c) minimising the NLL of sigmoid(logit / T + c): temperature scaling plus an offset (Platt 1999).

    Why an offset: a group whose probabilities lean to one class on average (a bias, not over-confidence)
    is not helped by a temperature, which only scales the logit around 0. Fitted on log T so T stays positive.
    """
    z, y = _logits_and_labels(logits, y01)
    lo, hi = np.log(bounds[0]), np.log(bounds[1])

    def nll_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, c = params
        u = z * np.exp(-log_t) + c
        r = 0.5 * (1.0 + np.tanh(0.5 * u)) - y  # d nll / d u per sample
        return float(np.mean(np.logaddexp(0.0, u) - y * u)), np.array([np.mean(r * -z * np.exp(-log_t)), np.mean(r)])

    res = minimize(nll_and_grad, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(lo, hi), (-10.0, 10.0)])
    return float(np.exp(res.x[0])), float(res.x[1])


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logits / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def apply_interval_scale(value: Any, low: Any, high: Any, s: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) stretched around ``value`` by ``s``: each side's distance to the estimate is multiplied by s.

    The two sides keep their own lengths, so a skewed predictive distribution (e.g. more
    uncertainty upwards for older faces) stays skewed.
    """
    if not s >= 0:
        raise ValueError(f"scale must be >= 0, got {s}")
    v = np.asarray(value, dtype=np.float64)
    lo = np.minimum(np.asarray(low, dtype=np.float64), v)
    hi = np.maximum(np.asarray(high, dtype=np.float64), v)
    return v - s * (v - lo), v + s * (hi - v)


def interval_coverage(y_true: Any, low: Any, high: Any) -> float:
    y = np.asarray(y_true, dtype=np.float64)
    return float(np.mean((y >= np.asarray(low)) & (y <= np.asarray(high))))


def fit_interval_scale(y_true: Any, value: Any, low: Any, high: Any, target: float = 0.8,
                       bounds: tuple[float, float] = SCALE_BOUNDS) -> float:
    """Scale s for ``apply_interval_scale`` whose coverage on this (validation) data is closest to ``target``.

    The raw 10%/90% quantiles of a network's predictive distribution are usually too narrow
    (networks are over-confident), so the nominal 80% interval covers far fewer true ages.
    For each sample we compute the smallest s that would cover its true age (its distance to
    the estimate divided by the interval's half-width on that side); coverage(s) is the share
    of these needs <= s, a step function, so the k-th smallest need with k = round(target * n)
    gives coverage k/n, the achievable value closest to the target (split-conformal style,
    exact, no grid). Fitted on validation data only, never on test: the reported test
    coverage is then an honest check of the calibration.
    """
    y, v = _vec(y_true, "y_true"), _vec(value, "value")
    lo, hi = _vec(low, "low"), _vec(high, "high")
    n = len(y)
    if n == 0 or not (len(v) == len(lo) == len(hi) == n):
        raise ValueError("need matching, non-empty y_true, value, low and high")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target coverage must be in (0, 1), got {target}")
    lo, hi = np.minimum(lo, v), np.maximum(hi, v)
    above = y > v
    dist = np.abs(y - v)
    half = np.where(above, hi - v, v - lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(dist == 0, 0.0, np.where(half > 0, dist / half, np.inf))
    k = int(np.clip(round(target * n), 1, n))
    s = float(np.sort(need)[k - 1])
    return float(np.clip(s, bounds[0], bounds[1]))
