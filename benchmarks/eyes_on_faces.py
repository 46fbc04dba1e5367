"""Eye-based sex estimate on whole faces (UTKFace), out of domain for the eye model.

The eye model is trained on the Kaggle single-eye crops; on a photo we cut both periocular
crops from the face landmarks (``facelens.face.align.cut_eye``). Two uses:

1. ``--sweep`` on the *validation* split: try crop geometries (side in inter-ocular
   distances, vertical offset) and report the accuracy of each, to choose the geometry that
   makes face-cut crops look most like the training crops to the model. Only validation
   images are used, so the test figure stays honest.
2. Without ``--sweep``, on the *test* split (the age model's seeded content split, never
   trained on): accuracy, balanced accuracy, ROC-AUC and ECE of the combined estimate and
   of each eye alone, with the default geometry.

    python benchmarks/eyes_on_faces.py --split val --sweep
    python benchmarks/eyes_on_faces.py --split test
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facelens.api import default_model_path
from facelens.data.prepare import prepare_records
from facelens.data.splits import DEFAULT_FRACTIONS
from facelens.evaluate.metrics import binary_metrics
from facelens.face.align import DEFAULT_EYE_GEOMETRY, EyeCropGeometry, cut_eye
from facelens.face.detect import detect_faces
from facelens.images import load_image
from facelens.infer.postprocess import combine_eye_probabilities, decode_eyes
from facelens.infer.predictor import load_predictor

ROOT = Path(__file__).resolve().parents[1]


def landmarks_for(records, limit: int | None, seed: int):
    """(images, (left eye, right eye, mouth) per face, sex labels) for records with a detected face."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))[:limit] if limit else np.arange(len(records))
    eyes, labels, images = [], [], []
    for i in tqdm(order, desc="detect", unit="img"):
        r = records[i]
        sex = r.meta_dict().get("gender")
        if sex not in ("female", "male"):
            continue
        rgb = load_image(r.path)
        faces = detect_faces(rgb)
        if not faces:
            continue
        f = faces[0]
        eyes.append((np.array(f.left_eye), np.array(f.right_eye), np.array(f.mouth)))
        labels.append(1.0 if sex == "female" else 0.0)
        images.append(rgb)
    return images, eyes, np.array(labels)


def score(pred, images, eyes, y, geometry: EyeCropGeometry) -> dict:
    size = pred.meta["input_size"]
    crops = []
    for rgb, (left, right, mouth) in zip(images, eyes, strict=True):
        crops.append(cut_eye(rgb, left, right, size, geometry, mouth)[0])
        crops.append(cut_eye(rgb, right, left, size, geometry, mouth)[0])
    p = decode_eyes(pred(np.stack(crops)), pred.meta)
    p_left, p_right = p[0::2], p[1::2]
    combined = np.array([combine_eye_probabilities([a, b]) for a, b in zip(p_left, p_right, strict=True)])
    out = {"combined": binary_metrics(y, combined), "left_eye": binary_metrics(y, p_left),
           "right_eye": binary_metrics(y, p_right)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "utkface"))
    ap.add_argument("--eye-model", default=str(default_model_path("eyes")))
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--seed", type=int, default=0, help="the age model's split seed")
    ap.add_argument("--limit", type=int, default=None, help="at most this many faces")
    ap.add_argument("--sweep", action="store_true", help="try crop geometries (use on --split val)")
    ap.add_argument("--sides", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 1.0],
                    help="sweep: crop side in inter-ocular distances")
    ap.add_argument("--dys", type=float, nargs="+", default=[-0.2, -0.15, -0.1, -0.05, 0.0, 0.05],
                    help="sweep: vertical offset of the eye (negative = eye below the centre)")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = ap.parse_args()
    if args.sweep and args.split == "test":
        ap.error("choose the geometry on --split val, never on the test split")
    pred = load_predictor(args.eye_model)
    prep = prepare_records("age", [args.data], "content", args.seed, DEFAULT_FRACTIONS, log=lambda m: None)
    recs = [r for r, s in zip(prep.records, prep.splits, strict=True) if s == args.split]
    images, eyes, y = landmarks_for(recs, args.limit, args.seed)
    print(f"{len(y)} faces with a detected face on the {args.split} split of {args.data}")
    results = {}
    if args.sweep:
        print("| side (x inter-ocular) | dy | accuracy | balanced | ROC-AUC | ECE |")
        print("|---|---|---|---|---|---|")
        for side, dy in itertools.product(args.sides, args.dys):
            m = score(pred, images, eyes, y, EyeCropGeometry(side, dy))["combined"]
            results[f"{side},{dy}"] = m
            print(f"| {side} | {dy} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {m['roc_auc']:.4f} | {m['ece']:.4f} |",
                  flush=True)
    else:
        res = score(pred, images, eyes, y, DEFAULT_EYE_GEOMETRY)
        results = res
        print(f"geometry: {DEFAULT_EYE_GEOMETRY}")
        print("| estimate | accuracy | balanced accuracy | ROC-AUC | ECE |")
        print("|---|---|---|---|---|")
        for k, m in res.items():
            print(f"| {k} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {m['roc_auc']:.4f} | {m['ece']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "n": len(y), "results": results}, indent=2))


if __name__ == "__main__":
    main()
