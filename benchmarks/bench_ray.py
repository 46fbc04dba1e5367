"""Ray engine against the local engine: photos/s with 1 and 2 Ray workers, and what Ray costs (issue #18).

Runs ``facelens predict``'s two engines as the CLI does (``run_batch`` into a .jsonl file,
``run_ray`` into a shard folder) on the same ``--n`` photos, read in place: the first ``--n``
(sorted) of ``../shared/data/utkface`` when present, else copies of the public-domain
``skimage.data.astronaut()`` face at varied sizes written to a temporary folder (``--source
astronaut`` forces that). Nothing is written into the repository.

Reported per engine (median of ``--runs``, runs interleaved so drift in machine load hits all):

* wall photos/s over the N photos, model loading and (Ray) actor start-up included: what a user waits;
* steady photos/s and the fixed cost, from a straight line through the wall times of ``--n-small``
  and ``--n`` photos (time = fixed + N / steady);
* the Ray runtime start-up (``ray.init`` of a local runtime), paid once per CLI run, measured apart.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_ray.py                 # 1,000 UTKFace photos
    PYTHONPATH=src .venv/bin/python benchmarks/bench_ray.py --n 300 --runs 1

Target (issue #18): Ray with 2 local workers within 15% of the local engine's photos/s on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI's tests and batch runs (see tests/conftest.py)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a loopback-only local runtime, before Ray loads
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from facelens.images import IMAGE_SUFFIXES  # noqa: E402
from facelens.infer.batch import run_batch  # noqa: E402
from facelens.ray_engine import ModelSpec, RayOptions, connect, resolve_models, run_ray  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"
TARGET_RATIO = 0.85


def pick_photos(source: str, n: int, tmp: Path) -> tuple[list[Path], str]:
    """``n`` photos: UTKFace files in place, or astronaut copies written to ``tmp``."""
    if source in ("auto", "utkface") and DATA.is_dir():
        photos = sorted(p for p in DATA.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
        if len(photos) == n:
            return photos, f"first {n} of {DATA} (200x200, one face each)"
    if source == "utkface":
        raise SystemExit(f"{DATA}: fewer than {n} photos")
    import cv2
    from skimage import data as skdata

    face = cv2.cvtColor(skdata.astronaut()[20:320, 80:380], cv2.COLOR_RGB2BGR)
    out = []
    for i in range(n):
        side = 160 + (i * 37) % 240  # 160-399 px, so decode and detection vary as in real folders
        p = tmp / f"astronaut_{i:05d}.jpg"
        cv2.imwrite(str(p), cv2.resize(face, (side, side)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(p)
    return out, f"{n} JPEG copies of skimage.data.astronaut() at 160-399 px (temporary folder)"


def time_local(spec: ModelSpec, photos: list[Path], tmp: Path) -> float:
    """Seconds for the local engine, model loading included (as ``facelens predict --out x.jsonl``)."""
    out = tmp / f"local-{time.monotonic_ns()}.jsonl"
    t0 = time.perf_counter()
    from facelens.api import Analyzer

    analyzer = Analyzer(age_model=spec.age_model, eye_model=spec.eye_model)  # the CLI's: ONNX threads = all cores
    summary = run_batch(analyzer, photos, out, progress=False)
    dt = time.perf_counter() - t0
    assert summary.processed == len(photos), summary.text()
    out.unlink()
    return dt


def time_ray(spec: ModelSpec, photos: list[Path], tmp: Path, workers: int, args) -> float:
    """Seconds for the Ray engine on an already running runtime: actor start-up, models, shards included."""
    out = tmp / f"ray-{time.monotonic_ns()}"
    opts = RayOptions(workers=workers, progress=False, files_per_batch=args.files_per_batch,
                      prepare_threads=args.prepare_threads, layout=args.layout)
    t0 = time.perf_counter()
    summary = run_ray(ModelSpec(**vars(spec)), photos, out, opts)
    dt = time.perf_counter() - t0
    assert summary.processed == len(photos), summary.text()
    shutil.rmtree(out)
    return dt


def time_driver(tmp: Path, n: int = 20000) -> list[tuple[str, float, float]]:
    """(format, records/s written, records/s read back for --resume) of the driver's shard writer alone.

    Why: every record passes through the one driver process (JSON parse, dedupe, shard write), so
    this rate is the ceiling of a cluster run however many workers it has.
    """
    import json

    from facelens.infer.shards import ShardWriter

    face = {"box": [10.0, 20.0, 100.0, 120.0], "score": 0.93,
            "landmarks": {k: [50.0, 60.0] for k in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")},
            "age": {"value": 31.2, "low": 24.5, "high": 39.1, "interval": 0.8},
            "sex": {"p_female": 0.81, "p_male": 0.19, "eyes": [{"side": s, "p_female": 0.8, "p_male": 0.2,
                                                                 "box": [1.0, 2.0, 3.0, 4.0]} for s in ("left", "right")],
                    "eyes_disagree": False, "caution": None}}
    texts = [json.dumps({"schema": "facelens/1", "path": f"/data/photo_{i:08d}.jpg", "width": 200, "height": 200,
                         "faces": [face], "error": None, "message": None}) for i in range(n)]
    rows = []
    for fmt in ("jsonl", "parquet"):
        out = tmp / f"driver-{fmt}"
        t0 = time.perf_counter()
        w = ShardWriter.open(out, fmt, shard_size=1000)
        for t in texts:
            w.add(json.loads(t))
        w.finish(n)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert len(ShardWriter.open(out, fmt, resume=True).done) == n
        rows.append((fmt, n / t_write, n / (time.perf_counter() - t0)))
        shutil.rmtree(out)
    return rows


def fit(n_small: int, t_small: float, n: int, t: float) -> tuple[float, float]:
    """(steady photos/s, fixed seconds) of the line through (n_small, t_small) and (n, t)."""
    per_photo = (t - t_small) / (n - n_small)
    return (1 / per_photo if per_photo > 0 else float("inf")), t - n * per_photo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="photos per run (default 1000)")
    ap.add_argument("--n-small", type=int, default=40, help="photos of the short run that gives the fixed cost")
    ap.add_argument("--runs", type=int, default=2, help="runs of each configuration (median reported)")
    ap.add_argument("--source", choices=("auto", "utkface", "astronaut"), default="auto")
    ap.add_argument("--files-per-batch", type=int, default=32, help="files per actor call (RayOptions.files_per_batch)")
    ap.add_argument("--prepare-threads", type=int, default=1, help="prefetch threads inside each Ray actor")
    ap.add_argument("--layout", choices=("fused", "split"), default="fused", help="Ray stages (RayOptions.layout)")
    ap.add_argument("--driver-records", type=int, default=20000, help="records for the driver-only measurement (0: skip)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to measure")
    args = ap.parse_args(argv)
    if not 0 < args.n_small < args.n:
        raise SystemExit("--n-small must be between 0 and --n")

    age, eyes = resolve_models(None, None, no_age=False, no_eyes=False)
    spec = ModelSpec(age_model=age, eye_model=eyes)
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmpdir:
        tmp = Path(tmpdir)
        photos, where = pick_photos(args.source, args.n, tmp)
        small = photos[: args.n_small]
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        connect(None, max(args.workers))
        t_init = time.perf_counter() - t0
        configs = [("local", 0)] + [("ray", w) for w in args.workers]
        times: dict[tuple[str, int, int], list[float]] = {}
        for _ in range(args.runs):
            for engine, w in configs:
                for subset in (small, photos):
                    dt = time_local(spec, subset, tmp) if engine == "local" else time_ray(spec, subset, tmp, w, args)
                    times.setdefault((engine, w, len(subset)), []).append(dt)
                    print(f"  {engine} workers={w or '-'} n={len(subset)}: {dt:.2f} s", file=sys.stderr)
        driver = time_driver(tmp, args.driver_records) if args.driver_records else []
        import ray

        t0 = time.perf_counter()
        ray.shutdown()
        t_shutdown = time.perf_counter() - t0
        load1 = os.getloadavg()

    print(f"\nPhotos: {where}. Runs: {args.runs} (median), files per actor call {args.files_per_batch}, "
          f"{args.prepare_threads} prefetch thread(s) per actor, layout {args.layout}, {os.cpu_count()} CPUs; "
          f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f}.")
    print(f"Local Ray runtime: start {t_init:.1f} s, shutdown {t_shutdown:.1f} s (paid once per `facelens predict --engine ray`).\n")
    print("| engine | workers | photos | wall s | wall photos/s | steady photos/s | fixed s | vs local (wall / steady) |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for engine, w in configs:
        t_n = statistics.median(times[(engine, w, args.n)])
        t_s = statistics.median(times[(engine, w, args.n_small)])
        steady, fixed = fit(args.n_small, t_s, args.n, t_n)
        wall = args.n / t_n
        if base is None:
            base = (wall, steady)
            rel = "-"
        else:
            rel = f"{wall / base[0]:.2f} / {steady / base[1]:.2f}"
        print(f"| {engine} | {w or '-'} | {args.n} | {t_n:.1f} | {wall:.1f} | {steady:.1f} | {fixed:.1f} | {rel} |")
    if 2 in args.workers:
        t2 = statistics.median(times[("ray", 2, args.n)])
        ratio = (args.n / t2) / base[0]
        verdict = "met" if ratio >= TARGET_RATIO else "missed"
        print(f"\nTarget: Ray with 2 workers >= {TARGET_RATIO:.0%} of the local engine's wall photos/s: "
              f"{ratio:.0%} ({verdict}); with the runtime start-up added: "
              f"{args.n / (t2 + t_init) / base[0]:.0%}.")
    if driver:
        print(f"\nDriver alone ({args.driver_records} one-face records, shards of 1000; the ceiling of any cluster run):\n")
        print("| format | records/s written (parse, dedupe, shard) | records/s read back (--resume) |")
        print("|---|---|---|")
        for fmt, w, r in driver:
            print(f"| {fmt} | {w:,.0f} | {r:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
