"""Leave-one-source-out: how well does an age recipe carry to a photo source it never saw?

An in-source test split cannot show that a model reads *where a photo comes from*: its test
photos come from the same sources as its training photos. This protocol trains the same recipe
once on every source (the in-source twin) and once without each source S, then scores both on
S's test split (the content-addressed split is the same image set in every run). The ratio
``MAE(never saw S) / MAE(trained on S)`` is what it measures; a short recipe (small input, few
steps) is fine as long as the twin uses it too. Every run is a normal ``facelens train`` folder,
so a killed protocol resumes where it stopped.

    OUT/all/                 the twin, trained on every source
    OUT/without-<source>/    one per source
    OUT/cross_source.json    per source: in-source and left-out metrics, MAE ratio, bias by age band
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
    for n, src in zip(names, base.data, strict=True):
        scores = {}
        for role, run in (("in_source", "all"), ("left_out", f"without-{n}")):
            res = evaluate_models("age", [out / run / arch / "model.pt"], [src], split="test", log=log, echo=lambda m: None)
            scores[role] = next(iter(res["models"].values()))
        ratio = scores["left_out"]["mae"] / scores["in_source"]["mae"]
        table[n] = {"in_source": _brief(scores["in_source"]), "left_out": _brief(scores["left_out"]), "mae_ratio": ratio}
    result = {"recipe": {k: v for k, v in vars(base).items() if k not in ("data", "out")}, "sources": names,
              "by_source": table}
    write_json_atomic(out / "cross_source.json", result)
    for line in table_lines(result):
        echo(line)
    return result


def _brief(m: dict) -> dict:
    return {"n": m["n"], "mae": m["mae"], "rmse": m["rmse"], "mean_signed_error": m["mean_signed_error"],
            "by_age_band": m["by_age_band"]}


def table_lines(result: dict) -> list[str]:
    """A Markdown table: per source, in-source vs left-out MAE, their ratio and the left-out bias by age band."""
    bands = list(dict.fromkeys(b for r in result["by_source"].values() for b in r["left_out"]["by_age_band"]))
    lines = ["| source (test split) | n | MAE, trained on it | MAE, never saw it | ratio | " +
             " | ".join(f"bias {b}, never saw it" for b in bands) + " |",
             "|---|---|---|---|---|" + "---|" * len(bands)]
    for name, r in result["by_source"].items():
        lo = r["left_out"]["by_age_band"]
        cells = " | ".join(f"{lo[b]['mean_signed_error']:+.1f}" if b in lo else "-" for b in bands)
        lines.append(f"| {name} | {r['in_source']['n']} | {r['in_source']['mae']:.2f} | {r['left_out']['mae']:.2f} | "
                     f"{r['mae_ratio']:.2f} | {cells} |")
    return lines
