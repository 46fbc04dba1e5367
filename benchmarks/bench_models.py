"""Model-only throughput: crops per second for the age and eye models, torch vs ONNX Runtime.

Feeds random uint8 crops of the model's input size (what the analyzer feeds after cropping)
straight to ``load_predictor(...)``, so it measures the network plus any flip-average TTA
baked into it, not detection. The torch backend runs the ``.pt`` twin (fp32, with the run's
TTA), the onnx backend the shipped file (see its ``precision`` and ``tta`` metadata).
Each configuration gets one warm-up run, then the median of
``--runs`` timed runs is reported with the spread. Prints a Markdown table.

    python benchmarks/bench_models.py                        # shipped models, batch 1 and 32, both backends
    python benchmarks/bench_models.py --backends onnx --runs 3 --age-model /tmp/m/age-mobilenetv2.onnx

A face is one crop for the age model and the photo eye model (both eyes in one crop), two for a single-eye
model (``predict-eyes``'s, also run on photos by ``--eye-model`` of that kind).

Targets (issue): age model >= 400 faces/s and eye model >= 2,000 crops/s at batch 32, judged
on the ONNX rows (the file the CLI, API and service run); torch rows are shown for comparison.
The torch backend needs the ``.pt`` twin beside each ``.onnx`` file; it is skipped (and said
so) when missing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from facelens.api import default_model_path
from facelens.errors import ModelLoadError
from facelens.face.align import eye_geometry_from_meta
from facelens.infer.predictor import Predictor, load_predictor

TARGETS = {"age": 400.0, "eyes": 2000.0}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_runs(pred: Predictor, batch: int, faces_per_run: int, runs: int, seed: int = 0) -> list[float]:
    """faces/s for each of ``runs`` timed runs (after one untimed warm-up run)."""
    size = pred.meta["input_size"]
    n_batches = max(1, faces_per_run // batch)
    crops = np.random.default_rng(seed).integers(0, 256, size=(n_batches * batch, size, size, 3), dtype=np.uint8)
    rates = []
    for r in range(runs + 1):
        t0 = time.perf_counter()
        for s in range(0, len(crops), batch):
            pred(crops[s : s + batch], batch_size=batch)
        dt = time.perf_counter() - t0
        if r:  # run 0 is the warm-up (allocations, ONNX Runtime's first-run kernel selection)
            rates.append(len(crops) / dt)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--age-model", type=Path, default=default_model_path("age"))
    ap.add_argument("--eye-model", type=Path, default=default_model_path("eyes"))
    ap.add_argument("--eye-crop-model", type=Path, default=default_model_path("eyes", ready_cut=True),
                    help="the single-eye model of predict-eyes (skipped when it is --eye-model)")
    ap.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    ap.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per configuration (median reported)")
    ap.add_argument("--faces", type=int, default=256, help="faces per timed run at batch >= 8 (a quarter at batch < 8)")
    args = ap.parse_args(argv)

    rows = []
    models = [("age", args.age_model), ("eyes", args.eye_model)]
    if args.eye_crop_model != args.eye_model:
        models.append(("eyes", args.eye_crop_model))
    for task, path in models:
        for backend in args.backends.split(","):
            try:
                pred = load_predictor(path, backend=backend)
            except ModelLoadError as exc:
                print(f"skipped {task}/{backend}: {exc}", file=sys.stderr)
                continue
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                faces = args.faces if batch >= 8 else max(batch, args.faces // 4)
                rates = time_runs(pred, batch, faces, args.runs)
                med = statistics.median(rates)
                target = TARGETS[task]
                # The target is for what is served: the shipped ONNX file. The .pt twin is a research path.
                judged = batch >= 32 and pred.backend == "onnx"
                verdict = ("met" if med >= target else "MISSED") if judged else "-"
                variant = f"{pred.meta.get('precision', 'fp32')}, TTA {pred.meta.get('tta', 'flip-average')}"
                per_face = len(eye_geometry_from_meta(pred.meta.get("eye_crop")).sides) if task == "eyes" else 1
                rows.append(f"| {task} | {path.name} | {pred.meta['input_size']} | {per_face} | {variant} | {backend} | "
                            f"{batch} | {med:,.0f} | "
                            f"{min(rates):,.0f}-{max(rates):,.0f} | {f'>= {target:,.0f}' if judged else '-'} | {verdict} |")
                print(rows[-1], file=sys.stderr, flush=True)
            del pred

    load = os.getloadavg()
    print(f"\nModel throughput, median of {args.runs} runs (TTA, where a model has it, included; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end)\n")
    print("| task | model | input px | crops per face | variant | backend | batch | crops/s (median) | range | target | |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
