"""Seconds per training step of each process, and images/s of the whole job, for 1 process against
2 data-parallel processes (gloo, CPU) on a small real subset.

Why: on one machine torch already spreads a step over every core with threads, so a second
process only pays off when two half-size thread pools do more work together than one full one,
minus DDP's gradient all-reduce (about 3.5 M floats for MobileNetV2 over loopback, every step).
This measures that trade instead of assuming it.

What a step is: exactly ``fit``'s (``to_input``, the augmentation, ``optimizer_step`` on the model
wrapped by ``train.distributed.wrap``), on this rank's shard of the shared seeded order
(``rank_epoch_order``), MobileNetV2 age head, random init. Each configuration runs in fresh
processes (2 warm-up steps, then the median of ``--steps``); the 2-process ones under
``python -m torch.distributed.run --standalone``. The configurations run ``--rounds`` times in rotation.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_ddp.py                 # 1x2, 1x1, 2x1 threads
    PYTHONPATH=src .venv/bin/python benchmarks/bench_ddp.py --size 64 --batch-size 16 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "faces-20-50" / "train"


def prepare_crops(data: Path, n: int, size: int, out: Path) -> int:
    """Face crops (the training pipeline's, from the crop cache) of ``n`` photos spread over the ages."""
    from facelens.data.crops import build_crops
    from facelens.data.hygiene import content_digest

    files = sorted(data.glob("*/*.jpg"))
    files = files[:: max(1, len(files) // n)][:n]
    cs = build_crops(files, [content_digest(f.read_bytes()) for f in files], "face", size, desc="bench crops")
    ages = np.array([float(files[i].parent.name) for i in cs.index], dtype=np.float32)
    np.savez(out, crops=cs.crops, ages=ages)
    return len(ages)


def worker(args: argparse.Namespace) -> None:
    """One process of one configuration: time ``--steps`` training steps after two warm-ups."""
    import torch

    from facelens.models.factory import create_model
    from facelens.models.wrappers import to_input
    from facelens.train import distributed as ddp
    from facelens.train.augment import AUGMENT_PRESETS, augment_batch
    from facelens.train.loop import FitConfig, optimizer_step

    env = ddp.env_from(os.environ)
    device = ddp.init_process_group(env, "cpu") if env else torch.device("cpu")
    torch.set_num_threads(args.threads)
    with np.load(args.crops) as z:
        crops, ages = z["crops"], z["ages"]
    torch.manual_seed(0)
    model = create_model("mobilenetv2", "age", pretrained=False).to(device).to(memory_format=torch.channels_last)
    train_model = ddp.wrap(model, device)
    train_model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = FitConfig(head="age-bins", batch_size=args.batch_size, augment=AUGMENT_PRESETS[args.augment])
    warmup = 2
    order = ddp.rank_epoch_order(len(crops), warmup + args.steps, args.batch_size, 0, 0, np.ones(len(crops)),
                                 ddp.rank(), ddp.world_size())
    gen = torch.Generator().manual_seed(ddp.rank())
    times = []
    for step in range(warmup + args.steps):
        idx = order[step * args.batch_size : (step + 1) * args.batch_size]
        t0 = time.perf_counter()
        x = augment_batch(to_input(crops[idx], device), cfg.augment, gen)
        optimizer_step(train_model, opt, x, torch.as_tensor(ages[idx]), cfg, device)
        times.append(time.perf_counter() - t0)
    per_rank = ddp.gather_rows(np.array([statistics.median(times[warmup:])]), ddp.world_size())
    if ddp.is_main():
        Path(args.result).write_text(json.dumps({"per_rank": per_rank.tolist(), "threads": torch.get_num_threads()}))
    ddp.shutdown()


def run_config(nproc: int, threads: int, batch: int, args: argparse.Namespace, crops: Path, tmp: Path) -> dict:
    result = tmp / f"result-{nproc}-{threads}-{batch}.json"
    worker_args = [str(Path(__file__).resolve()), "--worker", "--crops", str(crops), "--result", str(result),
                   "--threads", str(threads), "--batch-size", str(batch), "--steps", str(args.steps),
                   "--augment", args.augment]
    if nproc == 1:  # the baseline is a plain process, as single-process training is
        cmd = [sys.executable, *worker_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *worker_args]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)}, capture_output=True)
    out = json.loads(result.read_text())
    step = max(out["per_rank"])  # the job moves at its slowest rank's pace
    return {"nproc": nproc, "threads": threads, "batch": batch, "step": step, "per_rank": out["per_rank"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=256, help="photos in the subset")
    ap.add_argument("--size", type=int, default=96, help="input size (px)")
    ap.add_argument("--batch-size", type=int, default=32, help="per process")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per configuration (after 2 warm-ups)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="run every configuration this many times, in rotation, and report the median round "
                         "(a shared machine's load drifts: rotation spreads it over all configurations)")
    ap.add_argument("--augment", default="photo", choices=["basic", "photo"])
    ap.add_argument("--configs", nargs="+", default=["1x2", "1x1", "2x1", "2x1/2"],
                    help="PROCESSESxTHREADS, '/2' = half the batch per process (the 1-process global batch)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--crops", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    specs = []
    for spec in args.configs:
        nproc, threads = (int(v) for v in spec.removesuffix("/2").split("x"))
        specs.append((nproc, threads, args.batch_size // 2 if spec.endswith("/2") else args.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        crops = Path(tmp) / "crops.npz"
        n = prepare_crops(args.data, args.images, args.size, crops)
        load0 = os.getloadavg()
        runs: dict[tuple, list[dict]] = {s: [] for s in specs}
        for _ in range(args.rounds):
            for spec in specs:
                runs[spec].append(run_config(*spec, args, crops, Path(tmp)))
        load1 = os.getloadavg()
    print(f"mobilenetv2 age, {n} real face crops of {args.data.parent.name}/{args.data.name}, {args.size} px, "
          f"augment {args.augment}, gloo on CPU, {os.cpu_count()} cores; median of {args.steps} steps after 2 warm-ups, "
          f"median of {args.rounds} rounds; load average {load0[0]:.1f} before, {load1[0]:.1f} after\n")
    print("| processes x threads | batch per process (global) | s / step per process (slowest rank) | all rounds "
          "| images / s (job) | vs 1 process, first row |")
    print("|---|---|---|---|---|---|")
    base = None
    for (nproc, threads, batch), rs in runs.items():
        step = statistics.median(r["step"] for r in rs)
        images_s = nproc * batch / step
        base = base or images_s
        rounds = ", ".join(f"{r['step']:.2f}" for r in rs)
        print(f"| {nproc} x {threads} | {batch} ({nproc * batch}) | {step:.3f} | {rounds} | {images_s:.1f} "
              f"| {images_s / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
