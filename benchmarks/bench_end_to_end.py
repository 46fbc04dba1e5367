"""End-to-end throughput: photos/s for decode + detect + crop + age + eyes over a folder of photos.

Reads the first ``--n`` photos (sorted names, so every run sees the same ones) of a folder in
place, runs ``Analyzer.analyze_many`` over them (prefetch threads + faces batched across
photos) and reports the median photos/s of ``--runs`` runs after one warm-up pass over a few
photos, the faces found, and the peak RSS of the process. ``--compare`` adds a row for the
plain loop ``[analyzer.analyze(p) for p in photos]`` (one photo, one face batch at a time).
``--profile`` runs one pass under cProfile and prints the 25 most expensive calls.

    python benchmarks/bench_end_to_end.py                              # 1,000 UTKFace photos
    python benchmarks/bench_end_to_end.py --n 200 --runs 1 --compare --backend torch

Target (issue): >= 25 photos/s on 200x200 one-face photos with peak RSS <= 1 GB.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

from facelens.api import Analyzer, default_model_path
from facelens.images import IMAGE_SUFFIXES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"
TARGET_PHOTOS_S = 25.0
TARGET_RSS_MB = 1024.0


def peak_rss_mb() -> float:
    """Peak resident memory (VmHWM) of this process; Linux reports ru_maxrss in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pick_photos(folder: Path, n: int) -> list[Path]:
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not photos:
        raise SystemExit(f"{folder}: no photos found")
    return photos


def run_once(analyzer: Analyzer, photos: list[Path], mode: str, batch_size: int, workers: int | None) -> tuple[float, int]:
    """(seconds, faces) for one pass over ``photos``."""
    t0 = time.perf_counter()
    if mode == "loop":
        results = [analyzer.analyze(p) for p in photos]
    else:
        results = list(analyzer.analyze_many(photos, batch_size=batch_size, workers=workers))
    dt = time.perf_counter() - t0
    assert len(results) == len(photos)
    return dt, sum(len(r.faces) for r in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="folder of photos (read in place)")
    ap.add_argument("--n", type=int, default=1000, help="number of photos")
    ap.add_argument("--runs", type=int, default=3, help="timed passes (median reported)")
    ap.add_argument("--age-model", type=Path, default=default_model_path("age"))
    ap.add_argument("--eye-model", type=Path, default=default_model_path("eyes"))
    ap.add_argument("--backend", default="auto", help="auto (ONNX Runtime for .onnx), onnx or torch")
    ap.add_argument("--batch-size", type=int, default=32, help="faces per model call, gathered across photos")
    ap.add_argument("--workers", type=int, default=None, help="decode+detect threads (default 2; 0 = inline)")
    ap.add_argument("--compare", action="store_true", help="also time the one-photo-at-a-time loop")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one analyze_many pass")
    args = ap.parse_args(argv)

    photos = pick_photos(args.data, args.n)
    analyzer = Analyzer(age_model=args.age_model, eye_model=args.eye_model, backend=args.backend)
    backend = ", ".join(f"{m['task']}: {m['backend']}" for m in analyzer.models_info())
    run_once(analyzer, photos[:16], "many", args.batch_size, args.workers)  # warm-up: first-run allocations
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_once(analyzer, photos, "many", args.batch_size, args.workers)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)

    rows = []
    modes = ["many"] + (["loop"] if args.compare else [])
    for mode in modes:
        rates, faces = [], 0
        for _ in range(args.runs):
            dt, faces = run_once(analyzer, photos, mode, args.batch_size, args.workers)
            rates.append(len(photos) / dt)
            print(f"{mode}: {rates[-1]:.1f} photos/s", file=sys.stderr, flush=True)
        med = statistics.median(rates)
        label = (f"analyze_many (batch {args.batch_size} faces, workers {args.workers if args.workers is not None else 2})"
                 if mode == "many" else "analyze() per photo")
        rows.append(f"| {label} | {len(photos)} | {faces} | {med:.1f} | {min(rates):.1f}-{max(rates):.1f} | "
                    f">= {TARGET_PHOTOS_S:.0f} | {'met' if med >= TARGET_PHOTOS_S else 'MISSED'} |")

    rss = peak_rss_mb()
    load = os.getloadavg()
    print(f"\nEnd-to-end over {args.data} ({backend}), median of {args.runs} runs; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end\n")
    print("| pipeline | photos | faces | photos/s (median) | range | target | |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\npeak RSS: {rss:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB: {'met' if rss <= TARGET_RSS_MB else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
