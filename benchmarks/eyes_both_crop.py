"""Does one crop holding both eyes tell sex better than the shipped model's two single-eye answers? (issue #17)

Issue #17 left it to measurement whether "a periocular crop holding both eyes serves whole photos better
than two single-eye answers". This cuts, from the same detections the product uses, a rectangle 2.6
inter-ocular distances wide and 1.6 high around both eyes (the span and height of the shipped model's two
1.6-wide single-eye crops), upright by the mouth, squeezed to a square; trains MobileNetV2 on the
UTKFace and All-Age-Faces train faces with the shipped eye recipe (the Kaggle set holds single eyes only);
and compares it with the shipped model's whole-face answer (mean of its two eye logits), both calibrated
the same way (one temperature fitted on validation faces). Validation decides (5-fold CV log loss over
faces; docs/rules/RULE-eyes-both-crop.txt); the test split is printed after.

    python benchmarks/eyes_both_crop.py --out runs/eyes-both          # ~25 min on 2 cores (training)
    python benchmarks/eyes_both_crop.py --out runs/eyes-both --model models/eyes-both-mobilenetv2.onnx
        # score a both-eye model trained by `facelens train eyes --eye-crop both` instead (no training here)
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from targets import EYE_DATA  # same folder: the datasets the shipped models were trained on

from facelens.api import default_model_path
from facelens.data.crops import PIPELINE_VERSION, AnchorStore, default_cache_dir
from facelens.data.prepare import prepare_as_model
from facelens.evaluate.calibration import fit_temperature
from facelens.evaluate.groups import FACE_ID, record_groups
from facelens.evaluate.metrics import EYE_AGE_BANDS, age_band_label, binary_metrics
from facelens.evaluate.scoring import per_face
from facelens.face.align import BOTH_EYES_GEOMETRY, cut_both_eyes
from facelens.fileio import write_json_atomic
from facelens.images import load_image
from facelens.infer.postprocess import sigmoid
from facelens.infer.predictor import load_predictor
from facelens.models.factory import create_model
from facelens.models.wrappers import FlipAverage
from facelens.train.augment import PHOTO_AUGMENT
from facelens.train.loop import FitConfig, fit, predict_outputs
from facelens.train.sampling import balanced_weights

SIZE = 96  # the rectangle is ``face.align.BOTH_EYES_GEOMETRY``: 2.6 x 1.6 eye distances, eyes 0.08 below the middle


def _cut(job: tuple[str, np.ndarray]) -> np.ndarray:
    path, anchors = job
    right, left, mouth = anchors
    return cut_both_eyes(load_image(path), right, left, mouth, SIZE)[0]


def face_table(prep) -> dict[str, np.ndarray]:
    """One row per face (its left-eye record): record position, split, source, sex, labelled age, anchors."""
    store = AnchorStore(default_cache_dir() / "crops" / f"anchors-{PIPELINE_VERSION}.npz")
    rows = [i for i, r in enumerate(prep.records) if r.meta_dict().get("eye_side") == "left"
            and store.anchors.get(prep.digests[i]) is not None]
    ages = [prep.records[i].meta_dict().get("age") for i in rows]
    return {"pos": np.array(rows), "split": prep.splits[rows], "source": np.array(prep.sources)[rows],
            "y": prep.targets[rows].astype(np.float32), "age": np.array([float(a) if a else np.nan for a in ages]),
            "digest": np.array([prep.digests[i] for i in rows]),
            "anchors": np.stack([store.anchors[prep.digests[i]] for i in rows])}


def cv_log_loss(z: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Log loss of one temperature fitted out of fold (the same calibration for both answers)."""
    fold = np.random.default_rng(seed).permutation(len(z)) % folds
    p = np.empty(len(z))
    for k in range(folds):
        p[fold == k] = sigmoid(z[fold == k] / fit_temperature(z[fold != k], y[fold != k]))
    return binary_metrics(y, p)["log_loss"]


def scores(z: np.ndarray, y: np.ndarray, t: float, source: np.ndarray, age: np.ndarray) -> dict:
    p = sigmoid(z / t)
    right = (p >= 0.5) == (y == 1)
    out = {"all": binary_metrics(y, p) | {"n": len(y)}}
    for s in sorted(set(source.tolist())):
        m = source == s
        out[s] = {"accuracy": float(right[m].mean()), "accuracy_13_plus": float(right[m & (age >= 13)].mean()),
                  "ece": binary_metrics(y[m], p[m])["ece"], "log_loss": binary_metrics(y[m], p[m])["log_loss"]}
        for lo, hi in EYE_AGE_BANDS:
            b = age_band_label(lo, EYE_AGE_BANDS)
            mb = m & np.array([a >= lo and (hi is None or a <= hi) for a in age])
            out[s][b] = float(right[mb].mean()) if mb.any() else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, crops, results.json)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help="for a quick check of the script")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                    help="score the both-eye model with flip averaging too (twice the compute; the shipped eye model has none)")
    ap.add_argument("--ema-decay", type=float, default=0.998)
    ap.add_argument("--crops", type=Path, default=None, help="both-eye crop cache (default: OUT/both-eye-crops.npz)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a both-eye model (.pt or .onnx, `facelens train eyes --eye-crop both`) to score instead of training one")
    ap.add_argument("--train-source", action="append", default=None,
                    help="leave-one-source-out: train on these sources' faces only and print each source's test error")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    shipped = load_predictor(default_model_path("eyes", ready_cut=True))  # the single-eye model
    prep = prepare_as_model(shipped.meta, EYE_DATA, log=lambda m: None)
    faces = face_table(prep)
    crops_file = args.crops or args.out / "both-eye-crops.npz"
    if crops_file.exists():
        with np.load(crops_file) as z:
            crops = z["crops"]
    else:
        with ProcessPoolExecutor(args.threads) as pool:
            crops = np.stack(list(pool.map(_cut, zip([str(prep.records[i].path) for i in faces["pos"]], faces["anchors"],
                                                     strict=True), chunksize=64)))
        np.savez(crops_file, crops=crops)
    part = {s: faces["split"] == s for s in ("train", "val", "test")}
    if args.train_source:  # the protocol's runs: the other sources' faces are never trained or validated on
        for s in ("train", "val"):
            part[s] &= np.isin(faces["source"], args.train_source)
    print(f"faces: train {part['train'].sum()}, val {part['val'].sum()}, test {part['test'].sum()}; crops {crops.shape}")

    if args.model is not None:
        given = load_predictor(args.model)
        if given.model_meta.eye_crop != BOTH_EYES_GEOMETRY.meta() or given.model_meta.input_size != SIZE:
            raise SystemExit(f"{args.model}: not a {SIZE} px model of this both-eye crop ({given.model_meta.eye_crop})")
        compare(args, prep, faces, crops, part, shipped, lambda x: given(x).reshape(-1), None)
        return
    model = create_model("mobilenetv2", "eyes")
    cfg = FitConfig(head="binary", epochs=args.epochs, batch_size=64, lr=1e-3, weight_decay=1e-4, patience=args.epochs,
                    ema_decay=args.ema_decay, precision="bf16", augment=PHOTO_AUGMENT, max_steps_per_epoch=args.max_steps_per_epoch)
    weights = balanced_weights(faces["source"][part["train"]], faces["y"][part["train"]], bin_width=0)
    summary = fit(model, crops[part["train"]], faces["y"][part["train"]], crops[part["val"]], faces["y"][part["val"]], cfg,
        args.out / "mobilenetv2", torch.device("cpu"), resume=True, train_weights=weights,
        val_groups=faces["source"][part["val"]])
    minutes = summary["train_seconds"] / 60  # over every part of a resumed run
    net = (FlipAverage(model) if args.tta else model).eval()
    if args.train_source:
        test = faces["split"] == "test"
        z = predict_outputs(net, crops[test], torch.device("cpu")).reshape(-1)
        right = (z >= 0) == (faces["y"][test] == 1)
        errors = {s: float(1 - right[faces["source"][test] == s].mean()) for s in sorted(set(faces["source"][test].tolist()))}
        write_json_atomic(args.out / "errors.json", {"train_sources": args.train_source, "test_error": errors,
                                                     "train_minutes": minutes})
        print("test error rate (whole faces): " + ", ".join(f"{s} {e:.3f}" for s, e in errors.items()))
        return
    compare(args, prep, faces, crops, part, shipped, lambda x: predict_outputs(net, x, torch.device("cpu")).reshape(-1),
            minutes)


def compare(args, prep, faces: dict, crops: np.ndarray, part: dict, shipped, both_logits, minutes: float | None) -> None:
    """Score the shipped single-eye answer and the both-eye one (``both_logits`` of crops) on the same faces."""
    # The shipped model's whole-face logit: the mean of its two eye logits, for the same faces.
    eye_cs, eye_pos = prep.model_crops(np.flatnonzero(np.isin(prep.digests, faces["digest"]) & (prep.splits != "train")),
                                       shipped.model_meta, desc="single-eye crops")
    groups = record_groups("eyes", prep, eye_cs.crops, eye_pos, estimate_ages=False)
    eye_logits = shipped(eye_cs.crops).reshape(-1)
    z_pair, _, _, _ = per_face(eye_logits, prep.targets[eye_pos], groups[FACE_ID], groups)
    pair_by_digest = dict(zip(dict.fromkeys(groups[FACE_ID]), z_pair, strict=True))
    scored = part["val"] | part["test"]
    scored &= np.isin(faces["digest"], list(pair_by_digest))  # both answers on the same faces
    z = {"two single-eye answers (shipped)": np.array([pair_by_digest.get(d, np.nan) for d in faces["digest"]]),
         "one both-eye crop": np.full(len(crops), np.nan)}
    z["one both-eye crop"][scored] = both_logits(crops[scored])
    result: dict = {"train_minutes": minutes, "model": str(args.model) if args.model else None, "n_train": int(part["train"].sum()),
                    "n_scored": {s: int((part[s] & scored).sum()) for s in ("val", "test")}}
    val = part["val"] & scored
    for name, logits in z.items():
        t = fit_temperature(logits[val], faces["y"][val])  # one temperature from validation faces, for both answers
        result[name] = {"temperature": t, "val": {"cv_log_loss": cv_log_loss(logits[val], faces["y"][val])}, "test": {}}
        for split in ("val", "test"):
            m = part[split] & scored
            result[name][split] |= scores(logits[m], faces["y"][m], t, faces["source"][m], faces["age"][m])
    name = f"results-{'_'.join(args.model.with_suffix('').parts[-3:])}.json" if args.model else (
        "results-tta.json" if args.tta else "results.json")
    write_json_atomic(args.out / name, result)
    for split in ("val", "test"):
        print(f"\n{split} split:")
        for name in ("two single-eye answers (shipped)", "one both-eye crop"):
            r = result[name][split]
            cv = f"CV log loss {r['cv_log_loss']:.4f}, " if "cv_log_loss" in r else ""
            print(f"  {name}: {cv}log loss {r['all']['log_loss']:.4f}, accuracy {r['all']['accuracy']:.3f}, "
                  f"ECE {r['all']['ece']:.3f}, ROC-AUC {r['all']['roc_auc']:.4f}")
            for s in ("utkface", "all-age-faces"):
                b = r[s]
                print(f"    {s}: accuracy {b['accuracy']:.3f} (13+ {b['accuracy_13_plus']:.3f}), ECE {b['ece']:.3f}; by band "
                      + ", ".join(f"{k} {b[k]:.3f}" for k in ("0-2", "3-12", "13-19", "20-59", "60+") if b.get(k) is not None))
    if minutes is not None:
        print(f"\nboth-eye training: {minutes:.1f} min")


if __name__ == "__main__":
    main()
