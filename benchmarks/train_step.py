"""Seconds per training step of the age network, by precision (and frozen blocks), on this machine.

Why: on a 2-core CPU the training budget decides how many epochs (and what input size) a
recipe can afford, so the cost of one optimiser step is the number to know before choosing
``--precision`` or ``--frozen-blocks``. Random inputs stand in for crops: a step's cost does
not depend on the pixels. Each row is the median over ``--steps`` steps after two warm-up steps.

    python benchmarks/train_step.py                          # fp32 vs bf16, 128 px, batch 64
    python benchmarks/train_step.py --size 112 --frozen-blocks 0 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from facelens.agebins import AGE_MIN
from facelens.models.factory import create_model, freeze_early_blocks
from facelens.models.wrappers import to_input
from facelens.train.loop import FitConfig, check_precision, native_bf16, optimizer_step
from facelens.train.runner import resolve_device


def step_seconds(precision: str, size: int, batch: int, frozen: int, steps: int, device: torch.device) -> float:
    """Median wall time of one full step (augment-free forward, loss, backward, AdamW update)."""
    check_precision(precision, device)
    torch.manual_seed(0)
    model = create_model("mobilenetv2", "age", pretrained=False, frozen_blocks=0)
    freeze_early_blocks(model, frozen)  # the factory insists on pretrained weights for this; the cost does not
    model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = to_input(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8), device)
    y = torch.randint(AGE_MIN, 90, (batch,), device=device).float()
    cfg = FitConfig(head="age-bins", precision=precision)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        optimizer_step(model, opt, x, y, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--frozen-blocks", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # the rule training uses: auto, cpu, cuda[:N], checked
    print(f"mobilenetv2 age, {args.size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, {device}, "
          f"native bfloat16: {'yes' if native_bf16(device) else 'no (bf16 is emulated)'}\n")
    print("| precision | frozen blocks | s / step | ms / image |")
    print("|---|---|---|---|")
    for frozen in args.frozen_blocks:
        for precision in args.precision:
            s = step_seconds(precision, args.size, args.batch_size, frozen, args.steps, device)
            print(f"| {precision} | {frozen} | {s:.3f} | {1000 * s / args.batch_size:.1f} |")


if __name__ == "__main__":
    main()
