"""The issues' held-back check, run on our own test split: `facelens predict --json`, largest face per photo.

The maintainers score held-back photo sets as a new user would: the command line, JSON Lines, the
largest face of each photo. ``facelens evaluate`` scores crops cut by the training pipeline (cached,
full decode). This runs the command line itself over every test-split photo of UTKFace, the 20-50
set and All-Age-Faces (the same seeded splits the shipped models never saw) and scores its answers
the issues' way, so a gap between the two paths (detection at 512 px, reduced JPEG decode, the
largest-face pick) shows up here before it shows up there.

    python benchmarks/user_path.py                 # about 3 minutes on 2 cores
    python benchmarks/user_path.py --out runs/user-path.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from targets import AGE_DATA, FACE_EYE_DATA  # same folder: the datasets the shipped models were trained on

from facelens.api import default_model_path
from facelens.data.prepare import prepare_as_model, sex_of_face
from facelens.evaluate.metrics import EYE_AGE_BANDS, age_band_label, age_metrics, expected_calibration_error
from facelens.fileio import write_json_atomic
from facelens.infer.predictor import load_predictor


def test_photos(task: str, data: list[str]) -> dict[str, dict]:
    """path -> {source, age, sex} of the test split the shipped ``task`` model was scored on (whole photos only)."""
    prep = prepare_as_model(load_predictor(default_model_path(task)).model_meta, data, log=lambda m: None)
    out = {}
    for i in np.flatnonzero(prep.splits == "test"):
        r, meta = prep.records[i], prep.records[i].meta_dict()
        if task == "eyes" and "eye_side" not in meta:
            continue  # a ready-cut Kaggle eye crop, not a photo
        row = out.setdefault(str(r.path), {"source": prep.sources[i]})
        if task == "age":
            row["age"] = float(prep.targets[i])
        else:
            row["sex"] = sex_of_face(r)
            row["age"] = float(meta["age"]) if meta.get("age") else None
    return out


def largest_faces(paths: list[str]) -> dict[str, dict | None]:
    """path -> the largest face of `facelens predict --json` (None: no face or an error)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answers.jsonl"
        cmd = [str(Path(sys.executable).parent / "facelens"), "predict", "--json", "--out", str(out), *paths]  # the installed command
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        answers = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    faces = {}
    for a in answers:
        fs = a.get("faces") or []
        faces[a["path"]] = max(fs, key=lambda f: f["box"][2] * f["box"][3]) if fs else None  # box: x, y, w, h
    return faces


def age_lines(photos: dict[str, dict], faces: dict[str, dict | None]) -> tuple[list[str], dict]:
    lines = ["| source | photos | no face | MAE | RMSE | bias 0-2 / 3-9 / 10-19 / 20-39 / 40-59 / 60+ |", "|---|---|---|---|---|---|"]
    result = {}
    for s in sorted({p["source"] for p in photos.values()}):
        mine = [p for p, v in photos.items() if v["source"] == s]
        found = [p for p in mine if faces.get(p)]
        m = age_metrics([photos[p]["age"] for p in found], [faces[p]["age"]["value"] for p in found])
        bias = {b: r["mean_signed_error"] for b, r in m["by_age_band"].items()}
        result[s] = {"photos": len(mine), "no_face": len(mine) - len(found), "mae": m["mae"], "rmse": m["rmse"], "bias": bias}
        lines.append(f"| {s} | {len(mine)} | {len(mine) - len(found)} | {m['mae']:.2f} | {m['rmse']:.2f} | "
                     + " / ".join(f"{bias[b]:+.1f}" if b in bias else "-" for b in ("0-2", "3-9", "10-19", "20-39", "40-59", "60+"))
                     + " |")
    return lines, result


def eye_lines(photos: dict[str, dict], faces: dict[str, dict | None]) -> tuple[list[str], dict]:
    bands = [f"{lo}+" if hi is None else f"{lo}-{hi}" for lo, hi in EYE_AGE_BANDS]
    lines = ["| source | faces | no answer | accuracy / ECE | 13+ accuracy | " + " | ".join(bands) + " |",
             "|---|---|---|---|---|" + "---|" * len(bands)]
    result = {}
    for s in sorted({p["source"] for p in photos.values()}):
        mine = [p for p, v in photos.items() if v["source"] == s]
        found = [p for p in mine if faces.get(p) and faces[p].get("sex")]
        y = np.array([photos[p]["sex"] for p in found])
        pf = np.array([faces[p]["sex"]["p_female"] for p in found])
        age = np.array([photos[p]["age"] if photos[p]["age"] is not None else -1 for p in found])
        right = (pf >= 0.5) == (y == 1)
        band = np.array([age_band_label(a, EYE_AGE_BANDS) if a >= 0 else "" for a in age])
        per = {b: {"n": int((band == b).sum()), "accuracy": float(right[band == b].mean()),
                   "ece": expected_calibration_error(y[band == b], pf[band == b])} for b in bands if (band == b).any()}
        adult = age >= 13
        result[s] = {"faces": len(mine), "no_answer": len(mine) - len(found), "accuracy": float(right.mean()),
                     "ece": expected_calibration_error(y, pf), "accuracy_13_plus": float(right[adult].mean()), "by_band": per}
        r = result[s]
        lines.append(f"| {s} | {len(mine)} | {r['no_answer']} | {r['accuracy']:.3f} / {r['ece']:.3f} | {r['accuracy_13_plus']:.3f} | "
                     + " | ".join(f"{per[b]['accuracy']:.3f} / {per[b]['ece']:.3f} (n={per[b]['n']})" if b in per else "-" for b in bands)
                     + " |")
    return lines, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    age_photos, eye_photos = test_photos("age", AGE_DATA), test_photos("eyes", FACE_EYE_DATA)
    faces = largest_faces(sorted(set(age_photos) | set(eye_photos)))
    a_lines, a_res = age_lines(age_photos, faces)
    e_lines, e_res = eye_lines(eye_photos, faces)
    print("Age, `facelens predict --json`, largest face, test split:\n" + "\n".join(a_lines))
    print("\nSex from the eyes, the same way (accuracy / ECE per age band):\n" + "\n".join(e_lines))
    if args.out:
        write_json_atomic(args.out, {"age": a_res, "eyes": e_res})


if __name__ == "__main__":
    main()
