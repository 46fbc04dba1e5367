"""Self-contained HTML evaluation reports (one folder: ``report.html``, its PNGs and ``metrics.json``).

The page uses inline CSS and relative image paths only, with no external URL, CDN or script,
so it opens offline, can be zipped or attached as is, and leaks nothing when viewed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from facelens.evaluate import plots
from facelens.evaluate.metrics import age_metrics, binary_metrics, source_band_rows
from facelens.evaluate.model_card import format_value
from facelens.fileio import write_json_atomic, write_text_atomic

__all__ = ["write_age_report", "write_eye_report", "write_json_atomic"]

# (key, label, better): better is "low", "high", "zero" (closest to 0) or None (no ranking)
AGE_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("n", "images scored", None),
    ("mae", "MAE (years)", "low"),
    ("rmse", "RMSE (years)", "low"),
    ("r2", "R²", "high"),
    ("cs5", "CS@5 (share within 5 years)", "high"),
    ("mean_signed_error", "mean signed error (years, + = too old)", "zero"),
    ("coverage", "interval coverage (target 80%)", "target"),
    ("mean_interval_width", "mean interval width (years)", None),
)
EYE_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("n", "images scored", None),
    ("n_positive", "of which female", None),
    ("accuracy", "accuracy", "high"),
    ("balanced_accuracy", "balanced accuracy", "high"),
    ("roc_auc", "ROC-AUC", "high"),
    ("log_loss", "log loss", "low"),
    ("brier", "Brier score", "low"),
    ("ece", "ECE (15 bins)", "low"),
)
COVERAGE_TARGET = 0.8

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1.5rem;
color:#1d2330;line-height:1.45;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
.meta{color:#556;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d5d9e2;padding:.3rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{background:#f1f3f8}td.best{font-weight:700;background:#eef7ee}
figure{display:inline-block;margin:.6rem .8rem .8rem 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e6ee}figcaption{font-size:.85rem;color:#445;max-width:640px}
.howto{background:#f7f8fb;border-left:4px solid #7a8bb8;padding:.6rem 1rem}
details{margin:.5rem 0}summary{cursor:pointer;font-weight:600}
"""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.") or "model"


def _file_suffixes(names: Sequence[str]) -> dict[str, str]:
    """'' for a single model; '_<slug>' (made unique) when several models share the folder."""
    if len(names) <= 1:
        return {n: "" for n in names}
    out: dict[str, str] = {}
    for n in names:
        s, i = _slug(n), 2
        while f"_{s}" in out.values():
            s, i = f"{_slug(n)}-{i}", i + 1
        out[n] = f"_{s}"
    return out


def _fmt(v: Any) -> str:
    return html.escape(format_value(v))


def _best(values: list[Any], better: str | None) -> set[int]:
    nums = {i: v for i, v in enumerate(values) if isinstance(v, int | float) and not isinstance(v, bool)}
    if better is None or len(nums) < 2:
        return set()
    score: Callable[[float], float] = {
        "low": lambda v: v, "high": lambda v: -v, "zero": abs, "target": lambda v: abs(v - COVERAGE_TARGET),
    }[better]
    top = min(score(v) for v in nums.values())
    return {i for i, v in nums.items() if score(v) == top}


def _metrics_table(metrics_by_model: Mapping[str, Mapping], rows: Sequence[tuple[str, str, str | None]]) -> str:
    names = list(metrics_by_model)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for key, label, better in rows:
        vals = [metrics_by_model[n].get(key) for n in names]
        if all(v is None for v in vals):
            continue
        best = _best(vals, better)
        cells = "".join(f'<td{" class=best" if i in best else ""}>{_fmt(v)}</td>' for i, v in enumerate(vals))
        body.append(f"<tr><th scope=row>{html.escape(label)}</th>{cells}</tr>")
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _breakdown_table(rows: Mapping[str, Mapping], columns: Sequence[tuple[str, str]], first: str) -> str:
    cols = [(k, lab) for k, lab in columns if any(k in r for r in rows.values())]
    head = "".join(f"<th>{html.escape(lab)}</th>" for _, lab in cols)
    body = "".join(f"<tr><td>{html.escape(str(v))}</td>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in cols)
                   + "</tr>" for v, r in rows.items())
    return f"<table><thead><tr><th>{html.escape(first)}</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _source_band_table(m: Mapping) -> str:
    """MAE and bias (mean signed error) per source and true-age band: a model that reads the photo's
    source instead of the face shows up here (children too old on one source, fine on another)."""
    rows = source_band_rows(m)
    bands = list(dict.fromkeys(b for r in rows.values() for b in r))
    head = "".join(f"<th>{html.escape(b)}</th>" for b in bands)
    body = []
    for src, r in rows.items():
        cells = "".join(f"<td>{_fmt(r[b]['mae'])} ({r[b]['mean_signed_error']:+.1f}), n={r[b]['n']}</td>"
                        if b in r else "<td>-</td>" for b in bands)
        body.append(f"<tr><th scope=row>{html.escape(src)}</th>{cells}</tr>")
    return ("<table><thead><tr><th>source \\ true age</th>" + head + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table><p>Each cell: MAE in years (bias: mean predicted minus true), n faces.</p>")


def _paired_table(paired: Mapping[str, Mapping] | None, measure: str) -> str:
    """Each later model minus the first on the same images, with its bootstrap interval (see
    ``evaluate.pipeline.paired_comparisons``): an interval across zero is no evidence of a gap."""
    if not paired:
        return ""
    rows = []
    for name, cmp in paired.items():
        for part, d in [("all", cmp["all"]), *cmp.get("by_source", {}).items()]:
            verdict = "no clear difference" if d["low"] <= 0.0 <= d["high"] else "lower" if d["high"] < 0 else "higher"
            rows.append(f"<tr><td>{html.escape(name)} minus {html.escape(cmp['against'])}</td><td>{html.escape(part)}</td>"
                        f"<td>{d['n']}</td><td>{d['difference']:+.3f}</td><td>[{d['low']:+.3f}, {d['high']:+.3f}]</td>"
                        f"<td>{verdict}</td></tr>")
    level = int(round(100 * next(iter(paired.values()))["all"]["level"]))
    return (f"<h2>Paired differences</h2><p>{html.escape(measure)} of each model minus the first, on the images both "
            f"scored, with a {level}% bootstrap interval. Both models saw the same images, so an interval that "
            "excludes zero is a difference this sample can resolve; one across zero is not.</p>"
            f"<table><thead><tr><th>models</th><th>images</th><th>n</th><th>difference</th><th>{level}% interval</th>"
            f"<th>reading</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _figure_html(path: Path, caption: str) -> str:
    return (f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(caption)}" loading="lazy">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=meta>{subtitle}</p>{''.join(sections)}</body></html>\n")


def _subtitle(metrics_by_model: Mapping[str, Mapping]) -> str:
    splits = sorted({str(m["split"]) for m in metrics_by_model.values() if m.get("split")})
    parts = [f"generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
             f"{len(metrics_by_model)} model(s): " + ", ".join(html.escape(n) for n in metrics_by_model)]
    if splits:
        parts.append("measured on the <b>" + html.escape(", ".join(splits)) + "</b> split")
    return " · ".join(parts)


def _ensure_metrics(metrics_by_model: Mapping[str, Mapping] | None, arrays_by_model: Mapping[str, Mapping] | None,
                    compute: Callable[[Mapping], dict]) -> dict[str, dict]:
    """Metrics per model, computed from the arrays for any model that came without them."""
    metrics_by_model = dict(metrics_by_model or {})
    arrays_by_model = arrays_by_model or {}
    names = list(dict.fromkeys([*metrics_by_model, *arrays_by_model]))
    if not names:
        raise ValueError("nothing to report: no metrics and no arrays")
    return {n: dict(metrics_by_model.get(n) or compute(arrays_by_model[n])) for n in names}


def _age_from_arrays(a: Mapping) -> dict:
    return age_metrics(a["y_true"], a["y_pred"], a.get("low"), a.get("high"), groups=a.get("groups"))


def _eye_from_arrays(a: Mapping) -> dict:
    return binary_metrics(a["y_true"], a["p_female"], groups=a.get("groups"))


_BEST_NOTE = ("<p class=meta>Highlighted: the best value in each row. On a few hundred test images, differences in "
              "the second decimal are usually within noise.</p>")

AGE_HOWTO = """<div class=howto><p><b>How to read this.</b> Errors are <i>predicted minus true</i> age in years.
<b>MAE</b> is the typical size of an error; <b>RMSE</b> weighs large errors more; <b>R²</b> is the share of the
age variance the model explains (1 is perfect, 0 is no better than always guessing the mean age);
<b>CS@5</b> is the share of faces estimated within 5 years. The <b>mean signed error</b> is the bias: positive
means the model guesses too old. Per-decade bars are grouped by <i>true</i> age: most age models pull
estimates towards the middle of the training ages, so children and older people look biased in opposite
directions. The 80% <b>interval</b> should contain the true age for about 80% of faces overall and in each
decade; less means the model is over-confident there. Groups with few images (small n) give noisy bars.
Labels in public age datasets are themselves noisy, so an MAE of zero is neither possible nor the goal.</p>
</div>"""

EYE_HOWTO = """<div class=howto><p><b>How to read this.</b> The model outputs P(female) for one eye crop: a binary
label estimated from appearance, which says nothing about a person's gender identity. <b>Accuracy</b> counts
correct labels at the 0.5 threshold; <b>balanced accuracy</b> averages the two classes' recalls, so it is not
flattered by an imbalanced test set; <b>ROC-AUC</b> is the chance that a random female crop scores higher than a
random male one (0.5 is guessing). <b>Log loss</b>, <b>Brier score</b> and <b>ECE</b> judge the probabilities
themselves: in the reliability diagram, bars on the diagonal mean that "90% sure" is right about 90% of the time.
Accuracy by group shows where the model is weaker (e.g. grayscale or small crops). Look at the confident
mistakes: the eye datasets mix make-up with the label, and a model that learned "make-up = female" fails on
bare-faced women and made-up men.</p></div>"""


def write_age_report(out_dir: str | Path, metrics_by_model: Mapping[str, Mapping] | None,
                     arrays_by_model: Mapping[str, Mapping] | None,
                     gallery_items: Sequence[tuple[np.ndarray, str]] | None = None,
                     paired: Mapping[str, Mapping] | None = None) -> Path:
    """Figures, ``metrics.json`` and ``report.html`` for one or more age models; returns the HTML path.

    ``arrays_by_model[name]`` holds ``y_true``, ``y_pred`` and optionally ``low``, ``high`` and
    ``groups``; metrics missing for a model are computed from its arrays. ``paired`` is the
    output of ``evaluate.pipeline.paired_comparisons`` (MAE differences), shown as a table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays_by_model = arrays_by_model or {}
    metrics = _ensure_metrics(metrics_by_model, arrays_by_model, _age_from_arrays)
    names = list(metrics)
    sfx = _file_suffixes(names)
    multi = len(names) > 1
    sections = ["<h2>Metrics</h2>", _metrics_table(metrics, AGE_ROWS), _BEST_NOTE if multi else "",
                _paired_table(paired, "MAE (years)"), AGE_HOWTO]
    if multi:
        figs = [_figure_html(plots.plot_comparison(metrics, ["mae", "rmse", "r2", "cs5", "mean_signed_error",
                                                             "coverage"], out / "comparison.png",
                                                   labels=dict((k, lab) for k, lab, _ in AGE_ROWS)),
                             "Headline metrics side by side."),
                _figure_html(plots.plot_decade_comparison(metrics, out / "mae_by_decade_comparison.png"),
                             "MAE by true-age decade for each model."),
                _figure_html(plots.plot_decade_comparison(metrics, out / "bias_by_decade_comparison.png",
                                                          "mean_signed_error", "mean signed error (years)",
                                                          "Bias by true-age decade (mean predicted - true)"),
                             "Bias by decade for each model: above zero too old, below zero too young.")]
        sections += ["<h2>Comparison</h2>", *figs]
    errs = {n: np.asarray(a["y_pred"], float) - np.asarray(a["y_true"], float) for n, a in arrays_by_model.items()}
    if errs:
        sections.append(_figure_html(plots.plot_cs_curve(errs, out / "cs_curve.png"),
                                     "Cumulative score: the higher the curve, the more faces within k years."))
    for n in names:
        m, a, s = metrics[n], arrays_by_model.get(n), sfx[n]
        t = f" — {n}" if multi else ""
        figs = []
        if a is not None:
            figs.append(_figure_html(plots.plot_pred_vs_true(a["y_true"], a["y_pred"], out / f"pred_vs_true{s}.png",
                                                             title=f"Predicted vs true age{t}"),
                                     "Each dot is one face; the dashed line is a perfect estimate."))
            figs.append(_figure_html(plots.plot_error_hist(a["y_true"], a["y_pred"], out / f"error_hist{s}.png",
                                                           title=f"Distribution of errors{t}"),
                                     "Predicted minus true age; a peak off zero is a systematic bias."))
        figs.append(_figure_html(plots.plot_mae_by_decade(m.get("by_decade", {}), out / f"mae_by_decade{s}.png",
                                                          title=f"MAE by true-age decade{t}"),
                                 "Typical error per decade of true age (n = images in the decade)."))
        figs.append(_figure_html(plots.plot_bias_by_decade(m.get("by_decade", {}), out / f"bias_by_decade{s}.png",
                                                           title=f"Bias by decade{t}"),
                                 "Mean signed error per decade: blue too old, red too young."))
        if "coverage" in m:
            figs.append(_figure_html(plots.plot_coverage_by_decade(m.get("by_decade", {}),
                                                                   out / f"coverage_by_decade{s}.png",
                                                                   COVERAGE_TARGET,
                                                                   title=f"Interval coverage by decade{t}"),
                                     "Share of true ages inside the 80% interval, per decade; the dashed line "
                                     "is the target."))
        by_group = m.get("by_group") or {}
        if any(len(rows) >= 2 for rows in by_group.values()):
            figs.append(_figure_html(plots.plot_mae_by_group(by_group, out / f"mae_by_group{s}.png",
                                                             title=f"MAE by group{t}"),
                                     "Typical error per group (gender and race as annotated in the data)."))
            figs.append(_figure_html(plots.plot_group_bars(by_group, out / f"bias_by_group{s}.png",
                                                           "mean_signed_error", "mean signed error (years)",
                                                           f"Bias by group{t}"),
                                     "Mean signed error per group: above zero the group is estimated too old."))
        tables = [f"<h3>By source and age band{html.escape(t)}</h3>" + _source_band_table(m),
                  f"<details><summary>Per-decade table{html.escape(t)}</summary>"
                  + _breakdown_table(m.get("by_decade", {}), [("n", "n"), ("mae", "MAE"),
                                                             ("mean_signed_error", "mean signed error"),
                                                             ("coverage", "coverage")], "true age") + "</details>"]
        for key, rows in by_group.items():
            tables.append(f"<details><summary>By {html.escape(key)}{html.escape(t)}</summary>"
                          + _breakdown_table(rows, [("n", "n"), ("mae", "MAE"), ("mean_signed_error", "mean signed "
                                                    "error"), ("coverage", "coverage")], key) + "</details>")
        sections += [f"<h2>{html.escape(n) if multi else 'Details'}</h2>", *figs, *tables]
    if gallery_items:
        sections += ["<h2>Largest errors</h2>",
                     _figure_html(plots.save_gallery(gallery_items, out / "gallery.png", "Largest age errors"),
                                  "Faces with the largest absolute errors: look for label noise, occlusion, "
                                  "pose or lighting that the model cannot handle.")]
    write_json_atomic(out / "metrics.json", {"task": "age", "models": metrics})
    return write_text_atomic(out / "report.html", _page("Age estimation report", _subtitle(metrics), sections))


def write_eye_report(out_dir: str | Path, metrics_by_model: Mapping[str, Mapping] | None,
                     arrays_by_model: Mapping[str, Mapping] | None,
                     gallery_items: Sequence[tuple[np.ndarray, str]] | None = None,
                     paired: Mapping[str, Mapping] | None = None) -> Path:
    """Figures, ``metrics.json`` and ``report.html`` for one or more eye models; returns the HTML path.

    ``arrays_by_model[name]`` holds ``y_true`` (1 = female), ``p_female`` and optionally ``groups``;
    ``paired`` the error-rate differences of ``evaluate.pipeline.paired_comparisons``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays_by_model = arrays_by_model or {}
    metrics = _ensure_metrics(metrics_by_model, arrays_by_model, _eye_from_arrays)
    names = list(metrics)
    sfx = _file_suffixes(names)
    multi = len(names) > 1
    sections = ["<h2>Metrics</h2>", _metrics_table(metrics, EYE_ROWS), _BEST_NOTE if multi else "",
                _paired_table(paired, "Error rate"), EYE_HOWTO]
    if multi:
        sections += ["<h2>Comparison</h2>",
                     _figure_html(plots.plot_comparison(metrics, ["accuracy", "balanced_accuracy", "roc_auc", "ece",
                                                                  "log_loss"], out / "comparison.png",
                                                        labels=dict((k, lab) for k, lab, _ in EYE_ROWS)),
                                  "Headline metrics side by side (ECE and log loss: lower is better).")]
    curves = {n: (a["y_true"], a["p_female"]) for n, a in arrays_by_model.items()}
    if curves:
        sections.append(_figure_html(plots.plot_roc(curves, out / "roc.png"),
                                     "ROC: the closer to the top-left corner, the better the ranking."))
    for n in names:
        m, a, s = metrics[n], arrays_by_model.get(n), sfx[n]
        t = f" — {n}" if multi else ""
        figs = []
        if a is not None:
            figs.append(_figure_html(plots.plot_reliability(a["y_true"], a["p_female"], out / f"reliability{s}.png",
                                                            title=f"Reliability{t}"),
                                     "Accuracy against confidence of the predicted class; the counts below show "
                                     "how many images fall in each bin."))
        if m.get("confusion_matrix"):
            figs.append(_figure_html(plots.plot_confusion(m["confusion_matrix"], out / f"confusion{s}.png",
                                                          title=f"Confusion matrix{t}"),
                                     "Rows: true label; columns: predicted label at P(female) >= 0.5."))
        by_group = m.get("by_group") or {}
        if any(len(rows) >= 2 for rows in by_group.values()):
            figs.append(_figure_html(plots.plot_accuracy_by_group(by_group, out / f"accuracy_by_group{s}.png",
                                                                  title=f"Accuracy by group{t}"),
                                     "Accuracy per group (colour vs grayscale crops, crop size, source)."))
        tables = [f"<details><summary>By {html.escape(key)}{html.escape(t)}</summary>"
                  + _breakdown_table(rows, [("n", "n"), ("accuracy", "accuracy"),
                                            ("balanced_accuracy", "balanced accuracy")], key) + "</details>"
                  for key, rows in by_group.items()]
        if "confusion" in m:
            c = m["confusion"]
            tables.append(f"<p class=meta>TN {c['tn']:,} · FP {c['fp']:,} · FN {c['fn']:,} · TP {c['tp']:,} "
                          "(positive = female)</p>")
        sections += [f"<h2>{html.escape(n) if multi else 'Details'}</h2>", *figs, *tables]
    if gallery_items:
        sections += ["<h2>Most confident mistakes</h2>",
                     _figure_html(plots.save_gallery(gallery_items, out / "gallery.png", "Most confident mistakes"),
                                  "Wrong predictions the model was most sure about: look for make-up, glasses, "
                                  "blur or mislabelled crops.")]
    write_json_atomic(out / "metrics.json", {"task": "eyes", "models": metrics})
    return write_text_atomic(out / "report.html", _page("Eye-region sex classifier report", _subtitle(metrics),
                                                        sections))
