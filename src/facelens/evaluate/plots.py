"""Evaluation figures as PNG files (matplotlib, Agg renderer, no display needed).

Figures are built on ``matplotlib.figure.Figure`` objects, never through ``pyplot``: pyplot
keeps global state (the current figure, the chosen backend) that leaks memory in long runs
and is not thread-safe in a web server. Each ``plot_*`` function saves one PNG atomically and
returns its path.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facelens.evaluate.metrics import (
    ECE_BINS,
    cs_curve,
    expected_calibration_error,
    reliability_bins,
    roc_auc,
    roc_curve,
)
from facelens.fileio import write_bytes_atomic

DPI = 110
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
POS, NEG = "#2b7bba", "#d95f3b"


def _figure(w: float = 6.4, h: float = 4.4) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return write_bytes_atomic(path, buf.getvalue())


def _empty(path: str | Path, title: str, message: str) -> Path:
    """A placeholder figure, so a report never references a missing file."""
    fig = _figure(6.4, 2.4)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555", transform=ax.transAxes)
    return _save(fig, path)


def _decade_order(keys: Sequence[str]) -> list[str]:
    return sorted(keys, key=lambda s: int(str(s).split("-")[0]))


def _bars(ax, labels: Sequence[str], values: Sequence[float], counts: Sequence[int] | None = None,
          color: str = PALETTE[0]) -> None:
    x = np.arange(len(labels))
    vals = np.array([np.nan if v is None else v for v in values], dtype=float)
    bars = ax.bar(x, np.nan_to_num(vals), color=color, width=0.7)
    ax.set_xticks(x, labels, rotation=30 if max((len(str(lab)) for lab in labels), default=0) > 6 else 0,
                  ha="right" if max((len(str(lab)) for lab in labels), default=0) > 6 else "center")
    if counts is not None:
        for b, c, v in zip(bars, counts, vals, strict=True):
            y = b.get_height() if np.isfinite(v) else 0.0
            ax.annotate(f"n={c}", (b.get_x() + b.get_width() / 2, y), xytext=(0, 2 if y >= 0 else -10),
                        textcoords="offset points", ha="center", fontsize=7, color="#444")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


# ------------------------------------------------------------------------------------------- age


def plot_pred_vs_true(y_true: Any, y_pred: Any, path: str | Path, title: str = "Predicted vs true age") -> Path:
    """Scatter of estimates against true ages; points on the dashed line are exact."""
    yt, yp = np.asarray(y_true, float).ravel(), np.asarray(y_pred, float).ravel()
    fig = _figure(5.6, 5.2)
    ax = fig.add_subplot()
    alpha = float(np.clip(300.0 / max(len(yt), 1), 0.08, 0.8))
    ax.scatter(yt, yp, s=8, alpha=alpha, color=PALETTE[0], edgecolors="none", label=f"images (n={len(yt)})")
    lo = float(min(yt.min(), yp.min(), 0.0)) if len(yt) else 0.0
    hi = float(max(yt.max(), yp.max())) + 2 if len(yt) else 100.0
    ax.plot([lo, hi], [lo, hi], "--", color="#333", lw=1, label="perfect estimate")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_mae_by_decade(by_decade: Mapping[str, Mapping], path: str | Path,
                       title: str = "Mean absolute error by true-age decade") -> Path:
    keys = _decade_order(list(by_decade))
    if not keys:
        return _empty(path, title, "no data")
    fig = _figure()
    ax = fig.add_subplot()
    _bars(ax, keys, [by_decade[k]["mae"] for k in keys], [by_decade[k]["n"] for k in keys])
    ax.set_xlabel("true age (decade)")
    ax.set_ylabel("MAE (years)")
    ax.set_title(title)
    return _save(fig, path)


def plot_bias_by_decade(by_decade: Mapping[str, Mapping], path: str | Path,
                        title: str = "Bias by decade (mean predicted - true)") -> Path:
    """Signed error bars: above zero the model over-estimates that decade, below it under-estimates."""
    keys = _decade_order(list(by_decade))
    if not keys:
        return _empty(path, title, "no data")
    vals = [by_decade[k]["mean_signed_error"] for k in keys]
    fig = _figure()
    ax = fig.add_subplot()
    _bars(ax, keys, vals, [by_decade[k]["n"] for k in keys])
    for b, v in zip(ax.patches, vals, strict=True):
        b.set_color(NEG if v < 0 else POS)
    ax.axhline(0, color="#222", lw=1)
    ax.set_xlabel("true age (decade)")
    ax.set_ylabel("mean signed error (years)\n< 0 under-estimates, > 0 over-estimates")
    ax.set_title(title)
    return _save(fig, path)


def plot_error_hist(y_true: Any, y_pred: Any, path: str | Path, title: str = "Distribution of errors") -> Path:
    err = np.asarray(y_pred, float).ravel() - np.asarray(y_true, float).ravel()
    fig = _figure()
    ax = fig.add_subplot()
    lim = max(5.0, float(np.ceil(np.percentile(np.abs(err), 99.5)))) if len(err) else 5.0
    ax.hist(np.clip(err, -lim, lim), bins=np.linspace(-lim, lim, min(61, int(2 * lim) + 1)), color=PALETTE[0],
            alpha=0.85)
    ax.axvline(0, color="#222", lw=1)
    ax.axvline(float(err.mean()) if len(err) else 0.0, color=NEG, lw=1.5, ls="--",
               label=f"mean {err.mean():+.2f} y" if len(err) else "mean")
    ax.set_xlabel("predicted - true age (years; tails clipped into the edge bins)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cs_curve(abs_err_by_model: Mapping[str, Any], path: str | Path,
                  title: str = "Cumulative score: share of images within k years") -> Path:
    ks = list(range(16))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, err) in enumerate(abs_err_by_model.items()):
        cs = cs_curve(np.abs(np.asarray(err, float)), ks)
        ax.plot(ks, cs, marker="o", ms=3, color=PALETTE[i % len(PALETTE)], label=f"{name} (CS@5 {cs[5]:.2f})")
    ax.set_xlabel("k: allowed absolute error (years)")
    ax.set_ylabel("share of images with |error| <= k")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ks)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_group_bars(by_group: Mapping[str, Mapping[str, Mapping]], path: str | Path, field: str = "mae",
                    ylabel: str = "MAE (years)", title: str = "MAE by group",
                    keys: Sequence[str] | None = None) -> Path:
    """One panel per grouping (e.g. gender, race, source), one bar per value with its n."""
    keys = [k for k in (keys or list(by_group)) if len(by_group.get(k) or {}) >= 2]  # one value: nothing to compare
    if not keys:
        return _empty(path, title, "no grouping with two or more values")
    fig = _figure(max(4.5, 3.4 * len(keys)), 4.0)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for i, (ax, key) in enumerate(zip(axes, keys, strict=True)):
        rows = by_group[key]
        labels = list(rows)
        _bars(ax, labels, [rows[v][field] for v in labels], [rows[v]["n"] for v in labels],
              color=PALETTE[i % len(PALETTE)])
        ax.set_title(key)
        if field == "mean_signed_error":
            ax.axhline(0, color="#222", lw=1)
        if field in ("accuracy", "balanced_accuracy", "coverage"):
            ax.set_ylim(0, 1.05)
        if i == 0:
            ax.set_ylabel(ylabel)
    fig.suptitle(title)
    return _save(fig, path)


def plot_mae_by_group(by_group: Mapping[str, Mapping[str, Mapping]], path: str | Path,
                      keys: Sequence[str] | None = None, title: str = "MAE by group") -> Path:
    return plot_group_bars(by_group, path, "mae", "MAE (years)", title, keys)


def plot_coverage_by_decade(by_decade: Mapping[str, Mapping], path: str | Path, target: float = 0.8,
                            title: str = "Interval coverage by true-age decade") -> Path:
    keys = [k for k in _decade_order(list(by_decade)) if "coverage" in by_decade[k]]
    if not keys:
        return _empty(path, title, "the model gives no intervals")
    fig = _figure()
    ax = fig.add_subplot()
    _bars(ax, keys, [by_decade[k]["coverage"] for k in keys], [by_decade[k]["n"] for k in keys])
    ax.axhline(target, color=NEG, ls="--", lw=1.5, label=f"target {target:.0%}")
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("true age (decade)")
    ax.set_ylabel("share of true ages inside the interval")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ eyes


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | Path, title: str = "ROC curve") -> Path:
    """ROC of one or more models: ``curves[name] = (y_true01, p_positive)``."""
    fig = _figure(5.4, 5.0)
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, (y, p)) in enumerate(curves.items()):
        auc = roc_auc(y, p)
        if auc is None:
            continue
        fpr, tpr = roc_curve(y, p)
        ax.plot(fpr, tpr, color=PALETTE[i % len(PALETTE)], lw=1.8, label=f"{name} (AUC {auc:.3f})")
        drawn += 1
    if not drawn:
        return _empty(path, title, "ROC is undefined: only one class present")
    ax.plot([0, 1], [0, 1], ":", color="#777", lw=1, label="chance (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(y_true01: Any, p: Any, path: str | Path, n_bins: int = ECE_BINS,
                     title: str = "Reliability diagram") -> Path:
    """Accuracy vs confidence of the predicted class per bin; bars on the diagonal are calibrated."""
    bins = reliability_bins(y_true01, p, n_bins)
    ece = expected_calibration_error(y_true01, p, n_bins)
    lower, width = np.array(bins["lower"]), 1.0 / n_bins
    used = [i for i, c in enumerate(bins["count"]) if c]
    start = float(lower[min(used)]) if used and lower[min(used)] >= 0.4 else 0.0
    fig = _figure(5.6, 6.0)
    ax, axc = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    acc = np.array([bins["accuracy"][i] for i in used])
    conf = np.array([bins["confidence"][i] for i in used])
    centres = lower[used] + width / 2
    ax.bar(lower[used], acc, width=width, align="edge", color=PALETTE[0], alpha=0.8, edgecolor="white",
           label="accuracy in bin")
    ax.vlines(centres, np.minimum(acc, conf), np.maximum(acc, conf), color=NEG, lw=2, label="gap")
    ax.plot(centres, conf, "_", color=NEG, ms=14, mew=2.5, label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "--", color="#222", lw=1, label="perfect calibration")
    ax.set_ylim(max(0.0, min(start, float(acc.min()) - 0.05)), 1.01)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {ece:.3f}, {n_bins} bins)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    axc.bar(lower[used], [bins["count"][i] for i in used], width=width, align="edge", color="#888", edgecolor="white")
    axc.set_ylabel("images")
    axc.set_xlabel("confidence of the predicted class")
    axc.set_xlim(start, 1)
    axc.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], path: str | Path, labels: Sequence[str] = ("male", "female"),
                   title: str = "Confusion matrix") -> Path:
    """Counts with the row share (recall of each true class) in brackets."""
    m = np.asarray(matrix, dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig = _figure(4.8, 4.2)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}\n({share[i, j]:.1%})", ha="center", va="center", fontsize=11,
                    color="white" if share[i, j] > 0.6 else "#111")
    ax.set_xticks(range(len(labels)), [f"pred {lab}" for lab in labels])
    ax.set_yticks(range(len(labels)), [f"true {lab}" for lab in labels])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    return _save(fig, path)


def plot_accuracy_by_group(by_group: Mapping[str, Mapping[str, Mapping]], path: str | Path,
                           keys: Sequence[str] | None = None, title: str = "Accuracy by group") -> Path:
    return plot_group_bars(by_group, path, "accuracy", "accuracy", title, keys)


# ------------------------------------------------------------------------------------ comparison


def plot_comparison(metrics_by_model: Mapping[str, Mapping], keys: Sequence[str], path: str | Path,
                    title: str = "Model comparison", labels: Mapping[str, str] | None = None) -> Path:
    """Grouped bars: one panel per metric key, one bar per model (panels keep their own scale)."""
    keys = [k for k in keys if any(isinstance(m.get(k), int | float) for m in metrics_by_model.values())]
    if not keys or not metrics_by_model:
        return _empty(path, title, "no shared metrics to compare")
    names = list(metrics_by_model)
    fig = _figure(max(4.5, 2.5 * len(keys)), 4.0)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        vals = [metrics_by_model[n].get(key) for n in names]
        x = np.arange(len(names))
        bars = ax.bar(x, [v if isinstance(v, int | float) else 0 for v in vals],
                      color=[PALETTE[i % len(PALETTE)] for i in range(len(names))])
        for b, v in zip(bars, vals, strict=True):
            txt = "n/a" if not isinstance(v, int | float) else f"{v:.3g}"
            neg = isinstance(v, int | float) and v < 0
            ax.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, -3 if neg else 2),
                        textcoords="offset points", ha="center", va="top" if neg else "bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=30 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center",
                      fontsize=8)
        ax.set_title(textwrap.fill((labels or {}).get(key, key), 22), fontsize=9.5)
        if any(isinstance(v, int | float) and v < 0 for v in vals):
            ax.axhline(0, color="#222", lw=0.8)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(title)
    return _save(fig, path)


def plot_decade_comparison(metrics_by_model: Mapping[str, Mapping], path: str | Path, field: str = "mae",
                           ylabel: str = "MAE (years)", title: str = "MAE by true-age decade") -> Path:
    """Grouped bars per decade, one colour per model."""
    names = [n for n in metrics_by_model if metrics_by_model[n].get("by_decade")]
    decades = _decade_order(list({d for n in names for d in metrics_by_model[n]["by_decade"]}))
    if not decades:
        return _empty(path, title, "no data")
    fig = _figure(max(6.4, 0.6 * len(decades) * max(1, len(names))), 4.4)
    ax = fig.add_subplot()
    w = 0.8 / len(names)
    x = np.arange(len(decades))
    for i, n in enumerate(names):
        rows = metrics_by_model[n]["by_decade"]
        vals = [rows[d][field] if d in rows else np.nan for d in decades]
        ax.bar(x - 0.4 + w * (i + 0.5), vals, width=w, color=PALETTE[i % len(PALETTE)], label=n)
    if field == "mean_signed_error":
        ax.axhline(0, color="#222", lw=1)
    ax.set_xticks(x, decades)
    ax.set_xlabel("true age (decade)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


# --------------------------------------------------------------------------------------- gallery


def save_gallery(items: Sequence[tuple[np.ndarray, str]], path: str | Path, title: str, cols: int = 6) -> Path:
    """Grid of RGB uint8 images with captions (e.g. the worst errors or the most confident mistakes)."""
    if not items:
        return _empty(path, title, "nothing to show")
    cols = max(1, min(cols, len(items)))
    rows = int(np.ceil(len(items) / cols))
    fig = _figure(1.9 * cols, 2.15 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (img, caption) in zip(axes, items, strict=False):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7.5)
    fig.suptitle(title)
    return _save(fig, path)
