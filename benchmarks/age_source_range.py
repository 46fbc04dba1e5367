"""How much of a source's age error comes from answers outside the ages that source holds.

The 20-50 set holds only ages 20-50. A model that has learned to tell its photos by their style can
keep every answer inside that range, and then an older face filed under 30, or a child in a film still
filed under 30, costs it little; a model that answers the face pays the full error on those labels.
This script puts the two side by side on one source: RMSE as scored, RMSE with every answer clipped
to the source's label range (the range knowledge handed to both models), the share of answers
outside the range, and the largest errors with each model's answer, so the images can be looked at.
With ``--audit-model`` (a model trained without this source, so blind to its labels), the images whose
label lies ``--audit-years`` or more from that model's answer are counted as gross label errors and
each model's RMSE is also given without them: a flag that no scored model chose.
Run from the repository root (it reads the datasets of `targets.AGE_DATA`).

    python benchmarks/age_source_range.py --model models/baselines/age-mobilenetv2-loose.onnx --model models/age-mobilenetv2.onnx
    python benchmarks/age_source_range.py --split val --out runs/source-range-val.json ...
    python benchmarks/age_source_range.py --audit-model runs/audit-no2050-short/mobilenetv2/model.pt --model ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from targets import AGE_DATA  # same folder: the datasets the shipped models were trained on

from facelens.data.prepare import prepare_as_model
from facelens.fileio import write_json_atomic
from facelens.infer.postprocess import decode_age
from facelens.infer.predictor import load_predictor


def rmse(estimate: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate - y) ** 2)))


def range_summary(estimate: np.ndarray, y: np.ndarray, low: float, high: float) -> dict:
    """RMSE as scored and with answers clipped to [low, high]; share of answers below and above it."""
    return {"rmse": rmse(estimate, y), "rmse_clipped": rmse(np.clip(estimate, low, high), y),
            "mae": float(np.mean(np.abs(estimate - y))),
            "share_below": float(np.mean(estimate < low)), "share_above": float(np.mean(estimate > high))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", required=True, help="age model (repeat to compare)")
    ap.add_argument("--source", default="faces-20-50", help="the source to look at (a --data folder's source name)")
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--worst", type=int, default=12, help="largest errors of the last model to list")
    ap.add_argument("--audit-model", type=Path, help="an age model trained without --source: flags gross label errors")
    ap.add_argument("--audit-years", type=float, default=25.0, help="label this far from the audit model's answer: flagged")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    preds = [load_predictor(m) for m in args.model]
    prep = prepare_as_model(preds[0].model_meta, AGE_DATA, log=lambda s: None)
    sources = np.array(prep.sources)
    if args.source not in set(sources.tolist()):
        raise SystemExit(f"no source {args.source!r} in {', '.join(AGE_DATA)}: {sorted(set(sources.tolist()))}")
    labels = prep.targets[sources == args.source]
    low, high = float(labels.min()), float(labels.max())  # the whole source's label range, every split
    idx = np.flatnonzero((prep.splits == args.split) & (sources == args.source))

    answers, pos_ref, result = {}, None, {"source": args.source, "split": args.split, "range": [low, high], "models": {}}
    for path, pred in zip(args.model, preds, strict=True):
        cs, pos = prep.model_crops(idx, pred.model_meta, desc=f"{path.name} crops")
        if pos_ref is not None and not np.array_equal(pos, pos_ref):
            raise SystemExit(f"{path}: a different set of images gave a crop; compare models that cut faces alike")
        pos_ref = pos
        value = decode_age(np.asarray(pred(cs.crops)), pred.model_meta)[0]
        answers[str(path)] = value
        y = prep.targets[pos]
        s = range_summary(value, y, low, high)
        result["models"][str(path)] = s
        print(f"{path}: n = {len(y)}, RMSE {s['rmse']:.3f}, clipped to [{low:.0f}, {high:.0f}] {s['rmse_clipped']:.3f}, "
              f"MAE {s['mae']:.3f}; answers below {s['share_below']:.1%}, above {s['share_above']:.1%}")

    y = prep.targets[pos_ref]
    if args.audit_model:
        audit = load_predictor(args.audit_model)
        cs, pos = prep.model_crops(pos_ref, audit.model_meta, desc="audit crops")
        flagged = np.isin(pos_ref, pos[np.abs(decode_age(np.asarray(audit(cs.crops)), audit.model_meta)[0] - prep.targets[pos])
                                       >= args.audit_years])
        result["audit"] = {"model": str(args.audit_model), "years": args.audit_years, "flagged": int(flagged.sum()),
                           "rmse_without_flagged": {m: rmse(a[~flagged], y[~flagged]) for m, a in answers.items()}}
        print(f"audit by {args.audit_model}: {flagged.sum()} of {len(y)} labels {args.audit_years:.0f}+ years from its answer; "
              "RMSE without them: " + ", ".join(f"{Path(m).name} {v:.3f}" for m, v in result["audit"]["rmse_without_flagged"].items()))
    last = answers[str(args.model[-1])]
    worst = np.argsort(-np.abs(last - y))[: args.worst]
    print(f"largest errors of {args.model[-1].name} (label, then each model's answer):")
    result["worst"] = []
    for i in worst:
        path = str(prep.records[pos_ref[i]].path)
        row = {"path": path, "label": float(y[i]), "answers": {m: float(a[i]) for m, a in answers.items()}}
        result["worst"].append(row)
        print(f"  {path}: {y[i]:.0f} | " + " | ".join(f"{a[i]:.1f}" for a in answers.values()))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
