"""Can the flip TTA share the network's first blocks? Mean of g(f(x)) and g(mirror(f(x))) instead of g(f(x)) and
g(f(mirror(x))), where f is the first k blocks of the backbone and g the rest.

Why: on AVX2-only CPUs the shipped age file runs 300 faces/s at batch 32 against a 400 target because every face
runs twice (docs/experiments.md). Sharing the first k blocks makes a face cost 2 - share(k) passes, where share(k)
is those blocks' part of the multiply-adds; 400/s needs a share of about 0.55 or more (block 11 onwards at 128 px).
It only works if mirroring the k-th block's feature map stands in for mirroring the photo, which this measures on
the validation split (flip TTA with nothing shared is the shipped answer, and the row every other is paired with).
No retraining: the shipped network's weights as they are.

    python benchmarks/age_shared_flip.py [--model models/age-mobilenetv2.pt] [--blocks 0,1,4,7,11,12,14,17]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from targets import AGE_DATA

from facelens.evaluate.metrics import paired_difference
from facelens.infer.postprocess import age_from_bins
from facelens.models.checkpoint import load_network
from facelens.models.wrappers import to_input
from facelens.train.export import load_split_crops


def block_shares(features: torch.nn.Sequential, size: int) -> list[float]:
    """Share of the backbone's convolution multiply-adds done by its first k blocks, for k = 0..len(features)."""
    macs: list[int] = []

    def count(mod: torch.nn.Conv2d, _inp, out: torch.Tensor) -> None:
        macs.append(out.numel() * mod.weight[0].numel())

    per_block, x = [], torch.zeros(1, 3, size, size)
    with torch.no_grad():
        for block in features:
            macs.clear()
            hooks = [m.register_forward_hook(count) for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
            x = block(x)
            for h in hooks:
                h.remove()
            per_block.append(sum(macs))
    return list(np.concatenate([[0], np.cumsum(per_block)]) / sum(per_block))


@torch.no_grad()
def shared_flip_logits(net: torch.nn.Module, crops: np.ndarray, ks: list[int], batch: int = 128) -> dict[int, np.ndarray]:
    """Per k: the logits averaged over the crop and its mirror image taken after the first k backbone blocks."""
    norm, body = net[0], net[1]
    features = body.features

    def rest(h: torch.Tensor, k: int) -> torch.Tensor:
        for block in features[k:]:
            h = block(h)
        return body.classifier(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))

    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for s in range(0, len(crops), batch):
        acts = [norm(to_input(crops[s : s + batch], torch.device("cpu")))]
        for block in features:
            acts.append(block(acts[-1]))
        one = rest(acts[-1], len(features))
        for k in ks:
            out[k].append(((one + rest(torch.flip(acts[k], dims=[3]), k)) / 2).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/age-mobilenetv2.pt"), help="an age model.pt (MobileNetV2)")
    ap.add_argument("--blocks", default="0,1,4,7,11,12,14,17", help="k values (0: the shipped flip TTA)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    meta, net = load_network(args.model)
    ks = sorted({0, *map(int, args.blocks.split(","))})
    shares = block_shares(net[1].features, meta["input_size"])
    val = load_split_crops(meta, AGE_DATA, log=lambda m: None)[1]["val"]
    logits = shared_flip_logits(net, val.crops, ks)
    errors = {k: np.abs(age_from_bins(v)[0] - val.y) for k, v in logits.items()}
    print(f"validation, n = {len(val.y)}; {args.model}\n")
    print("| blocks shared | share of the multiply-adds | passes per face | MAE | minus flip TTA, paired [95%] |")
    print("|---|---|---|---|---|")
    for k in ks:
        d = paired_difference(errors[0], errors[k])
        print(f"| {k} | {shares[k]:.2f} | {2 - shares[k]:.2f} | {errors[k].mean():.3f} | "
              f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")


if __name__ == "__main__":
    main()
