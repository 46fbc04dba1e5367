"""Pure maths that turns raw model outputs into estimates with uncertainty.

Age (``age-bins`` head): the softmax over ages 0..100 is a predictive distribution; its mean
is the estimate (Paplham et al. 2024: cross-entropy over bins + expected value is a strong
default) and its 10% / 90% quantiles give the 80% interval, widened or narrowed by a factor
fitted on validation data so that the interval really covers ~80% of true ages.
Age (``regression`` head, the seed baseline): the interval comes from validation residual
quantiles (split conformal). Eyes: sigmoid(logit / T) with T fitted on validation data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from facelens.agebins import AGE_MIN, NUM_AGE_BINS
from facelens.models.meta import Decoding, decoding_of


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def distribution_quantile(probs: np.ndarray, q: float) -> np.ndarray:
    """Quantile of a distribution over integer ages, linearly interpolated inside the bin."""
    cdf = np.cumsum(probs, axis=-1)
    idx = np.clip((cdf < q).sum(axis=-1), 0, probs.shape[-1] - 1)
    prev = np.where(idx > 0, np.take_along_axis(cdf, np.maximum(idx - 1, 0)[..., None], -1)[..., 0], 0.0)
    p_bin = np.take_along_axis(probs, idx[..., None], -1)[..., 0]
    frac = np.clip((q - prev) / np.maximum(p_bin, 1e-12), 0.0, 1.0)
    return AGE_MIN + idx - 0.5 + frac


def age_from_bins(logits: np.ndarray, interval: float = 0.8, scale: float = 1.0,
                  answer_map: list[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, low, high) arrays from (N, 101) logits; ``answer_map`` (offset, slope) moves all three first."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != NUM_AGE_BINS:
        raise ValueError(f"expected (N, {NUM_AGE_BINS}) age logits, got {logits.shape}")
    probs = softmax(logits)
    ages = np.arange(NUM_AGE_BINS) + AGE_MIN
    value = probs @ ages
    tail = (1.0 - interval) / 2.0
    low = distribution_quantile(probs, tail)
    high = distribution_quantile(probs, 1.0 - tail)
    if answer_map is not None:
        offset, slope = answer_map
        value, low, high = (np.clip(offset + slope * a, AGE_MIN, AGE_MIN + NUM_AGE_BINS - 1) for a in (value, low, high))
    return scale_interval(value, low, high, scale)


def scale_interval(value: np.ndarray, low: np.ndarray, high: np.ndarray, scale: float):
    """Stretch an interval around the estimate by ``scale``; ages stay within 0..100."""
    lo = np.clip(value - scale * (value - low), AGE_MIN, None)
    hi = np.clip(value + scale * (high - value), None, AGE_MIN + NUM_AGE_BINS - 1)
    return value, np.minimum(lo, value), np.maximum(hi, value)


def age_from_regression(outputs: np.ndarray, residual_q: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    value = np.asarray(outputs, dtype=np.float64).reshape(-1)
    return value, value + residual_q[0], value + residual_q[1]


def p_female_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1) / temperature)


def combine_eye_probabilities(p: list[float]) -> float:
    """Combine the two eyes' calibrated probabilities by averaging their log-odds.

    Averaging (not summing) log-odds treats the two eyes as one noisy view of one person:
    summing would assume independent evidence and double the confidence.
    """
    if not p:
        raise ValueError("no eye probabilities to combine")
    arr = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return float(sigmoid(np.mean(np.log(arr / (1 - arr)))))


#: A model's metadata as the decoders take it: typed (``ModelMeta``, ``Decoding``) or a dict, whole or
#: just the calibration (``evaluate.scoring.calibrate``); missing keys take ``Decoding``'s defaults.
MetaLike = Decoding | Mapping[str, Any]


def decode_age(outputs: np.ndarray, meta: MetaLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, low, high) for a model's raw outputs, using the calibration stored in its metadata."""
    m = decoding_of(meta)
    if m.head == "age-bins":
        return age_from_bins(outputs, m.interval, m.interval_scale, m.age_answer_map)
    return age_from_regression(outputs, (m.residual_q[0], m.residual_q[1]))


def decode_eyes(outputs: np.ndarray, meta: MetaLike) -> np.ndarray:
    """Calibrated P(female) for a binary model's raw logits."""
    return p_female_from_logits(outputs, decoding_of(meta).temperature)


def decode_face_logits(face_logits: np.ndarray, meta: MetaLike, ages: np.ndarray | None = None) -> np.ndarray:
    """Calibrated P(female) of whole faces from the mean logit of their eye crops.

    Models trained on crops cut from faces carry a ``face_temperature`` fitted on such faces; older
    ones fall back to the single-crop temperature, which makes this the mean of the eyes' calibrated
    log-odds (``combine_eye_probabilities``). ``ages`` (years per face, NaN unknown: the age model's
    estimate, in ``predict`` and in evaluation alike) select the age band's calibration where the model has one
    (``Decoding.face_calibration``).
    """
    logits = np.asarray(face_logits, dtype=np.float64).reshape(-1)
    temps, offsets = decoding_of(meta).face_calibration(ages, len(logits))
    return sigmoid(logits / temps + offsets)


#: The per-crop decoder of each task (``facelens.tasks``): raw outputs -> the task's estimate
#: (age: (value, low, high); eyes: P(female)). ``tests/test_tasks.py`` checks every task has one.
DECODERS: dict[str, Callable[[np.ndarray, MetaLike], Any]] = {"age": decode_age, "eyes": decode_eyes}
