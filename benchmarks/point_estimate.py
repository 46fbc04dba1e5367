"""Which single number to answer from an age distribution: its mean (shipped) or its median?

The age model predicts a distribution over 0..100 years. The mean minimises squared error
(RMSE, R²); the median minimises absolute error (MAE). The issue's targets mix both (UTKFace
MAE, 20-50 RMSE and R²), so this script measures the trade-off on the model's own validation
split (where a choice may be made) and test split (read after), from one pass of the model.

    python benchmarks/point_estimate.py                      # the shipped age network (its float .pt twin)
    python benchmarks/point_estimate.py --model runs/age/mobilenetv2/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facelens.api import default_model_path
from facelens.data.prepare import prepare_as_model
from facelens.evaluate.metrics import age_metrics
from facelens.infer.postprocess import age_from_bins, distribution_quantile, softmax
from facelens.infer.predictor import load_predictor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def point_estimates(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and median of each row's predicted age distribution."""
    mean = age_from_bins(logits)[0]  # the shipped decoder's answer
    return {"mean (shipped)": mean, "median": distribution_quantile(softmax(np.asarray(logits, dtype=np.float64)), 0.5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="age model (.pt or fp32 .onnx); default: the shipped network's float twin (models/age-mobilenetv2.pt)")
    ap.add_argument("--data", action="append", default=None,
                    help="datasets (default: ../shared/data/utkface and faces-20-50/train, as trained)")
    args = ap.parse_args()
    model = args.model or default_model_path("age").with_suffix(".pt")
    data = args.data or [str(DATA / "utkface"), str(DATA / "faces-20-50" / "train")]
    pred = load_predictor(model)
    meta = pred.meta
    if meta.get("age_answer_map"):  # an int8 file: its answers are moved after the distribution this script reads
        raise SystemExit(f"{model}: an int8 file with an answer map; give the float network (.pt) or an fp32 export")
    if pred.meta.get("head") != "age-bins":
        raise SystemExit(f"{model}: needs an age-bins model (a distribution over ages), not {pred.meta.get('head')!r}")
    prep = prepare_as_model(pred.meta, data, log=lambda m: None)
    print(f"model: {model}\n")
    print("| split | point estimate | UTKFace MAE | 20-50 RMSE | 20-50 R² | all MAE | all RMSE |")
    print("|---|---|---|---|---|---|---|")
    for split in ("val", "test"):
        cs, pos = prep.model_crops(np.flatnonzero(prep.splits == split), pred.meta, desc=f"{split} crops")
        y = prep.targets[pos]
        source = np.array([prep.sources[i] for i in pos])
        for name, value in point_estimates(pred(cs.crops)).items():
            cols = [age_metrics(y[source == s], value[source == s]) for s in ("utkface", "faces-20-50")]
            both = age_metrics(y, value)
            print(f"| {split} (n = {len(y)}) | {name} | {cols[0]['mae']:.3f} | {cols[1]['rmse']:.3f} | "
                  f"{cols[1]['r2']:.3f} | {both['mae']:.3f} | {both['rmse']:.3f} |")


if __name__ == "__main__":
    main()
