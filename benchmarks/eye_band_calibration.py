"""Does a per-age-band calibration of the eye model's face answers beat the current one? (issue #17)

The shipped eye model's whole-face probabilities lean by age band (teenagers and children towards
female, people over 60 towards male; ``docs/experiments.md``). A temperature cannot fix a lean, an
offset can. This measures, on the *validation* split only, by K-fold cross-validation over faces
(both eyes of a face always together), the log loss and ECE of:

- ``current``: one face temperature, plus the children's temperature (under 13, by label) when the
  training folds hold >= 50 children (what ``evaluate.scoring.calibrate`` fits today);
- ``bands``: Platt scaling, sigmoid(z / T + c), per age band (``evaluate.scoring.CALIBRATION_BANDS``)
  with >= 50 faces in the training folds, the all-ages face temperature elsewhere.

The test split is not read. ::

    python benchmarks/eye_band_calibration.py --model models/eyes-mobilenetv2.onnx \\
        --data ../shared/data/eyes --data ../shared/data/utkface --data ../shared/data/all-age-faces
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from facelens.evaluate.calibration import fit_temperature
from facelens.evaluate.groups import record_groups
from facelens.evaluate.metrics import binary_metrics
from facelens.evaluate.scoring import (
    CALIBRATION_BANDS,
    MIN_BAND_FACES,
    face_band_index,
    fit_band_calibration,
    per_face,
)
from facelens.infer.postprocess import decode_face_logits
from facelens.infer.predictor import load_predictor
from facelens.models.meta import CHILD_AGE
from facelens.train.export import load_split_crops


def _fit(z: np.ndarray, y: np.ndarray, ages: np.ndarray, method: str) -> dict:
    """The calibration metadata of ``method``, fitted on the training folds."""
    t_all = fit_temperature(z, y)
    if method == "bands":
        return {"face_temperature": t_all, "age_band_calibration": fit_band_calibration(z, y, ages)}
    child = ages < CHILD_AGE
    if child.sum() >= MIN_BAND_FACES:
        return {"face_temperature": t_all, "child_face_temperature": fit_temperature(z[child], y[child])}
    return {"face_temperature": t_all}


def cross_validate(z: np.ndarray, y: np.ndarray, ages: np.ndarray, method: str, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold P(female) per face, decoded as ``predict`` decodes (``decode_face_logits``)."""
    fold = np.random.default_rng(seed).permutation(len(z)) % folds
    p = np.empty(len(z))
    for k in range(folds):
        train, held = fold != k, fold == k
        p[held] = decode_face_logits(z[held], _fit(z[train], y[train], ages[train], method), ages[held])
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/eyes-mobilenetv2.onnx")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    pred = load_predictor(args.model)
    meta = pred.meta
    prep, splits = load_split_crops(meta, args.data, log=lambda s: print(s, file=sys.stderr))
    val = splits["val"]
    groups = record_groups("eyes", prep, val.crops, val.positions)
    z, y, face_groups, ages = per_face(pred(val.crops), val.y, groups["face"], groups)
    band = face_band_index(ages)
    src = np.asarray(face_groups["source"])
    result: dict = {"model": args.model, "split": "val", "folds": args.folds, "n_faces": len(z), "methods": {}}
    for method in ("current", "bands"):
        p = cross_validate(z, y, ages, method, args.folds, args.seed)
        bm = binary_metrics(y, p)
        rows = {"all": {"n": len(z), "log_loss": bm["log_loss"], "ece": bm["ece"]}}
        for b, (lo, hi) in [*enumerate(CALIBRATION_BANDS), (len(CALIBRATION_BANDS), (None, None))]:
            for s in ["all", *sorted(set(src.tolist()))]:
                m = (band == b) & ((src == s) if s != "all" else True)
                if m.sum() == 0:
                    continue
                bm = binary_metrics(y[m], p[m])
                name = "unknown age" if lo is None else f"{lo}-{hi - 1}" if hi is not None else f"{lo}+"
                rows[f"{name} {s}"] = {"n": int(m.sum()), "log_loss": bm["log_loss"], "ece": bm["ece"],
                                       "mean_p": float(p[m].mean()), "share": float(y[m].mean())}
        result["methods"][method] = rows
    cur, new = result["methods"]["current"], result["methods"]["bands"]
    print(f"{'group':24} {'n':>5}  {'LL current':>10} {'LL bands':>9}  {'ECE cur':>7} {'ECE bands':>9}  "
          f"{'meanP cur':>9} {'meanP bands':>11} {'share':>6}")
    for k in cur:
        a, b = cur[k], new[k]
        print(f"{k:24} {a['n']:5d}  {a['log_loss']:10.4f} {b['log_loss']:9.4f}  {a['ece']:7.3f} {b['ece']:9.3f}  "
              f"{a.get('mean_p', float('nan')):9.3f} {b.get('mean_p', float('nan')):11.3f} {a.get('share', float('nan')):6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
