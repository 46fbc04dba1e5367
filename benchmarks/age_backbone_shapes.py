"""Faces/s of thinner MobileNetV2 shapes for the age model, exported as the shipped file is (flip TTA, int8).

Why: on AVX2-only CPUs the shipped age file runs ~300 faces/s at batch 32 against a 400 target; this says how much
thinner the network would have to be (docs/experiments.md, "Half the hidden channels"). Speed does not depend on
the weights, so the networks are untrained (random weights, random calibration crops): input normalisation, flip
TTA and the export's int8 quantisation (stem and head in float32) as in the product; ONNX Runtime, batch 32.

    python benchmarks/age_backbone_shapes.py [--threads 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torch import nn

from facelens.models.factory import Normalize
from facelens.models.wrappers import FlipAverage
from facelens.train.export import quantize_int8, write_onnx

SIZE = 128
#: name -> (expansion ratio of every block after the first, width multiplier); (6, 1.0) is the shipped shape.
SHAPES = {"expansion 6 (shipped)": (6, 1.0), "expansion 4": (4, 1.0), "expansion 3": (3, 1.0), "width 0.75": (6, 0.75)}


def age_network(expansion: int, width: float) -> nn.Module:
    """The product's age network (normalisation, MobileNetV2 body, 101 age bins) with another block shape."""
    setting = [[1, 16, 1, 1]] + [[expansion, c, n, s] for c, n, s in
                                 ((24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))]
    body = torchvision.models.mobilenet_v2(width_mult=width, inverted_residual_setting=setting)
    body.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(body.last_channel, 101))
    return nn.Sequential(Normalize(True), body).eval()


def faces_per_second(path: Path, threads: int, runs: int, batch: int = 32, batches: int = 10) -> float:
    """Median over ``runs`` timed runs (after a warm-up) of ``batches`` batches of random crops."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (batch, 3, SIZE, SIZE)).astype(np.float32)
    session.run(None, {"crops": x})
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(batches):
            session.run(None, {"crops": x})
        rates.append(batch * batches / (time.perf_counter() - t0))
    return float(np.median(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    calibration = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    print("| network (flip TTA) | parameters | faces/s fp32 | faces/s int8 |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (expansion, width) in SHAPES.items():
            net = age_network(expansion, width)
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            write_onnx(FlipAverage(net), SIZE, fp32)
            quantize_int8(fp32, int8, calibration)
            params = sum(p.numel() for p in net.parameters()) / 1e6
            print(f"| {name} | {params:.2f} M | {faces_per_second(fp32, args.threads, args.runs):.0f} | "
                  f"{faces_per_second(int8, args.threads, args.runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
