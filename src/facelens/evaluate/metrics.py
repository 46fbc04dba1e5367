"""Evaluation metrics for the age regressor and the binary eye classifier (pure numpy, no I/O).

Every function returns plain Python floats/ints/lists/dicts so results go straight into JSON
files, HTML reports and model cards. Undefined quantities (R² of a constant target, ROC-AUC
with one class) are ``None`` rather than NaN, because NaN is not valid JSON and silently
poisons averages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

ECE_BINS = 15
CS_KS = range(0, 16)


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _same_length(n: int, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} values, expected {n}")


def _f(x: float | np.floating) -> float:
    return float(x)


def _missing(v: Any) -> bool:
    """Group values that carry no information (skipped in per-group breakdowns)."""
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _group_indices(values: Sequence[Any], n: int, key: str) -> dict[str, np.ndarray]:
    if len(values) != n:
        raise ValueError(f"group {key!r} has {len(values)} labels, expected {n}")
    out: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if not _missing(v):
            out.setdefault(str(v), []).append(i)
    return {k: np.asarray(out[k]) for k in sorted(out, key=_natural_key)}


def _natural_key(label: str) -> tuple:
    """Order group values like '<48px', '48-63px', '>=64px' by their number, others alphabetically."""
    m = re.search(r"\d+(?:\.\d+)?", label)
    if not m:
        return (1, 0.0, 0, label)
    prefix = label[: m.start()].strip()
    rank = 0 if prefix.startswith("<") else 2 if prefix.startswith(">") else 1
    return (0, float(m.group()), rank, label)


def decade_label(age: float) -> str:
    """'0-9', '10-19', ... for an age; negative ages fall into '0-9'."""
    lo = max(0, int(np.floor(age / 10.0)) * 10)
    return f"{lo}-{lo + 9}"


#: Age bands for bias breakdowns: where a model that reads a photo's *source* instead of its face
#: gives itself away (children answered as adults, the old pulled to the middle).
AGE_BANDS: tuple[tuple[int, int | None], ...] = ((0, 2), (3, 9), (10, 19), (20, 39), (40, 59), (60, None))
#: Age bands for sex from the eyes: before puberty (3-12) the eyes say little about sex.
EYE_AGE_BANDS: tuple[tuple[int, int | None], ...] = ((0, 2), (3, 12), (13, 19), (20, 59), (60, None))


def age_band_label(age: float, bands: Sequence[tuple[int, int | None]] = AGE_BANDS) -> str:
    """'0-2', '3-9', ..., '60+' for an age (bands are whole years; fractional ages round down)."""
    a = max(0, int(np.floor(age)))
    for lo, hi in bands:
        if lo <= a and (hi is None or a <= hi):
            return f"{lo}+" if hi is None else f"{lo}-{hi}"
    raise ValueError(f"age {age} falls outside the bands {bands}")


def cs_curve(abs_err: Any, ks: Iterable[float] = CS_KS) -> list[float]:
    """Cumulative score: share of absolute errors <= k, for each k."""
    e = np.abs(_as_1d(abs_err, "abs_err"))
    if len(e) == 0:
        raise ValueError("cs_curve needs at least one error")
    return [_f(np.mean(e <= k)) for k in ks]


def age_metrics(y_true: Any, y_pred: Any, low: Any = None, high: Any = None,
                groups: Mapping[str, Sequence[Any]] | None = None) -> dict:
    """Headline, per-decade, interval and per-group metrics of an age estimator.

    Keys: ``n, mae, rmse, r2, cs5, mean_signed_error`` (prediction minus truth: positive means
    the model over-estimates), ``cs_curve`` (k = 0..15), ``by_decade`` (by *true* age, so bias
    at the extremes is visible: regression to the mean over-estimates the young and
    under-estimates the old), ``by_age_band`` (the same over ``AGE_BANDS``), and when ``low``/``high`` are given ``coverage`` (share of true
    ages inside [low, high]) and ``mean_interval_width``. ``by_group[key][value]`` holds
    n / mae / mean_signed_error per group value; missing values (None, NaN, "") are skipped.
    """
    yt, yp = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred")
    n = len(yt)
    if n == 0:
        raise ValueError("age_metrics needs at least one prediction")
    _same_length(n, y_pred=yp)
    err = yp - yt
    ae = np.abs(err)
    ss_tot = float(np.sum((yt - yt.mean()) ** 2))
    out: dict[str, Any] = {
        "n": n,
        "mae": _f(ae.mean()),
        "rmse": _f(np.sqrt(np.mean(err**2))),
        "r2": None if ss_tot == 0.0 else _f(1.0 - np.sum(err**2) / ss_tot),
        "cs5": _f(np.mean(ae <= 5)),
        "mean_signed_error": _f(err.mean()),
        "cs_curve": cs_curve(ae),
    }
    inside = None
    if (low is None) != (high is None):
        raise ValueError("give both low and high, or neither")
    if low is not None:
        lo, hi = _as_1d(low, "low"), _as_1d(high, "high")
        _same_length(n, low=lo, high=hi)
        inside = (yt >= lo) & (yt <= hi)
        out["coverage"] = _f(inside.mean())
        out["mean_interval_width"] = _f(np.mean(hi - lo))

    decades = np.array([decade_label(a) for a in yt])
    by_decade: dict[str, dict] = {}
    for d in sorted(set(decades.tolist()), key=lambda s: int(s.split("-")[0])):
        m = decades == d
        row: dict[str, Any] = {"n": int(m.sum()), "mae": _f(ae[m].mean()), "mean_signed_error": _f(err[m].mean())}
        if inside is not None:
            row["coverage"] = _f(inside[m].mean())
        by_decade[d] = row
    out["by_decade"] = by_decade
    bands = np.array([age_band_label(a) for a in yt])
    by_band: dict[str, dict] = {}
    for b in sorted(set(bands.tolist()), key=lambda s: int(re.match(r"\d+", s).group())):
        m = bands == b
        row = {"n": int(m.sum()), "mae": _f(ae[m].mean()), "mean_signed_error": _f(err[m].mean())}
        if inside is not None:
            row["coverage"] = _f(inside[m].mean())
        by_band[b] = row
    out["by_age_band"] = by_band

    if groups:
        by_group: dict[str, dict] = {}
        for key, values in groups.items():
            rows = {}
            for v, idx in _group_indices(values, n, key).items():
                rows[v] = {"n": len(idx), "mae": _f(ae[idx].mean()), "mean_signed_error": _f(err[idx].mean())}
                if inside is not None:
                    rows[v]["coverage"] = _f(inside[idx].mean())
            by_group[key] = rows
        out["by_group"] = by_group
    return out


def source_band_rows(m: Mapping[str, Any]) -> dict[str, dict[str, Mapping]]:
    """{source: {band: row}} from ``age_metrics`` output with ``by_source`` beside it, "all" first:
    the cross-source view (a model that reads the photo's source shows up as a band that is
    fine on one source and far off on another)."""
    rows = {"all": m.get("by_age_band", {})}
    rows |= {src: sm.get("by_age_band", {}) for src, sm in (m.get("by_source") or {}).items()}
    return rows


def noise_limits(noise_std: float, label_std: float) -> dict:
    """Best RMSE and R² any model can score against labels with independent noise ``noise_std``.

    Even a perfect estimator of the true age misses each noisy label by the noise itself, so
    RMSE >= noise std and R² <= 1 - noise² / label variance (the label variance includes the noise).
    """
    if label_std <= 0:
        raise ValueError(f"label_std must be positive, got {label_std}")
    return {"rmse_floor": _f(noise_std), "r2_ceiling": _f(1.0 - (noise_std / label_std) ** 2)}


def paired_difference(loss_a: Any, loss_b: Any, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``loss_b - loss_a`` over the same items, with a percentile bootstrap interval.

    Why paired: both models scored the same images, so resampling per-image differences cancels
    how hard each image is, and the interval says whether a gap (say 0.1 years of MAE) is real at
    this sample size or within what another draw of test images could reverse.
    """
    a, b = _as_1d(loss_a, "loss_a"), _as_1d(loss_b, "loss_b")
    _same_length(len(a), loss_b=b)
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 items, got {len(a)}")
    d = b - a
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    tail = (1.0 - level) / 2.0 * 100.0
    return {"n": len(d), "difference": _f(d.mean()), "low": _f(np.percentile(means, tail)),
            "high": _f(np.percentile(means, 100.0 - tail)), "level": level}


# ---------------------------------------------------------------------------------------- binary


def _binary_inputs(y_true01: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = _as_1d(y_true01, "y_true"), _as_1d(p, "p")
    _same_length(len(y), p=p)
    if len(y) == 0:
        raise ValueError("binary metrics need at least one prediction")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must contain only 0 and 1")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    return y.astype(np.int64), p


def roc_auc(y_true01: Any, scores: Any) -> float | None:
    """ROC-AUC by the Mann-Whitney U statistic; tied scores count one half. ``None`` with one class.

    AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with average ranks
    for ties: the probability that a random positive scores above a random negative.
    """
    y, s = _as_1d(y_true01, "y_true"), _as_1d(scores, "scores")
    _same_length(len(y), scores=s)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks handle ties
    return _f((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true01: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from (0, 0) to (1, 1), one point per distinct score threshold."""
    y, s = _as_1d(y_true01, "y_true"), _as_1d(p, "p")
    _same_length(len(y), p=s)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes in y_true")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tps = np.cumsum(y == 1)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def reliability_bins(y_true01: Any, p: Any, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per-bin confidence, accuracy and count of the *predicted class* (top-label reliability).

    Confidence is max(p, 1 - p) and the prediction is p >= 0.5, as in Guo et al. 2017 ("On
    Calibration of Modern Neural Networks"); bins are equal-width on [0, 1] and right-closed
    ((lo, hi], the first also takes 0), so for a binary model only the upper half is used.
    Empty bins report ``None`` confidence/accuracy and count 0.
    """
    y, p = _binary_inputs(y_true01, p)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out: dict[str, list] = {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(),
                            "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = idx == b
        c = int(m.sum())
        out["count"].append(c)
        out["confidence"].append(_f(conf[m].mean()) if c else None)
        out["accuracy"].append(_f(correct[m].mean()) if c else None)
    return out


def expected_calibration_error(y_true01: Any, p: Any, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin share) x |accuracy - confidence| (Guo et al. 2017)."""
    bins = reliability_bins(y_true01, p, n_bins)
    n = sum(bins["count"])
    return _f(sum(c / n * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"],
                                                       strict=True) if c))


#: Simulated label draws for ``ece_noise_floor``: enough for a p-value to +-0.015 and a floor to 3 digits.
ECE_SIMULATIONS = 1000


def ece_noise_floor(y_true01: Any, p: Any, n_bins: int = ECE_BINS, n_sims: int = ECE_SIMULATIONS,
                    seed: int = 0, observed: float | None = None) -> dict[str, float | None]:
    """What ECE a *perfectly calibrated* model with these probabilities would show on this many images.

    Why: ECE is biased upwards on small samples: with 100 faces spread over 15 bins, sampling noise
    alone gives an ECE of 0.05-0.08 even when every probability is exactly right, so a per-band
    "ECE <= 0.03" cannot be checked on a band of 100 faces. Consistency resampling (Broecker &
    Smith 2007) draws labels from the model's own probabilities ``n_sims`` times (seeded) and
    returns the mean ECE of those draws (``floor``) and the share at least as large as the
    observed one (``p_value``): a small p-value (< 0.05) means the miscalibration is real, a large
    one that the observed ECE is what noise alone gives at this n.
    """
    y, p = _binary_inputs(y_true01, p)
    n = len(y)
    if n == 0:
        return {"floor": None, "p_value": None}
    if observed is None:  # callers that have just computed it pass it in
        observed = expected_calibration_error(y, p, n_bins)
    pred = p >= 0.5
    conf = np.where(pred, p, 1.0 - p)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    onehot = np.zeros((n, n_bins))
    onehot[np.arange(n), idx] = 1.0
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # simulations at a time: memory stays ~50 MB whatever n
    sims = []
    for start in range(0, n_sims, chunk):
        ys = rng.random((min(chunk, n_sims - start), n)) < p  # labels drawn from the model's own probabilities
        gap = ((ys == pred).astype(np.float64) - conf) @ onehot  # per simulation and bin: sum(correct - confidence)
        sims.append(np.abs(gap).sum(axis=1) / n)
    sims = np.concatenate(sims)
    return {"floor": _f(sims.mean()), "p_value": _f(np.mean(sims >= observed - 1e-12))}


def _ece_with_floor(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """``ece``, ``ece_floor`` and ``ece_p_value`` of one set of predictions, the ECE computed once."""
    ece = expected_calibration_error(y, p)
    floor = ece_noise_floor(y, p, observed=ece)
    return {"ece": ece, "ece_floor": floor["floor"], "ece_p_value": floor["p_value"]}


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float | None:
    """Mean recall over the classes present (as scikit-learn does); ``None`` when empty."""
    recalls = [np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]
    return _f(np.mean(recalls)) if recalls else None


def _confidence_and_lean(y: np.ndarray, p: np.ndarray) -> dict:
    """Which way a group is off, which the ECE alone does not say: mean confidence (to set against the
    accuracy: above it is over-confident) and mean P(positive) (to set against the share of positives: a lean)."""
    return {"mean_confidence": _f(np.mean(np.maximum(p, 1 - p))), "mean_p_positive": _f(np.mean(p)),
            "positive_share": _f(np.mean(y))}


def binary_metrics(y_true01: Any, p_positive: Any, groups: Mapping[str, Sequence[Any]] | None = None,
                   threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, ROC-AUC, log loss, Brier, ECE and confusion counts.

    ``confusion_matrix`` is [[tn, fp], [fn, tp]] (rows: true class 0/1, columns: predicted).
    ``by_group[key][value]`` holds n, accuracy and balanced accuracy per group value, so
    e.g. grayscale or small crops that the model handles worse are visible.
    """
    y, p = _binary_inputs(y_true01, p_positive)
    n = len(y)
    pred = (p >= threshold).astype(np.int64)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    eps = 1e-15
    pc = np.clip(p, eps, 1 - eps)
    out: dict[str, Any] = {
        "n": n,
        "n_positive": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": _f(np.mean(pred == y)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "roc_auc": roc_auc(y, p),
        "log_loss": _f(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "brier": _f(np.mean((p - y) ** 2)),
        **_ece_with_floor(y, p),
        **_confidence_and_lean(y, p),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
    if groups:
        by_group: dict[str, dict] = {}
        for key, values in groups.items():
            by_group[key] = {v: {"n": len(idx), "accuracy": _f(np.mean(pred[idx] == y[idx])),
                                 "balanced_accuracy": _balanced_accuracy(y[idx], pred[idx]),
                                 **_ece_with_floor(y[idx], p[idx]), **_confidence_and_lean(y[idx], p[idx])}
                             for v, idx in _group_indices(values, n, key).items()}
        out["by_group"] = by_group
    return out
