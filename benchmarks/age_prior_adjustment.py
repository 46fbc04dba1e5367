"""How much of the training sample's age prior to take out of the age model's answers (logit adjustment).

The head answers ``p(age | face)`` under the ages the sampler drew (crowded at 20-39), which pulls
ambiguous faces towards the crowd. ``facelens.train.prior`` subtracts ``tau * log(prior)`` from the
logits. This script scores a grid of ``tau`` on the validation split (where the choice is made: the
value minimising the training's validation score, the mean of the per-source MAEs) and, with
``--cross-source DIR``, applies the chosen ``tau`` to the leave-one-source-out runs of ``facelens
cross-source`` (each with the prior of its own training split) so the ratios can be compared.
The rule this was run under: ``docs/rules/RULE-age-prior-adjust.txt``.

    python benchmarks/age_prior_adjustment.py                                   # the shipped age network (its float .pt twin)
    python benchmarks/age_prior_adjustment.py --cross-source runs/xsrc-source --out runs/prior.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from targets import AGE_DATA  # same folder: the datasets the shipped models were trained on

from facelens.api import default_model_path
from facelens.data.prepare import PreparedData, prepare_as_model
from facelens.evaluate.metrics import age_metrics
from facelens.fileio import write_json_atomic
from facelens.infer.postprocess import age_from_bins
from facelens.infer.predictor import load_predictor
from facelens.train.loop import validation_score
from facelens.train.prior import age_prior, prior_adjustment
from facelens.train.sampling import balanced_weights

TAUS = [round(0.1 * i, 1) for i in range(11)]


def training_prior(prep: PreparedData, keep_sources: set[str] | None = None) -> np.ndarray:
    """The age prior of a run trained on the train split of ``prep`` (only ``keep_sources``), sampled
    as ``--balance source`` samples it."""
    train = np.flatnonzero(prep.splits == "train")
    src = np.array(prep.sources)[train]
    if keep_sources is not None:
        train, src = train[np.isin(src, list(keep_sources))], src[np.isin(src, list(keep_sources))]
    y = prep.targets[train]
    w = balanced_weights(src, y) if len(set(src.tolist())) > 1 else None
    return age_prior(y, w)


def summary(y: np.ndarray, logits: np.ndarray, sources: np.ndarray) -> dict:
    """Validation score, per-source MAE, 20-50 RMSE and bias by band (pooled and per source)."""
    value = age_from_bins(logits)[0]
    m = age_metrics(y, value, groups={"source": sources.tolist()})
    per = {}
    for s in sorted(set(sources.tolist())):
        ms = age_metrics(y[sources == s], value[sources == s])
        per[s] = {"mae": ms["mae"], "rmse": ms["rmse"],
                  "bias": {b: r["mean_signed_error"] for b, r in ms["by_age_band"].items()}}
    return {"score": validation_score("age-bins", logits, y, sources), "mae": m["mae"],
            "bias": {b: r["mean_signed_error"] for b, r in m["by_age_band"].items()}, "by_source": per}


def logits_of(model: Path, prep: PreparedData, split: str, only_source: str | None = None):
    """(targets, logits, sources) of ``split`` (optionally one source) as ``model`` answers them."""
    pred = load_predictor(model)
    idx = np.flatnonzero(prep.splits == split)
    if only_source:
        idx = idx[np.array(prep.sources)[idx] == only_source]
    cs, pos = prep.model_crops(idx, pred.model_meta, desc=f"{split} crops")
    return prep.targets[pos], np.asarray(pred(cs.crops), dtype=np.float64), np.array(prep.sources)[pos]


def grid_lines(grid: dict[float, dict]) -> list[str]:
    bands = list(next(iter(grid.values()))["bias"])
    lines = ["| tau | val score | MAE | UTKFace / AAF / 20-50 MAE | 20-50 RMSE | bias " + " / ".join(bands) + " | 60+ UTK / AAF |",
             "|---|---|---|---|---|---|---|"]
    for tau, r in grid.items():
        s = r["by_source"]
        lines.append(
            f"| {tau:.1f} | {r['score']:.3f} | {r['mae']:.3f} | {s['utkface']['mae']:.2f} / {s['all-age-faces']['mae']:.2f} / "
            f"{s['faces-20-50']['mae']:.2f} | {s['faces-20-50']['rmse']:.3f} | "
            + " / ".join(f"{v:+.1f}" for v in r["bias"].values())
            + f" | {s['utkface']['bias']['60+']:+.1f} / {s['all-age-faces']['bias']['60+']:+.1f} |")
    return lines


def cross_source(folder: Path, prep: PreparedData, tau: float) -> dict:
    """The leave-one-source-out ratios at tau = 0 and at ``tau``, each run adjusted by its own prior."""
    table = json.loads((folder / "cross_source.json").read_text())
    everyone = sorted(set(prep.sources))
    out = {}
    for s in everyone:
        row = {}
        for name, run, keep in (("in_source", "all", set(everyone)), ("left_out", f"without-{s}", set(everyone) - {s})):
            model = folder / run / table.get("arch", "mobilenetv2") / "model.pt"
            y, logits, _ = logits_of(model, prep, "test", only_source=s)
            adjust = prior_adjustment(training_prior(prep, keep), tau)
            row[name] = {t: float(np.abs(age_from_bins(logits + (adjust if t else 0.0))[0] - y).mean()) for t in (0.0, tau)}
        out[s] = {t: {"in_source": row["in_source"][t], "left_out": row["left_out"][t],
                      "ratio": row["left_out"][t] / row["in_source"][t]} for t in (0.0, tau)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="age-bins model (.pt or fp32 .onnx); default: the shipped network's float twin (models/age-mobilenetv2.pt)")
    ap.add_argument("--cross-source", type=Path, default=None, help="folder of `facelens cross-source` (the same recipe)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    model = args.model or default_model_path("age").with_suffix(".pt")
    meta = load_predictor(model).meta
    if meta.get("age_answer_map"):  # an int8 file: its answers are moved after the distribution this script reads
        raise SystemExit(f"{model}: an int8 file with an answer map; give the float network (.pt) or an fp32 export")
    if meta.get("head") != "age-bins":
        raise SystemExit(f"{model}: needs an age-bins model, not {meta.get('head')!r}")
    prep = prepare_as_model(meta, AGE_DATA, log=lambda m: None)
    prior = training_prior(prep)
    y, logits, sources = logits_of(model, prep, "val")
    grid = {tau: summary(y, logits + prior_adjustment(prior, tau), sources) for tau in TAUS}
    best = min(grid, key=lambda t: grid[t]["score"])
    print(f"model: {model}; validation split, n = {len(y)}\n")
    print("\n".join(grid_lines(grid)))
    print(f"\nchosen tau (lowest validation score): {best:.1f} ({grid[best]['score']:.3f} against {grid[0.0]['score']:.3f} at 0)")
    result = {"model": str(model), "n_val": int(len(y)), "grid": {str(t): r for t, r in grid.items()}, "chosen_tau": best,
              "prior": prior.tolist()}
    if args.cross_source:
        xs = cross_source(args.cross_source, prep, best)
        print(f"\nleave-one-source-out ({args.cross_source}), test split, MAE trained on it / never saw it = ratio:")
        for s, r in xs.items():
            print(f"  {s}: tau 0: {r[0.0]['in_source']:.2f} / {r[0.0]['left_out']:.2f} = {r[0.0]['ratio']:.2f}; "
                  f"tau {best:.1f}: {r[best]['in_source']:.2f} / {r[best]['left_out']:.2f} = {r[best]['ratio']:.2f}")
        result["cross_source"] = {s: {str(t): v for t, v in r.items()} for s, r in xs.items()}
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
