"""Check the shipped models against the issue targets, on test splits they never saw.

Runs ``facelens evaluate`` logic on the seeded test splits (content-addressed, see
``facelens.data.splits``) and prints a table of measured value vs target, with training
times read from the models' own metadata. Every in-source figure has its cross-source twin:
per source, children's bias per source, the context check and (with ``--cross-source DIR``,
the folder of ``facelens cross-source``) the leave-one-source-out ratios.

    python benchmarks/targets.py                                  # both tasks
    python benchmarks/targets.py --task age --cross-source runs/xsrc-tight
    python benchmarks/targets.py --task eyes       # photo eye model on faces, single-eye model on the Kaggle crops
    python benchmarks/targets.py --task age --age-model runs/age/mobilenetv2/model.pt  # a model of your own
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelens.api import default_model_path
from facelens.evaluate.pipeline import evaluate_models

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AGE_DATA = [str(DATA / "utkface"), str(DATA / "faces-20-50" / "train"), str(DATA / "all-age-faces")]
EYE_DATA = [str(DATA / "eyes"), str(DATA / "utkface"), str(DATA / "all-age-faces")]
#: The whole-face sets: what the photo eye model (one crop of both eyes) is trained and checked on.
FACE_EYE_DATA = EYE_DATA[1:]
#: The ready-cut single-eye crops: what ``predict-eyes`` (the single-eye model) is checked on.
CROP_EYE_DATA = EYE_DATA[:1]


def _row(name: str, value: float | None, target: str, ok: bool) -> str:
    shown = "n/a" if value is None else f"{value:.4g}"
    return f"| {name} | {shown} | {target} | {'met' if ok else 'MISSED'} |"


def _floor(r: dict) -> str:
    """The ECE a perfectly calibrated model would show at this n, and whether the observed one exceeds it
    (``evaluate.metrics.ece_noise_floor``): a target below the floor cannot be checked on this many faces."""
    if r.get("ece_floor") is None:
        return "noise floor n/a"
    return f"noise floor {r['ece_floor']:.3f}, p = {r['ece_p_value']:.2f}"


def _minutes(model: Path) -> float | None:
    meta_path = Path(model).with_suffix(".json")
    if not meta_path.exists():
        return None
    return json.loads(meta_path.read_text()).get("training", {}).get("train_seconds", 0) / 60


def age(quiet, model: Path | None = None, cross_source: Path | None = None, context: int = 300) -> list[str]:
    model = model or default_model_path("age")
    res = evaluate_models("age", [model], AGE_DATA, split="test", log=quiet, echo=quiet, context_check=context)
    m = next(iter(res["models"].values()))
    src = m["by_source"]
    rows = [
        _row("age: UTKFace test MAE (years)", src["utkface"]["mae"], "<= 4.8", src["utkface"]["mae"] <= 4.8),
        _row("age: All-Age-Faces test MAE", src["all-age-faces"]["mae"], "<= 5.0", src["all-age-faces"]["mae"] <= 5.0),
        _row("age: 20-50 test RMSE", src["faces-20-50"]["rmse"], "<= 7.0", src["faces-20-50"]["rmse"] <= 7.0),
    ]
    for name, sm in src.items():
        child = sm["by_decade"].get("0-9")
        if child:
            b = child["mean_signed_error"]
            rows.append(_row(f"age: {name} children 0-9 bias (n = {child['n']})", b, "|bias| <= 2", abs(b) <= 2))
    ctx = m.get("context_check") or {}
    if ctx.get("n"):
        rows.append(_row(f"age: context check, mean |photo - chip| (n = {ctx['n']})", ctx["mean_abs_diff"], "-", True))
        kids = [r for b, r in ctx["by_age_band"].items() if b in ("0-2", "3-9")]
        if kids:
            n = sum(r["n"] for r in kids)
            v = sum(r["n"] * r["mean_abs_diff"] for r in kids) / n
            rows.append(_row(f"age: context check, children 0-9 (n = {n})", v, "<= 1.5", v <= 1.5))
    rows.append(_row("age: 80% interval coverage (all test)", m.get("coverage"), "~0.80", abs((m.get("coverage") or 0) - 0.8) < 0.05))
    if cross_source:
        table = json.loads((cross_source / "cross_source.json").read_text())["by_source"]
        for name, r in table.items():
            rows.append(_row(f"age: leave-one-source-out {name}, MAE ratio ({r['left_out']['mae']:.2f} / "
                             f"{r['in_source']['mae']:.2f})", r["mae_ratio"], "<= 1.5", r["mae_ratio"] <= 1.5))
    minutes = _minutes(model)
    if minutes is not None:
        rows.append(_row("age: training time (min, fit only)", minutes, "<= 150", minutes <= 150))
    return rows


def eyes(quiet, model: Path | None = None, crop_model: Path | None = None) -> list[str]:
    """Whole faces with the photo model ``model``, the Kaggle crops with ``crop_model`` (``predict-eyes``'s);
    by default the shipped ones."""
    model = model or default_model_path("eyes")
    crop_model = crop_model or default_model_path("eyes", ready_cut=True)
    res = evaluate_models("eyes", [crop_model], CROP_EYE_DATA, split="test", log=quiet, echo=quiet)
    kaggle = next(iter(res["models"].values()))
    rows = [
        _row(f"eyes: Kaggle crops, grouped test accuracy ({crop_model.name})", kaggle["accuracy"], ">= 0.96",
             kaggle["accuracy"] >= 0.96),
        _row("eyes: Kaggle crops, grouped test ECE", kaggle["ece"], "<= 0.02", kaggle["ece"] <= 0.02),
    ]
    res = evaluate_models("eyes", [model], FACE_EYE_DATA, split="test", log=quiet, echo=quiet)
    m = next(iter(res["models"].values()))
    for name, fm in (m.get("faces") or {}).get("by_source", {}).items():
        split = fm["by_group"]["child_or_not"]
        rows += [_row(f"eyes: {name} whole faces, accuracy (n = {fm['n']})", fm["accuracy"], ">= 0.90", fm["accuracy"] >= 0.90),
                 _row(f"eyes: {name} whole faces, ECE", fm["ece"], "<= 0.03", fm["ece"] <= 0.03)]
        if "13+" in split:
            r = split["13+"]
            rows.append(_row(f"eyes: {name} aged 13+, accuracy (n = {r['n']})", r["accuracy"], ">= 0.92", r["accuracy"] >= 0.92))
        for band, r in fm["by_group"]["age_band"].items():
            limit = 0.05 if band in ("0-2", "3-12") else 0.03
            rows.append(_row(f"eyes: {name} {band}, ECE (accuracy {r['accuracy']:.3f}, n = {r['n']}; {_floor(r)})",
                             r["ece"], f"<= {limit}", r["ece"] <= limit))
        if "0-12" in split:
            r = split["0-12"]
            rows.append(_row(f"eyes: {name} aged 0-12, ECE (n = {r['n']}; {_floor(r)})", r["ece"], "<= 0.05",
                             r["ece"] <= 0.05))
    for used in dict.fromkeys((model, crop_model)):
        minutes = _minutes(used)
        if minutes is not None:
            rows.append(_row(f"eyes: training time of {used.name} (min, fit only)", minutes, "<= 30", minutes <= 30))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["age", "eyes", "both"], default="both")
    ap.add_argument("--age-model", type=Path, help="age model to check (default: the shipped default)")
    ap.add_argument("--eye-model", type=Path, help="eye model for photos to check on whole faces (default: the shipped one)")
    ap.add_argument("--eye-crop-model", type=Path,
                    help="eye model for ready-cut crops to check on the Kaggle crops (default: the shipped one)")
    ap.add_argument("--cross-source", type=Path, help="folder of a `facelens cross-source` run (leave-one-source-out)")
    ap.add_argument("--context", type=int, default=300, help="photos per source for the context check (0 = skip)")
    args = ap.parse_args()
    quiet = lambda m: None  # noqa: E731
    rows = ["| measure | measured | target | |", "|---|---|---|---|"]
    if args.task in ("age", "both"):
        rows += age(quiet, args.age_model, args.cross_source, args.context)
    if args.task in ("eyes", "both"):
        rows += eyes(quiet, args.eye_model, args.eye_crop_model)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
