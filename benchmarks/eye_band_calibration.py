"""Which age bands should the eye model's whole-face calibration use? (issue #17)

The shipped eye model's whole-face probabilities lean by age band (children and teenagers towards
female, people over 60 towards male; ``docs/experiments.md``), so they are calibrated per band of age:
sigmoid(z / T + c) fitted per band (``evaluate.scoring.fit_band_calibration``). This measures, on the
*validation* split only, by K-fold cross-validation over faces (both eyes of a face always together),
the log loss and ECE of:

- ``temperature``: one face temperature, plus the children's temperature (under 13) when the
  training folds hold >= 50 children (the calibration before bands);
- ``label-fit``: Platt scaling per band of ``evaluate.scoring.CALIBRATION_BANDS`` with >= 50 faces in the
  training folds, the all-ages face temperature elsewhere, each band fitted on the faces whose *labelled*
  age falls in it (the calibration shipped until December 2026);
- ``estimate-fit``: the same, each band fitted on the faces whose *estimated* age falls in it;
- ``candidate``: ``estimate-fit`` with the band edges of ``--bands`` (e.g. ``0,3,13,20,60``), when given.

Every method is applied as ``predict`` applies it: the band is picked by the age model's estimate
(``--age-model``, default the shipped one). Rows are the issue's reporting bands (0-2, 3-12, 13-19, 20-59,
60+) of the *labelled* age, by source. The test split is not read. ::

    python benchmarks/eye_band_calibration.py --model models/eyes-mobilenetv2.onnx --bands 0,3,13,20,60 \\
        --data ../shared/data/eyes --data ../shared/data/utkface --data ../shared/data/all-age-faces
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from facelens.evaluate.calibration import fit_temperature
from facelens.evaluate.groups import FACE_AGE_ESTIMATE, FACE_ID, record_groups
from facelens.evaluate.metrics import EYE_AGE_BANDS, binary_metrics
from facelens.evaluate.scoring import (
    CALIBRATION_BANDS,
    MIN_BAND_FACES,
    Bands,
    face_band_index,
    fit_band_calibration,
    per_face,
)
from facelens.infer.postprocess import decode_face_logits
from facelens.infer.predictor import load_predictor
from facelens.models.meta import CHILD_AGE
from facelens.train.export import load_split_crops

#: The issue's reporting bands as [low, high) edges (``EYE_AGE_BANDS`` holds them inclusive).
EYE_AGE_ROWS: Bands = tuple((lo, None if hi is None else hi + 1) for lo, hi in EYE_AGE_BANDS)


def parse_bands(text: str) -> Bands:
    """'0,3,13,20,60' -> ((0, 3), (3, 13), (13, 20), (20, 60), (60, None))."""
    edges = [int(e) for e in text.split(",")]
    if len(edges) < 2 or edges != sorted(set(edges)):
        raise SystemExit(f"--bands: give increasing age edges such as 0,3,13,20,60, not {text!r}")
    return tuple(zip(edges, [*edges[1:], None], strict=True))


def _fit(z: np.ndarray, y: np.ndarray, ages: np.ndarray, method: Bands | None) -> dict:
    """The calibration metadata of ``method`` (band edges; None: temperatures), fitted on the training folds."""
    t_all = fit_temperature(z, y)
    if method is not None:
        return {"face_temperature": t_all, "age_band_calibration": fit_band_calibration(z, y, ages, method)}
    child = ages < CHILD_AGE
    if child.sum() >= MIN_BAND_FACES:
        return {"face_temperature": t_all, "child_face_temperature": fit_temperature(z[child], y[child])}
    return {"face_temperature": t_all}


def cross_validate(z: np.ndarray, y: np.ndarray, fit_ages: np.ndarray, method: Bands | None, folds: int, seed: int,
                   pick_ages: np.ndarray) -> np.ndarray:
    """Out-of-fold P(female) per face: fitted with ``fit_ages``, decoded as ``predict`` decodes
    (``decode_face_logits``, the band picked by ``pick_ages``)."""
    fold = np.random.default_rng(seed).permutation(len(z)) % folds
    p = np.empty(len(z))
    for k in range(folds):
        train, held = fold != k, fold == k
        p[held] = decode_face_logits(z[held], _fit(z[train], y[train], fit_ages[train], method), pick_ages[held])
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/eyes-mobilenetv2.onnx")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", type=parse_bands, help="candidate band edges, e.g. 0,3,13,20,60")
    ap.add_argument("--age-model", default=None, help="age model whose estimate picks the band (default: the shipped one)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    pred = load_predictor(args.model)
    meta = pred.meta
    prep, splits = load_split_crops(meta, args.data, log=lambda s: print(s, file=sys.stderr))
    val = splits["val"]
    groups = record_groups("eyes", prep, val.crops, val.positions, age_model=args.age_model)
    if FACE_AGE_ESTIMATE not in groups:
        raise SystemExit("no age model to estimate the faces' ages: pass --age-model")
    outputs = pred(val.crops)
    z, y, face_groups, ages = per_face(outputs, val.y, groups[FACE_ID], groups)
    estimates = per_face(outputs, val.y, groups[FACE_ID], groups, FACE_AGE_ESTIMATE)[3]
    band = face_band_index(ages, EYE_AGE_ROWS)
    src = np.asarray(face_groups["source"])
    methods: dict[str, tuple[Bands | None, np.ndarray]] = {
        "temperature": (None, estimates), "label-fit": (CALIBRATION_BANDS, ages), "estimate-fit": (CALIBRATION_BANDS, estimates)}
    if args.bands:
        methods["candidate"] = (args.bands, estimates)
    result: dict = {"model": args.model, "split": "val", "folds": args.folds, "n_faces": len(z),
                    "bands": {m: edges for m, (edges, _) in methods.items()}, "picked_by": "estimate", "methods": {}}
    for method, (edges, fit_ages) in methods.items():
        p = cross_validate(z, y, fit_ages, edges, args.folds, args.seed, estimates)
        bm = binary_metrics(y, p)
        rows = {"all": {"n": len(z), "log_loss": bm["log_loss"], "ece": bm["ece"]}}
        for b, (lo, hi) in [*enumerate(EYE_AGE_ROWS), (len(EYE_AGE_ROWS), (None, None))]:
            for s in ["all", *sorted(set(src.tolist()))]:
                m = (band == b) & ((src == s) if s != "all" else True)
                if m.sum() == 0:
                    continue
                bm = binary_metrics(y[m], p[m])
                name = "unknown age" if lo is None else f"{lo}-{hi - 1}" if hi is not None else f"{lo}+"
                rows[f"{name} {s}"] = {"n": int(m.sum()), "log_loss": bm["log_loss"], "ece": bm["ece"],
                                       "mean_p": float(p[m].mean()), "share": float(y[m].mean())}
        result["methods"][method] = rows
    names = list(methods)
    print(f"{'group':24} {'n':>5}  " + " ".join(f"{'LL ' + n:>14}" for n in names) + "  "
          + " ".join(f"{'ECE ' + n:>14}" for n in names) + "  " + " ".join(f"{'meanP ' + n:>16}" for n in names)
          + f" {'share':>6}")
    for k, first in result["methods"][names[0]].items():
        rows = [result["methods"][n][k] for n in names]
        print(f"{k:24} {first['n']:5d}  " + " ".join(f"{r['log_loss']:14.4f}" for r in rows) + "  "
              + " ".join(f"{r['ece']:14.3f}" for r in rows) + "  "
              + " ".join(f"{r.get('mean_p', float('nan')):16.3f}" for r in rows) + f" {first.get('share', float('nan')):6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
