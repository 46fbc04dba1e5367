"""``facelens evaluate``: rebuild a model's own split of a dataset, predict, measure, report.

The split is recomputed from the seed and strategy stored in the model (content-addressed,
see ``facelens.data.splits``), so ``--split test`` is the very test split the model never
saw during training, even on another machine. Several ``--model`` run on the same images
(the first model's split) and are printed side by side, with each later model's paired
difference from the first (bootstrap interval), so a gap can be told from sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelens.data.prepare import model_eye_sides, prepare_as_model
from facelens.data.readers import read_dataset
from facelens.errors import DatasetError, FacelensError
from facelens.evaluate.context import context_lines, context_pairs, context_summary
from facelens.evaluate.groups import record_groups
from facelens.evaluate.metrics import paired_difference, source_band_rows
from facelens.evaluate.overlap import in_sample_warning
from facelens.evaluate.scoring import compute_metrics, headline
from facelens.fileio import write_json_atomic
from facelens.infer.postprocess import MetaLike, decode_age, decode_eyes
from facelens.infer.predictor import load_predictor
from facelens.tasks import default_model_path, task_spec

SPLIT_CHOICES = ("test", "val", "train", "all")


def _model_label(path: Path, meta: dict, seen: set[str]) -> str:
    """The architecture, then the file name, then the whole path, then a number: the first that no
    earlier model took (runs keep their network in ``<run>/<arch>/model.pt``, so names alone collide
    and a later model's metrics would overwrite an earlier one's)."""
    arch = meta.get("arch", path.stem)
    candidates = [arch, f"{arch} ({path.name})", f"{arch} ({path})"]
    label = next((c for c in candidates if c not in seen), None)
    n = 2
    while label is None or label in seen:
        label, n = f"{arch} ({path}, #{n})", n + 1
    seen.add(label)
    return label


def default_model_for(task: str, data: list[str]) -> Path:
    """The shipped model ``facelens evaluate TASK`` scores when given none: for the eye task, the single-eye model
    when any ``data`` set holds ready-cut crops (only it reads them; it reads faces too), else the photo default."""
    def ready_cut(d: str) -> bool:
        try:
            return not read_dataset(d, task).faces
        except (FacelensError, ValueError):  # an unreadable set is reported once, by the evaluation itself
            return False

    return default_model_path(task, ready_cut=task_spec(task).crops_from_faces and any(ready_cut(d) for d in data))


def evaluate_models(task: str, models: list[Path], data: list[str], split: str = "test", report_dir: Path | None = None,
                    out: Path | None = None, backend: str = "auto", device: str = "cpu", log: Callable[[str], None] = print,
                    echo: Callable[[str], None] = print, context_check: int = 0, age_model: Path | None = None) -> dict:
    """Metrics of each model on ``split`` of ``data`` (see the module doc); ``context_check`` > 0 adds the
    context check (``evaluate.context``) on up to that many photos per source (age models); ``age_model``
    (eyes; default the shipped one) estimates the ages that pick a face's calibration band, as in ``predict``."""
    if split not in SPLIT_CHOICES:
        raise ValueError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if not models:
        raise ValueError("give at least one --model")
    evaluation = EVALUATIONS[task_spec(task).name]
    preds = [load_predictor(m, backend=backend, device=device) for m in models]
    for m, p in zip(models, preds, strict=True):
        if p.model_meta.task != task:
            raise ValueError(f"{m}: is a {p.model_meta.task!r} model, not {task!r}")
    warnings = [w for m, p in zip(models, preds, strict=True) if (w := in_sample_warning(m, p.meta, data, split))]
    for w in warnings:
        log(f"warning: {w}")
    sides = {model_eye_sides(p.model_meta) for p in preds}
    if len(sides) > 1:
        raise ValueError("these models cut faces differently (one crop of both eyes against one crop per eye), so their "
                         "test records differ: evaluate them one at a time")
    ref = preds[0].meta["split"]
    prep = prepare_as_model(preds[0].model_meta, data, log=log)
    chosen = np.arange(len(prep.records)) if split == "all" else np.flatnonzero(prep.splits == split)
    if len(chosen) == 0:
        raise DatasetError(f"the {split} split of {', '.join(data)} is empty")
    log(f"evaluating on the {split} split: {len(chosen)} images (split {ref['strategy']}, seed {ref['seed']})")
    metrics_by_model, arrays_by_model, gallery = {}, {}, []
    losses: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # label -> (record positions, per-image loss)
    seen: set[str] = set()
    for path, pred in zip(models, preds, strict=True):
        cs, pos = prep.model_crops(chosen, pred.model_meta)
        if cs.failures:
            log(f"{len(cs.failures)} images gave no crop and are not scored, e.g. {cs.failures[:3]}")
        outputs = pred(cs.crops)
        y = prep.targets[pos]
        groups = record_groups(task, prep, cs.crops, pos, age_model=age_model)
        m = compute_metrics(task, outputs, y, pred.model_meta, groups)
        m |= {"split": split, "n_images": int(len(chosen)), "n_scored": int(len(pos)), "model": str(path)}
        label = _model_label(path, pred.meta, seen)
        metrics_by_model[label] = m
        scored = evaluation.score(outputs, y, cs.crops, groups, pred.model_meta)
        arrays_by_model[label] = scored.arrays
        losses[label] = (pos, scored.loss)
        gallery = gallery or scored.gallery  # the first model's worst cases
        echo(f"{label}: {headline(task, m)}")
        if evaluation.details is not None:
            echo(evaluation.details(m))
        if evaluation.context_check and context_check > 0:
            m["context_check"] = run_context_check(pred, prep, chosen, context_check, log)
            for line in context_lines(m["context_check"]):
                echo(line)
    result = {"task": task, "split": split, "data": data, "models": metrics_by_model, "warnings": warnings}
    if len(losses) > 1:
        result["paired"] = paired_comparisons(losses, prep.sources)
        for label, cmp in result["paired"].items():
            echo(_paired_line(task, label, cmp))
    if out:
        write_json_atomic(out, result)
        log(f"metrics written to {out}")
    if report_dir:
        from facelens.evaluate import report as rep

        writer = getattr(rep, evaluation.report_writer)
        html = writer(report_dir, metrics_by_model, arrays_by_model, gallery_items=gallery,
                      paired=result.get("paired"))
        log(f"report written to {html}")
    return result


def run_context_check(pred, prep, chosen: np.ndarray, per_source: int, log: Callable[[str], None]) -> dict:
    """``evaluate.context`` on up to ``per_source`` images of each source among ``chosen`` (seeded pick)."""
    rng = np.random.default_rng(0)
    src = np.asarray(prep.sources)[chosen]
    pick = np.sort(np.concatenate([rng.permutation(chosen[src == s])[:per_source] for s in sorted(set(src.tolist()))]))
    on_photo, on_chip = context_pairs(pred, [prep.records[i].path for i in pick], log)
    return context_summary(on_photo, on_chip, prep.targets[pick], [prep.sources[i] for i in pick])


def age_band_table(m: dict) -> str:
    """Plain-text MAE (bias) per source and true-age band, the cross-source view of one model."""
    rows = source_band_rows(m)
    bands = list(dict.fromkeys(b for r in rows.values() for b in r))
    width = max(len(s) for s in rows) + 2
    lines = ["  MAE (bias) by true age".ljust(width + 2) + "".join(b.rjust(14) for b in bands)]
    for src, r in rows.items():
        cells = "".join((f"{r[b]['mae']:.1f} ({r[b]['mean_signed_error']:+.1f})" if b in r else "-").rjust(14)
                        for b in bands)
        lines.append(f"  {src.ljust(width)}" + cells)
    return "\n".join(lines)


def paired_comparisons(losses: dict[str, tuple[np.ndarray, np.ndarray]], sources: list[str]) -> dict:
    """Each model after the first against the first, on the images both scored (overall and per source).

    The per-image loss is the absolute age error (so the difference is one of MAE) or, for eyes,
    0/1 misclassification (a difference of error rate).
    """
    (ref_label, (ref_pos, ref_loss)), *others = losses.items()
    out = {}
    for label, (pos, loss) in others:
        common, i_ref, i_other = np.intersect1d(ref_pos, pos, return_indices=True)
        if len(common) < 2:  # nothing to pair; the side-by-side metrics still stand
            continue
        a, b = ref_loss[i_ref], loss[i_other]
        src = np.array([sources[i] for i in common])
        entry = {"against": ref_label, "all": paired_difference(a, b)}
        if len(set(src)) > 1:
            entry["by_source"] = {s: paired_difference(a[src == s], b[src == s]) for s in sorted(set(src))
                                  if np.sum(src == s) > 1}
        out[label] = entry
    return out


def _paired_line(task: str, label: str, cmp: dict) -> str:
    what, unit = EVALUATIONS[task_spec(task).name].loss

    def fmt(d: dict) -> str:
        return f"{d['difference']:+.3f}{unit} [95%: {d['low']:+.3f}, {d['high']:+.3f}], n = {d['n']}"

    parts = [fmt(cmp["all"])] + [f"{s}: {fmt(d)}" for s, d in cmp.get("by_source", {}).items()]
    return f"{label} minus {cmp['against']}, {what} on the same images: " + " | ".join(parts)


@dataclass(frozen=True)
class Scored:
    """One model's outputs on the chosen images, as the report and the paired comparison use them."""

    arrays: dict  # what ``evaluate.report`` plots: true values, estimates, groups
    loss: np.ndarray  # per-image loss (``paired_comparisons``)
    gallery: list[tuple[np.ndarray, str]]  # the worst cases, with a caption each


def _score_age(outputs: np.ndarray, y: np.ndarray, crops: np.ndarray, groups: dict, meta: MetaLike) -> Scored:
    """Absolute age error per image; the gallery shows the largest errors."""
    value, low, high = decode_age(outputs, meta)
    abs_err = np.abs(value - y)
    worst = np.argsort(-abs_err)[:12]
    return Scored({"y_true": y, "y_pred": value, "low": low, "high": high, "groups": groups}, abs_err,
                  [(crops[i], f"true {y[i]:.0f}, pred {value[i]:.0f}") for i in worst])


def _score_eyes(outputs: np.ndarray, y: np.ndarray, crops: np.ndarray, groups: dict, meta: MetaLike) -> Scored:
    """0/1 misclassification per crop; the gallery shows the most confident mistakes."""
    p = decode_eyes(outputs, meta)
    wrong = (p >= 0.5) != (y >= 0.5)
    conf_wrong = np.flatnonzero(wrong)
    conf_wrong = conf_wrong[np.argsort(-np.abs(p[conf_wrong] - 0.5))][:12]
    names = {1: "female", 0: "male"}
    return Scored({"y_true": y, "p_female": p, "groups": groups}, wrong.astype(np.float64),
                  [(crops[i], f"true {names[int(y[i])]}, P(female) {p[i]:.2f}") for i in conf_wrong])


@dataclass(frozen=True)
class TaskEvaluation:
    """What ``evaluate_models`` does differently per task, beyond ``scoring`` and ``groups``."""

    score: Callable[[np.ndarray, np.ndarray, np.ndarray, dict, MetaLike], Scored]
    #: What the paired difference is a difference of (the mean per-image loss), and its unit.
    loss: tuple[str, str]
    #: Name of the HTML report writer in ``evaluate.report`` (imported only when a report is asked for).
    report_writer: str
    #: Printed under each model's headline (a plain-text table), if any.
    details: Callable[[dict], str] | None = None
    #: Whether ``--context-check`` applies (the same face cropped from its photo and from a tight chip).
    context_check: bool = False


#: Per task (``facelens.tasks``); ``tests/test_tasks.py`` checks every task has one.
EVALUATIONS: dict[str, TaskEvaluation] = {
    "age": TaskEvaluation(_score_age, ("MAE", " years"), "write_age_report", details=age_band_table,
                          context_check=True),
    "eyes": TaskEvaluation(_score_eyes, ("error rate", ""), "write_eye_report"),
}
