"""Hugging Face style model cards (YAML front matter + Markdown) for facelens models.

A shipped model must say what it is for, what it must not be used for, what data it learned
from under which terms, and how well it does on data it never saw, broken down by age and
group so that biases are visible. Everything numeric comes from ``meta`` / ``metrics``: a
card can never describe numbers that the model did not produce.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelens.fileio import write_text_atomic
from facelens.tasks import AGE, EYES, TASKS, task_spec

#: Title, tags, metric list and "what it returns" of each task's card are the task's data (``facelens.tasks``);
#: the sections written from metrics and the out-of-scope / limitation texts are in ``CARD_TEXTS`` below.
TASK_TITLES = {name: spec.title for name, spec in TASKS.items()}
# (metric key, model-index type, readable name)
AGE_METRICS = AGE.card_metrics
EYE_METRICS = EYES.card_metrics

LICENSE_NOTE = ("The code is MIT licensed; these weights were learned from data released for research use only, "
                "so they inherit the most restrictive of the training data's terms (see Training data).")


def _q(s: Any) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(str(s), ensure_ascii=False)


def format_value(v: Any) -> str:
    """How a metric value is shown in cards and reports: n/a, thousands separators, 4 significant decimals."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return format_value(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _datasets(meta: Mapping) -> list[dict]:
    """Dataset descriptions from ``meta['datasets']``, else looked up from the training data paths."""
    if meta.get("datasets"):
        return [dict(d) if isinstance(d, Mapping) else {"name": str(d)} for d in meta["datasets"]]
    from facelens.data.terms import describe_dataset

    return [describe_dataset(p) for p in meta.get("data") or []]


def _metric_defs(task: str) -> tuple[tuple[str, str, str], ...]:
    return task_spec(task).card_metrics


def model_title(meta: Mapping) -> str:
    """What the model does, for its card: the task's title, and for eye models how a face is cut for them."""
    task = str(meta.get("task", "age"))
    title = TASK_TITLES.get(task, task)
    if task_spec(task).crops_from_faces:
        both = bool((meta.get("eye_crop") or {}).get("both_eyes"))
        title += " (one crop holding both eyes)" if both else " (one crop per eye)"
    return title


def _front_matter(meta: Mapping, metrics: Mapping, task: str, datasets: list[dict]) -> str:
    spec = task_spec(task)
    name = meta.get("name") or f"facelens-{task}"
    tags = ["facelens", "pytorch", "onnx", "face", *spec.card_tags]
    tags += [str(t) for t in meta.get("tags") or [] if str(t) not in tags]
    lines = ["---", "library_name: facelens", "license: other",
             f"license_name: {_q(meta.get('license_name', 'research-only'))}",
             f"license_note: {_q(meta.get('license_note', LICENSE_NOTE))}"]
    if spec.pipeline_tag:
        lines.append(f"pipeline_tag: {spec.pipeline_tag}")
    lines.append("tags:")
    lines += [f"- {_q(t)}" for t in tags]
    if datasets:
        lines.append("datasets:")
        lines += [f"- {_q(d.get('name', d.get('path', 'unknown')))}" for d in datasets]
    present = [(k, t, lab) for k, t, lab in _metric_defs(task) if isinstance(metrics.get(k), int | float)]
    if present:
        lines.append("metrics:")
        lines += [f"- {t}" for _, t, _ in present]
        ds_name = ", ".join(d.get("name", "unknown") for d in datasets) or "unknown"
        lines += ["model-index:", f"- name: {_q(name)}", "  results:", "  - task:",
                  f"      type: {spec.model_index_type}",
                  f"      name: {_q(model_title(meta))}", "    dataset:", f"      name: {_q(ds_name)}",
                  "      type: facelens-split", f"      split: {_q(metrics.get('split', 'test'))}", "    metrics:"]
        for k, t, lab in present:
            lines += [f"    - type: {t}", f"      value: {round(float(metrics[k]), 4)}", f"      name: {_q(lab)}"]
    lines.append("---")
    return "\n".join(lines)


def _details(meta: Mapping, task: str) -> str:
    tr = meta.get("training") or {}
    rows: list[tuple[str, Any]] = [("task", model_title(meta)), ("architecture", meta.get("arch")),
                                   ("output head", meta.get("head")),
                                   ("input size", f"{meta['input_size']}x{meta['input_size']} px RGB"
                                    if meta.get("input_size") else None),
                                   ("version", meta.get("version") or meta.get("facelens_version")),
                                   ("pipeline", meta.get("pipeline")), ("created", meta.get("created"))]
    secs = tr.get("train_seconds", meta.get("train_seconds"))
    if secs is not None:
        rows.append(("training time", f"{float(secs) / 60:.1f} min on {tr.get('device', 'cpu')}"
                     + (f" ({tr['cpu']}, {tr.get('threads', '?')} threads)" if tr.get("cpu") else "")))
    if tr.get("epochs_run") is not None:
        rows.append(("epochs", f"{tr['epochs_run']} (best epoch {tr.get('best_epoch', '?')})"))
    if meta.get("temperature") is not None:
        rows.append(("calibration",
                     f"temperature scaling, T = {float(meta['temperature']):.3f} (fitted on validation)"))
    if meta.get("interval_scale") is not None:
        rows.append(("calibration", f"{float(meta.get('interval', 0.8)):.0%} interval scaled by "
                                    f"{float(meta['interval_scale']):.3f} (fitted on validation)"))
    if meta.get("residual_q") is not None:
        rows.append(("calibration", "80% interval from validation residual quantiles (split conformal)"))
    if meta.get("tta"):
        rows.append(("test-time augmentation", meta["tta"]))
    if meta.get("precision"):
        parity = (meta.get("export") or {}).get("parity_max_abs_diff")
        rows.append(("numeric precision", meta["precision"] + (f" (ONNX export, max abs output difference to "
                                                               f"PyTorch {parity:.2g} on random crops)" if parity is not None else "")))
    if q := meta.get("quantization"):
        rows.append(("quantisation", f"{q.get('format', 'static QDQ')}, activation ranges by {q.get('calibration', 'minmax')} "
                                     f"over {q.get('calibration_crops', '?')} training crops; "
                                     f"{len(q.get('float32_nodes', []))} nodes kept in float32 (stem, head)"))
    if answer_map := meta.get("age_answer_map"):
        rows.append(("answer map", f"age = {answer_map[0]:+.3f} + {answer_map[1]:.4f} x the int8 answer (and the interval's "
                                   "ends): onto the float network's answers, fitted on the calibration crops, no labels"))
    split = meta.get("split") or {}
    if split:
        rows.append(("data split", f"{split.get('strategy')} (seed {split.get('seed')}, fractions "
                                   f"{split.get('fractions')})"))
    if meta.get("counts"):
        rows.append(("images", ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())))
    rows = [(k, v) for k, v in rows if v is not None]
    return "## Model details\n\n" + task_spec(task).returns + "\n\n" + _md_table(["", ""], rows)


def _intended(task: str, meta: Mapping) -> str:
    if meta.get("intended_use"):
        return "## Intended use\n\n" + str(meta["intended_use"])
    spec = task_spec(task)
    what, aggregate = spec.estimates, spec.aggregate_example
    return ("## Intended use\n\n"
            f"- Research, teaching and aggregate statistics: studying how well {what} can be estimated from images, "
            "and measuring the errors and biases of such estimates.\n"
            f"- Aggregate analysis of image collections, e.g. {aggregate}, with the uncertainty shown.\n"
            "- Every output is an estimate from appearance with a stated uncertainty, not a fact about a person.")


def out_of_scope_items(task: str) -> list[str]:
    """What the model must not be used for (Markdown bold marks the headline of each item)."""
    return [*OUT_OF_SCOPE, *CARD_TEXTS[task_spec(task).name].out_of_scope]


#: What no facelens model may be used for, whatever its task.
OUT_OF_SCOPE = (
    "**No decisions about individuals.** Do not use the outputs to grant or deny access, services, employment, "
    "credit, insurance, benefits or entry, or for age verification with legal effect.",
    "**Not for identity verification** or recognition: the model does not and cannot tell who a person is.",
    "**No sensitive inferences.** Sex and age estimates must not be used to infer sexual orientation, "
    "criminality, ethnicity or emotion; the model does none of these and must not be extended to.",
    "No surveillance, tracking or profiling of people, and no use on people who have not agreed to it.",
)


def _out_of_scope(task: str) -> str:
    return "## Out-of-scope use\n\n" + "\n".join(f"- {i}" for i in out_of_scope_items(task))


def card_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The model card in brief, as plain JSON: what the service shows under /v1/models."""
    task = meta["task"]
    metrics = meta.get("metrics", {})
    return {
        "title": model_title(meta),
        "training_data": [{"name": d.get("name"), "terms": d.get("terms")} for d in _datasets(meta)],
        "test_split": {"n": metrics.get("n"), "strategy": meta.get("split", {}).get("strategy"),
                       "seed": meta.get("split", {}).get("seed")},
        "out_of_scope": [i.replace("**", "") for i in out_of_scope_items(task)],
        "estimates_only": "Every output is an estimate from appearance with a stated uncertainty, "
                          "not a fact about a person.",
    }


def _training_data(datasets: list[dict], meta: Mapping) -> str:
    if not datasets:
        return "## Training data\n\nNot recorded. Check the data's own licence before sharing this model."
    parts = ["## Training data\n"]
    for d in datasets:
        parts.append(f"- **{d.get('name', 'unknown')}**"
                     + (f" — {d['citation']}" if d.get("citation") else "")
                     + (f"\n  - labels: {d['labels']}" if d.get("labels") else "")
                     + f"\n  - terms: {d.get('terms', 'unknown: check the data licence')}")
    parts.append("\n" + str(meta.get("license_note", LICENSE_NOTE)))
    return "\n".join(parts)


def _evaluation(task: str, metrics: Mapping) -> str:
    if not metrics:
        return "## Evaluation\n\nNo evaluation metrics were recorded for this model."
    split = metrics.get("split", "test")
    n = metrics.get("n_scored", metrics.get("n"))
    out = [f"## Evaluation\n\nMeasured on the **{split}** split ({format_value(n)} images), which was not used for training, "
           "early stopping or calibration."]
    rows = [(lab, metrics[k]) for k, _, lab in _metric_defs(task) if k in metrics]
    out.append(_md_table(["metric", "value"], rows))
    texts = CARD_TEXTS[task_spec(task).name]
    for section in texts.sections:
        out += section(metrics)
    for key, rows_by in (metrics.get("by_group") or {}).items():
        (h1, k1), (h2, k2) = texts.group_columns
        table = _md_table([key, "n", h1, h2], [[v, r["n"], r[k1], r.get(k2)] for v, r in rows_by.items()])
        out.append(f"### By {key}\n\n{table}")
    for src, sm in (metrics.get("by_source") or {}).items():
        out.append(f"### Source: {src}\n\n" + _md_table(["metric", "value"],
                                                         [(lab, sm[k]) for k, _, lab in _metric_defs(task) if k in sm]))
    return "\n\n".join(out)


def _by_decade(metrics: Mapping) -> list[str]:
    """Age: MAE and bias per true-age decade."""
    out = []
    if metrics.get("by_decade"):
        has_cov = any("coverage" in r for r in metrics["by_decade"].values())
        hdr = ["true age", "n", "MAE", "mean signed error"] + (["coverage"] if has_cov else [])
        rows = [[d, r["n"], r["mae"], r["mean_signed_error"]] + ([r.get("coverage")] if has_cov else [])
                for d, r in metrics["by_decade"].items()]
        out.append("### By true-age decade\n\n" + _md_table(hdr, rows))
    return out


def _by_source_and_age_band(metrics: Mapping) -> list[str]:
    """Age: MAE (bias) per source and true-age band, where a model reading the photo's source shows."""
    out = []
    if metrics.get("by_age_band"):
        from facelens.evaluate.metrics import source_band_rows

        rows_by_src = source_band_rows(metrics)
        bands = list(dict.fromkeys(b for r in rows_by_src.values() for b in r))
        out.append("### By source and true-age band: MAE (bias), n\n\nBias is the mean of predicted minus true age "
                   "(+ = too old). A model that reads a photo's source instead of the face shows up here.\n\n"
                   + _md_table(["source", *bands], [[src, *(_band_cell(r.get(b), "mae", "mean_signed_error", "{:+.1f}")
                                                           for b in bands)] for src, r in rows_by_src.items()]))
    return out


def _whole_faces(metrics: Mapping) -> list[str]:
    """Eyes: accuracy and ECE of whole faces (both eyes combined) per source and age band."""
    out = []
    if metrics.get("faces"):
        faces = metrics["faces"]
        rows_by_src = {"all": faces} | (faces.get("by_source") or {})
        bands = list(dict.fromkeys(b for r in rows_by_src.values() for b in (r.get("by_group") or {}).get("age_band", {})))
        out.append("### Whole faces (both eyes combined, as `predict` answers): accuracy, ECE by source and age band"
                   "\n\nEach cell: accuracy (ECE), n faces. ECE is biased upwards on few faces: the last "
                   "table gives the ECE a perfectly calibrated model would show at each n.\n\n"
                   + _md_table(["source", "all ages", *bands],
                               [[src, _band_cell(r, "accuracy", "ece", "{:.3f}"),
                                 *(_band_cell((r.get("by_group") or {}).get("age_band", {}).get(b), "accuracy", "ece", "{:.3f}")
                                   for b in bands)] for src, r in rows_by_src.items()]))
        out.append(_ece_floor_table(rows_by_src, bands))
    return out


def _confusion(metrics: Mapping) -> list[str]:
    """Eyes: the confusion matrix of single crops."""
    out = []
    if metrics.get("confusion"):
        c = metrics["confusion"]
        out.append("### Confusion matrix (positive = female)\n\n"
                   + _md_table(["", "predicted male", "predicted female"],
                               [["true male", c["tn"], c["fp"]], ["true female", c["fn"], c["tp"]]]))
    return out


def _ece_floor_table(rows_by_src: dict[str, dict], bands: list[str]) -> str:
    """Observed ECE against its noise floor, per source and band (``evaluate.metrics.ece_noise_floor``)."""
    def cell(r: dict | None) -> str:
        if not r or r.get("ece_floor") is None:
            return "-"
        return f"{r['ece']:.3f} vs {r['ece_floor']:.3f} (p {r['ece_p_value']:.2f})"

    return ("#### ECE against its noise floor\n\nEach cell: observed ECE vs the mean ECE of a perfectly calibrated "
            "model with the same probabilities and n (consistency resampling, 1,000 draws), and p, the share of "
            "those draws at least as large as observed: p < 0.05 marks miscalibration that noise does not explain."
            "\n\n" + _md_table(["source", "all ages", *bands],
                               [[src, cell(r), *(cell((r.get("by_group") or {}).get("age_band", {}).get(b)) for b in bands)]
                                for src, r in rows_by_src.items()]))


def _band_cell(row: Mapping | None, main: str, second: str, fmt: str) -> str:
    """'4.1 (+0.3), n=120' from a breakdown row; '-' where the band has no images."""
    if not row or row.get(main) is None:
        return "-"
    extra = f" ({fmt.format(row[second])})" if row.get(second) is not None else ""
    return f"{row[main]:.3g}{extra}, n={row['n']}" if main != "mae" else f"{row[main]:.1f}{extra}, n={row['n']}"


def _limitations(task: str, metrics: Mapping) -> str:
    items: list[str] = []
    dec = metrics.get("by_decade") or {}
    big = {d: r for d, r in dec.items() if r.get("n", 0) >= 5}
    if big:
        worst = max(big, key=lambda d: big[d]["mae"])
        items.append(f"Errors depend on age: the largest MAE is {big[worst]['mae']:.1f} years for true ages {worst} "
                     f"(n = {big[worst]['n']}).")
        biased = max(big, key=lambda d: abs(big[d]["mean_signed_error"]))
        b = big[biased]["mean_signed_error"]
        items.append(f"Estimates are biased towards the middle of the training ages: for true ages {biased} the mean "
                     f"signed error is {b:+.1f} years ({'too old' if b > 0 else 'too young'}).")
        low_cov = [d for d, r in big.items() if r.get("coverage") is not None and r["coverage"] < 0.7]
        if low_cov:
            items.append("The 80% interval covers fewer than 70% of true ages for " + ", ".join(low_cov) + ".")
    texts = CARD_TEXTS[task_spec(task).name]
    for key, rows in (metrics.get("by_group") or {}).items():
        field = task_spec(task).primary_metric
        rows = {v: r for v, r in rows.items() if r.get("n", 0) >= 5 and r.get(field) is not None}
        if len(rows) >= 2:
            lo = min(rows, key=lambda v: rows[v][field])
            hi = max(rows, key=lambda v: rows[v][field])
            items.append(f"By {key}: {field} ranges from {rows[lo][field]:.3g} ({lo}, n = {rows[lo]['n']}) to "
                         f"{rows[hi][field]:.3g} ({hi}, n = {rows[hi]['n']}).")
    if texts.ece_limitation and isinstance(metrics.get("ece"), float):
        items.append(f"Calibration on the evaluation split: ECE {metrics['ece']:.3f}; probabilities near 0.5 mean "
                     "the model cannot tell.")
    items += texts.limitations
    items.append("Performance on photos unlike the training data (other cameras, ages, populations, crops) is "
                 "unknown: measure it on your own data before relying on it.")
    return "## Limitations and biases\n\n" + "\n".join(f"- {i}" for i in items)


@dataclass(frozen=True)
class CardTexts:
    """The parts of a task's model card that are prose or code rather than the spec's data (``facelens.tasks``)."""

    #: Out-of-scope uses beyond ``OUT_OF_SCOPE``, which holds for every task.
    out_of_scope: tuple[str, ...]
    #: Known limitations, listed after those the metrics show.
    limitations: tuple[str, ...]
    #: Evaluation sections written from the metrics (each gives zero or more Markdown blocks), in order.
    sections: tuple[Callable[[Mapping], list[str]], ...]
    #: Columns of the per-group tables after the group and n: (header, metric key), twice.
    group_columns: tuple[tuple[str, str], tuple[str, str]]
    #: Whether the limitations quote the calibration error (ECE) of a probability the task returns.
    ece_limitation: bool = False


#: Per task (``facelens.tasks.TASKS``): ``tests/test_tasks.py`` checks every task has its texts.
CARD_TEXTS: dict[str, CardTexts] = {
    "age": CardTexts(
        out_of_scope=("Not for estimating the age of children for child-safety or legal-age decisions: the errors "
                      "are years wide.",),
        limitations=("Age labels in public datasets are annotated from photos and noisy; apparent age differs from "
                     "real age with make-up, lighting, expression and image quality.",
                     "The training data under-represents some ages and groups; results for them are less reliable."),
        sections=(_by_decade, _by_source_and_age_band),
        group_columns=(("MAE", "mae"), ("mean signed error", "mean_signed_error")),
    ),
    "eyes": CardTexts(
        out_of_scope=(
            "**It predicts a binary label from appearance, which does not capture gender identity.** Never use it "
            "to tell anyone what their gender is, or to question it.",
            "**Make-up shortcut risk:** in the training data many female eye crops show make-up, so the model may "
            "partly detect make-up rather than anatomy; expect errors on made-up men and bare-faced women.",
        ),
        limitations=("The eye region carries less information than a whole face (a single eye least); glasses, blur, "
                     "low resolution and grayscale images reduce accuracy.",
                     "The eye datasets have no person ids; related crops of one person can only be kept apart "
                     "approximately, so measured accuracy may still be optimistic.",
                     "The label is a binary female/male annotation from web data; it excludes intersex and "
                     "non-binary people and may itself be wrong."),
        sections=(_whole_faces, _confusion),
        group_columns=(("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy")),
        ece_limitation=True,
    ),
}


def _reproduce(meta: Mapping) -> str:
    cmds = meta.get("commands") or meta.get("reproduce") or []
    if isinstance(cmds, str):
        cmds = [cmds]
    if not cmds:
        return "## How to reproduce\n\nThe training commands were not recorded for this model."
    return "## How to reproduce\n\n```bash\n" + "\n".join(str(c) for c in cmds) + "\n```"


def _further_evaluations(meta: Mapping) -> str:
    """Measurements made after training (e.g. out of domain), each with its command: ``meta['evaluations']``."""
    evals = meta.get("evaluations") or []
    if not evals:
        return ""
    parts = ["## Further evaluations"]
    for ev in evals:
        parts.append(f"### {ev['title']}\n\n{ev.get('note', '')}".rstrip())
        rows = [(k, v) for k, v in ev.get("metrics", {}).items()]
        parts.append(_md_table(["measure", "value"], rows))
        if ev.get("command"):
            parts.append(f"Reproduce: `{ev['command']}`")
    return "\n\n".join(parts)


def render_model_card(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """Markdown model card with YAML front matter, from a model's metadata and evaluation metrics.

    ``meta['task']`` ("age" or "eyes") selects the wording; ``metrics`` defaults to
    ``meta['metrics']`` (as stored by training). ``meta['datasets']`` (dicts with name,
    citation, labels, terms) or else ``meta['data']`` paths describe the training data;
    ``meta['commands']`` lists the commands that reproduce the model.
    """
    task = str(meta.get("task", "age"))
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected {' or '.join(repr(t) for t in TASKS)}")
    metrics = dict(metrics if metrics is not None else meta.get("metrics") or {})
    datasets = _datasets(meta)
    name = meta.get("name") or f"facelens-{task}"
    summary = (f"# {name}\n\nA facelens model for {model_title(meta)}. Outputs are statistical estimates from "
               "appearance, with uncertainty, for research and aggregate use only.")
    sections = [_front_matter(meta, metrics, task, datasets), summary, _details(meta, task), _intended(task, meta),
                _out_of_scope(task), _training_data(datasets, meta), _evaluation(task, metrics),
                _further_evaluations(meta), _limitations(task, metrics), _reproduce(meta)]
    sections = [s for s in sections if s]
    return "\n\n".join(sections) + "\n"


def write_model_card(path: str | Path, meta: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> Path:
    """Render the card and write it atomically (``facelens.fileio.atomic_path``)."""
    return write_text_atomic(path, render_model_card(meta, metrics))
