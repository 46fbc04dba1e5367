"""Leave-one-source-out: how well does a training recipe (age or eyes) carry to a photo source it never saw?

An in-source test split cannot show that a model reads *where a photo comes from*: its test
photos come from the same sources as its training photos. This protocol trains the same recipe
once on every source (the in-source twin) and once without each source S, then scores both on
S's test split (the content-addressed split is the same image set in every run). The ratio
``error(never saw S) / error(trained on S)`` is what it measures (age: MAE; eyes: the error rate
of whole faces, both eyes combined as ``predict`` answers, or of the crops for a crop-only
source such as the Kaggle eye set); a short recipe (small input, few
steps) is fine as long as the twin uses it too. Every run is a normal ``facelens train`` folder,
so a killed protocol resumes where it stopped.

    OUT/all/                 the twin, trained on every source
    OUT/without-<source>/    one per source
    OUT/cross_source.json    per source: in-source and left-out metrics, error ratio, by age band
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from facelens.data.prepare import source_name
from facelens.evaluate.pipeline import evaluate_models
from facelens.fileio import write_json_atomic
from facelens.train.config import TrainRequest
from facelens.train.runner import run_training


def leave_one_source_out(base: TrainRequest, out: Path, log: Callable[[str], None] = print,
                         echo: Callable[[str], None] = print) -> dict:
    """Train the twin and one run per left-out source with ``base``'s options (its ``data`` names the
    sources, its ``out`` is ignored), score them on each source's test split and write the table."""
    if len(base.data) < 2:
        raise ValueError("leave-one-source-out needs at least two --data sources")
    names = [source_name(d) for d in base.data]
    if len(set(names)) != len(names):
        raise ValueError(f"the sources need distinct names, got {names}")
    arch = base.archs[0]
    runs = {"all": base.data} | {f"without-{n}": [d for d in base.data if d != src] for n, src in zip(names, base.data, strict=True)}
    for run, data in runs.items():
        model = out / run / arch / "model.pt"
        if model.exists():
            log(f"{run}: done before ({model})")
            continue
        log(f"{run}: training on {', '.join(source_name(d) for d in data)}")
        run_training(replace(base, archs=[arch], data=data, out=str(out / run), resume=True), log=log)
    table = {}
    brief = _brief_age if base.task == "age" else _brief_eyes
    for n, src in zip(names, base.data, strict=True):
        scores = {}
        for role, run in (("in_source", "all"), ("left_out", f"without-{n}")):
            res = evaluate_models(base.task, [out / run / arch / "model.pt"], [src], split="test", log=log,
                                  echo=lambda m: None)
            scores[role] = brief(next(iter(res["models"].values())))
        ratio = _ratio(scores["left_out"]["error"], scores["in_source"]["error"])
        table[n] = scores | {"error_ratio": ratio} | ({"mae_ratio": ratio} if base.task == "age" else {})
    result = {"task": base.task, "recipe": {k: v for k, v in vars(base).items() if k not in ("data", "out")},
              "sources": names, "by_source": table}
    write_json_atomic(out / "cross_source.json", result)
    for line in table_lines(result):
        echo(line)
    return result


def _ratio(left_out: float, in_source: float) -> float | None:
    """``left_out / in_source``; None when the in-source error is 0 (a ratio of nothing)."""
    return left_out / in_source if in_source > 0 else None


def _brief_age(m: dict) -> dict:
    return {"n": m["n"], "error": m["mae"], "mae": m["mae"], "rmse": m["rmse"],
            "mean_signed_error": m["mean_signed_error"], "by_age_band": m["by_age_band"]}


def _brief_eyes(m: dict) -> dict:
    """Whole faces when the source has faces (what ``predict`` answers), else its crops."""
    faces = m.get("faces")
    scored, unit = (faces, "faces") if faces else (m, "crops")
    bands = ((scored.get("by_group") or {}).get("age_band")) or {}
    return {"n": scored["n"], "unit": unit, "error": 1.0 - scored["accuracy"], "accuracy": scored["accuracy"],
            "ece": scored["ece"], "by_age_band": {b: {"n": r["n"], "accuracy": r["accuracy"], "ece": r["ece"]}
                                                  for b, r in bands.items()}}


def table_lines(result: dict) -> list[str]:
    """A Markdown table: per source, in-source vs left-out error, their ratio and the left-out model by age band
    (age: bias; eyes: accuracy)."""
    age = result.get("task", "age") == "age"
    what, band_what = ("MAE", "bias") if age else ("error rate", "accuracy")
    bands = list(dict.fromkeys(b for r in result["by_source"].values() for b in r["left_out"]["by_age_band"]))
    lines = [f"| source (test split) | n | {what}, trained on it | {what}, never saw it | ratio | " +
             " | ".join(f"{band_what} {b}, never saw it" for b in bands) + " |",
             "|---|---|---|---|---|" + "---|" * len(bands)]
    for name, r in result["by_source"].items():
        lo = r["left_out"]["by_age_band"]
        key, fmt = ("mean_signed_error", "{:+.1f}") if age else ("accuracy", "{:.3f}")
        cells = " | ".join(fmt.format(lo[b][key]) if b in lo else "-" for b in bands)
        ratio = r.get("error_ratio", r.get("mae_ratio"))
        n = f"{r['in_source']['n']}" + ("" if age else f" {r['in_source']['unit']}")
        lines.append(f"| {name} | {n} | {_num(r['in_source'].get('error', r['in_source'].get('mae')), age)} | "
                     f"{_num(r['left_out'].get('error', r['left_out'].get('mae')), age)} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {cells} |")
    return lines


def _num(v: float, age: bool) -> str:
    return f"{v:.2f}" if age else f"{v:.3f}"
