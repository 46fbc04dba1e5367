"""Is averaging two age networks worth their cost, compared with one network and its mirror image?

Flip TTA (the shipped answer) runs one network twice; two different networks without TTA cost the
same, and three or four passes would break the 400 faces/s target. This scores, on the validation
split, each model with and without flip TTA and the average of the logits of every pair (without
TTA: the same cost as one model with it; with TTA: twice the cost).

    python benchmarks/age_ensembles.py --model models/age-mobilenetv2.pt --model runs/age-9ep/mobilenetv2/model.pt
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from age_prior_adjustment import summary  # same folder: the shared validation summary
from targets import AGE_DATA

from facelens.data.prepare import prepare_as_model
from facelens.models.checkpoint import load_checkpoint, load_network
from facelens.models.meta import ModelMeta
from facelens.models.wrappers import FlipAverage
from facelens.train.loop import predict_outputs


def outputs_with_and_without_tta(path: Path, prep, idx: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({'<name>': logits, '<name>+tta': logits}, record positions) of one PyTorch age model."""
    meta, net = load_network(path)
    cs, pos = prep.model_crops(idx, ModelMeta.from_dict(meta), desc=f"{path.name} crops")
    cpu = torch.device("cpu")
    out = {str(path): predict_outputs(net, cs.crops, cpu), f"{path}+tta": predict_outputs(FlipAverage(net), cs.crops, cpu)}
    return {k: v.astype(np.float64) for k, v in out.items()}, pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", required=True, help="PyTorch age-bins model (repeat: 2 or more)")
    args = ap.parse_args()
    if len(args.model) < 2:
        raise SystemExit("give at least two --model")
    prep = prepare_as_model(load_checkpoint(args.model[0])["meta"], AGE_DATA, log=lambda m: None)
    idx = np.flatnonzero(prep.splits == "val")
    outs, positions = {}, []
    for m in args.model:
        o, pos = outputs_with_and_without_tta(m, prep, idx)
        outs |= o
        positions.append(pos)
    if any(not np.array_equal(positions[0], p) for p in positions[1:]):
        raise SystemExit("the models' crops cover different images (different crop settings): not comparable")
    y, src = prep.targets[positions[0]], np.array(prep.sources)[positions[0]]
    rows = {k: [k] for k in outs}
    for a, b in combinations(args.model, 2):
        rows[f"{a} + {b}"] = [str(a), str(b)]
        rows[f"{a}+tta + {b}+tta"] = [f"{a}+tta", f"{b}+tta"]
    print(f"validation split, n = {len(y)}; passes = network runs per face\n")
    print("| answer | passes | val score | MAE | UTKFace / AAF / 20-50 MAE | 20-50 RMSE | bias 60+ |")
    print("|---|---|---|---|---|---|---|")
    for name, keys in rows.items():
        r = summary(y, np.mean([outs[k] for k in keys], axis=0), src)
        s = r["by_source"]
        passes = sum(2 if k.endswith("+tta") else 1 for k in keys)
        print(f"| {name} | {passes} | {r['score']:.3f} | {r['mae']:.3f} | {s['utkface']['mae']:.2f} / "
              f"{s['all-age-faces']['mae']:.2f} / {s['faces-20-50']['mae']:.2f} | {s['faces-20-50']['rmse']:.3f} | "
              f"{r['bias']['60+']:+.1f} |")


if __name__ == "__main__":
    main()
