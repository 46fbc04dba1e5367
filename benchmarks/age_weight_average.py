"""Does averaging the *weights* of age networks trained with different seeds give a better single network?

A "model soup" (Wortsman et al., ICML 2022): networks fine-tuned from the same ImageNet weights often lie
in one basin of the loss, so the average of their weights is itself a good network, better than each,
at the cost of one network per face (an average of their answers, ``age_ensembles.py``, costs one pass per
network, which the 400 faces/s target does not allow). Averaged BatchNorm statistics do not belong to
the averaged weights, so they are also recomputed on training crops (augmented as in training; the
statistics of the photos a network sees in service are not what its weights were fitted with).

Scores, on the validation split and with flip TTA (the shipped answer), each network, the average with
averaged BatchNorm statistics and the average with recomputed ones, each paired against the first
``--model``. The rule this was run under: ``docs/rules/RULE-age-seed-full-fp32.txt``.

    python benchmarks/age_weight_average.py --model models/age-mobilenetv2.pt --model runs/seed-full-s1-fp32/mobilenetv2/model.pt \
        [--out runs/soup.pt]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from age_prior_adjustment import summary  # same folder: the shared validation summary
from targets import AGE_DATA
from torch.optim.swa_utils import update_bn

from facelens.data.prepare import prepare_as_model
from facelens.evaluate.metrics import paired_difference
from facelens.infer.postprocess import age_from_bins
from facelens.models.checkpoint import load_network
from facelens.models.factory import create_model
from facelens.models.meta import ModelMeta
from facelens.models.wrappers import FlipAverage, to_input
from facelens.train.augment import PHOTO_AUGMENT, augment_batch
from facelens.train.checkpoint import save_checkpoint
from facelens.train.loop import predict_outputs

#: Metadata that must agree for two networks' weights to mean the same thing.
SAME_FIELDS = ("task", "arch", "head", "input_size", "crop", "pipeline")


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float tensors; integer buffers (BatchNorm's batch counters) from the first."""
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"the state dicts hold different tensors: {sorted(keys ^ set(s))[:5]}")
    return {k: (torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                if states[0][k].is_floating_point() else states[0][k].clone()) for k in states[0]}


def recompute_batchnorm(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 64, seed: int = 0) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``crops``, augmented as
    ``--augment photo`` does in training (``torch.optim.swa_utils.update_bn``)."""
    gen = torch.Generator().manual_seed(seed)
    batches = (augment_batch(to_input(crops[s : s + batch_size], torch.device("cpu")), PHOTO_AUGMENT, gen)
               for s in range(0, len(crops), batch_size))
    update_bn(batches, model)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", required=True, help="PyTorch age-bins model (repeat: 2 or more)")
    ap.add_argument("--bn-images", type=int, default=4096, help="training crops used to recompute BatchNorm statistics")
    ap.add_argument("--out", type=Path, help="also write the average with recomputed BatchNorm statistics here")
    args = ap.parse_args()
    if len(set(args.model)) < 2 or len(set(args.model)) < len(args.model):
        raise SystemExit("give at least two different --model")
    torch.manual_seed(0)
    loaded = [load_network(m) for m in args.model]  # (metadata as stored, network without TTA)
    metas = [ModelMeta.from_dict(meta) for meta, _ in loaded]
    for field in SAME_FIELDS:
        values = {str(getattr(m, field, None)) for m in metas}
        if len(values) > 1:
            raise SystemExit(f"the models differ in {field} ({sorted(values)}): their weights cannot be averaged")
    prep = prepare_as_model(loaded[0][0], AGE_DATA, log=lambda m: None)
    val = np.flatnonzero(prep.splits == "val")
    cs, pos = prep.model_crops(val, metas[0], desc="val crops")
    y, src = prep.targets[pos], np.array(prep.sources)[pos]

    nets = {str(p): net for p, (_, net) in zip(args.model, loaded, strict=True)}
    soup = create_model(metas[0].arch, metas[0].task, pretrained=False)
    soup.load_state_dict(average_state_dicts([net.state_dict() for net in nets.values()]))
    nets["average, BatchNorm statistics averaged"] = soup.eval()
    rebuilt = copy.deepcopy(soup)
    train = np.flatnonzero(prep.splits == "train")
    pick = np.sort(np.random.default_rng(0).choice(train, size=min(args.bn_images, len(train)), replace=False))
    recompute_batchnorm(rebuilt, prep.model_crops(pick, metas[0], desc="BatchNorm crops")[0].crops)
    nets["average, BatchNorm statistics recomputed"] = rebuilt

    device = torch.device("cpu")
    outs = {name: predict_outputs(FlipAverage(net).eval(), cs.crops, device) for name, net in nets.items()}
    first = np.abs(age_from_bins(outs[str(args.model[0])])[0] - y)
    print(f"validation split, n = {len(y)}; every answer with flip TTA; paired = MAE minus the first model's\n")
    print("| answer | val score | MAE | paired [95%] | UTKFace / AAF / 20-50 MAE | 20-50 RMSE | bias 60+ |")
    print("|---|---|---|---|---|---|---|")
    for name, o in outs.items():
        r = summary(y, o, src)
        s = r["by_source"]
        d = paired_difference(first, np.abs(age_from_bins(o)[0] - y))
        print(f"| {name} | {r['score']:.3f} | {r['mae']:.3f} | {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | "
              f"{s['utkface']['mae']:.2f} / {s['all-age-faces']['mae']:.2f} / {s['faces-20-50']['mae']:.2f} | "
              f"{s['faces-20-50']['rmse']:.3f} | {r['bias']['60+']:+.1f} |")
    if args.out:
        meta = dict(loaded[0][0])
        meta["training"] = dict(meta.get("training") or {}) | {"weights_averaged_from": [str(p) for p in args.model]}
        meta.pop("metrics", None)  # the first model's test figures do not describe the average
        save_checkpoint(args.out, {"meta": meta, "state_dict": rebuilt.state_dict()})
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
