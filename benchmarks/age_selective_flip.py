"""Does the flip TTA's gain sit in the faces whose one-pass age distribution is wide? Mirror image only for those.

Why: on AVX2-only CPUs the shipped age file runs ~300 faces/s at batch 32 against a 400 target because every face
runs twice, and one pass alone is ~0.1 years worse (docs/experiments.md). If a face whose one-pass answer is certain
gains little from its mirror image, a second pass for a fraction f of the faces costs 1 + f passes per face and keeps
most of the gain. The gate must be a fixed threshold on something the first pass gives (here the spread, the
standard deviation in years of the one-pass age distribution), so that a face's answer never depends on the other
faces in its batch. A second gate is learnt: a ridge regression from the one-pass network's pooled features and
spread to log(0.05 + |one pass - mirror|), fitted on the training split's crops (a dot product per face at run
time). Rule: docs/rules/RULE-age-selective-flip.txt.

For each fraction f a gate's threshold is its score's (1 - f) quantile on the validation split itself (screening
only); the same f drawn at random, and drawn by |one pass - mirror| (an oracle, unknown at run time), are the
controls. Every row is paired against the full flip TTA (the shipped answer). Children's bias per source and the
context check (``--context-check`` photos per source) for the gated answers of ``--context-fractions``.

    python benchmarks/age_selective_flip.py [--model models/age-mobilenetv2.pt] [--context-check 300]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from targets import AGE_DATA

from facelens.evaluate.metrics import paired_difference
from facelens.evaluate.pipeline import run_context_check
from facelens.infer.postprocess import AGE_MIN, NUM_AGE_BINS, age_from_bins, softmax
from facelens.infer.predictor import Predictor
from facelens.models.checkpoint import load_network
from facelens.models.wrappers import to_input
from facelens.train.export import load_split_crops

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


def spread_years(logits: np.ndarray) -> np.ndarray:
    """Standard deviation (years) of each row's age distribution: how unsure the one-pass answer is."""
    p = softmax(np.asarray(logits, np.float64))
    ages = np.arange(NUM_AGE_BINS, dtype=np.float64) + AGE_MIN
    mean = p @ ages
    return np.sqrt(np.maximum(p @ ages**2 - mean**2, 0.0))


def gated_logits(one: np.ndarray, mirror: np.ndarray, use_mirror: np.ndarray) -> np.ndarray:
    """The flip TTA's logit mean where ``use_mirror``, the one-pass logits elsewhere."""
    return np.where(use_mirror[:, None], (one + mirror) / 2, one)


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas=(1.0, 10.0, 100.0, 1000.0, 10000.0), folds: int = 5,
              seed: int = 0) -> tuple[np.ndarray, float, float]:
    """(weights on the standardised inputs' scale folded back, bias, alpha) of a ridge regression, alpha by k-fold CV."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    fold = np.random.default_rng(seed).integers(0, folds, len(y))

    def solve(zz: np.ndarray, yy: np.ndarray, a: float) -> tuple[np.ndarray, float]:
        w = np.linalg.solve(zz.T @ zz + a * np.eye(zz.shape[1]), zz.T @ (yy - yy.mean()))
        return w, float(yy.mean())

    def cv_error(a: float) -> float:
        errs = []
        for k in range(folds):
            w, c = solve(z[fold != k], y[fold != k], a)
            errs.append(((z[fold == k] @ w + c - y[fold == k]) ** 2).mean())
        return float(np.mean(errs))

    best = min(alphas, key=cv_error)
    w, c = solve(z, y, best)
    return w / scale, c - float((mean / scale) @ w), best


def gate_inputs(one: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """What the learnt gate reads: the pooled features and the one-pass spread."""
    return np.concatenate([pooled, spread_years(one)[:, None]], axis=1)


@torch.no_grad()
def forward(net: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pooled features) of a normalise + MobileNetV2 age network."""
    norm, body = net[0], net[1]
    pooled = torch.nn.functional.adaptive_avg_pool2d(body.features(norm(x)), 1).flatten(1)
    return body.classifier(pooled).numpy(), pooled.numpy()


def both_passes(net: torch.nn.Module, crops: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(one-pass logits, mirror logits, one-pass pooled features) of every crop."""
    one, mirror, pooled = [], [], []
    for s in range(0, len(crops), batch):
        x = to_input(crops[s : s + batch], torch.device("cpu"))
        lo, po = forward(net, x)
        one.append(lo)
        pooled.append(po)
        mirror.append(forward(net, torch.flip(x, dims=[3]))[0])
    return np.concatenate(one), np.concatenate(mirror), np.concatenate(pooled)


class GatedFlip(Predictor):
    """A torch age network that runs the mirror image only for faces whose gate score exceeds ``threshold``.

    ``score(one_pass_logits, pooled_features)`` is the gate: the spread, or the learnt ridge gate.
    """

    backend = "torch"

    def __init__(self, net: torch.nn.Module, meta: dict, score: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 threshold: float) -> None:
        self.net, self.meta, self.score, self.threshold = net, meta, score, threshold

    def _run(self, crops: np.ndarray) -> np.ndarray:
        x = to_input(crops, torch.device("cpu"))
        one, pooled = forward(self.net, x)
        use = self.score(one, pooled) > self.threshold
        mirror = np.zeros_like(one)
        if use.any():
            mirror[use] = forward(self.net, torch.flip(x[torch.from_numpy(use)], dims=[3]))[0]
        return gated_logits(one, mirror, use)


def children_bias(ages: np.ndarray, y: np.ndarray, sources: np.ndarray) -> str:
    kids = y < 10
    return " / ".join(f"{(ages[kids & (sources == s)] - y[kids & (sources == s)]).mean():+.2f}"
                      for s in sorted(set(sources[kids].tolist())))


def answer_gap(one: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """|one-pass age - mirror age| per face: what the oracle ranks by, and (as log(0.05 + it)) what the learnt gate predicts."""
    return np.abs(age_from_bins(one)[0] - age_from_bins(mirror)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/age-mobilenetv2.pt"), help="an age model.pt (age-bins head)")
    ap.add_argument("--context-check", type=int, default=300, help="photos per source for the context check (0: none)")
    ap.add_argument("--context-fractions", default="0.3,0.4", help="fractions f whose gates the context check runs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    meta, net = load_network(args.model)
    prep, splits = load_split_crops(meta, AGE_DATA, log=lambda m: None)
    val, train = splits["val"], splits["train"]
    sources = np.asarray(prep.sources)[val.positions]
    one, mirror, pooled = both_passes(net, val.crops)
    t_one, t_mirror, t_pooled = both_passes(net, train.crops)
    w, c, alpha = fit_ridge(gate_inputs(t_one, t_pooled), np.log(0.05 + answer_gap(t_one, t_mirror)))
    scores = {"spread": lambda lo, po: spread_years(lo), "learnt": lambda lo, po: gate_inputs(lo, po) @ w + c}
    values = {name: score(one, pooled) for name, score in scores.items()}
    gap = answer_gap(one, mirror)
    full = age_from_bins((one + mirror) / 2)[0]
    err_full = np.abs(full - val.y)
    in_2050 = sources == "faces-20-50"
    rng = np.random.default_rng(0)
    gates = {"one pass": np.zeros(len(gap), bool)}
    thresholds: dict[tuple[str, float], float] = {}
    for f in FRACTIONS:
        k = int(round(f * len(gap)))
        for name, v in values.items():
            thresholds[name, f] = float(np.quantile(v, 1 - f))
            gates[f"{name}, f = {f:.1f}"] = v > thresholds[name, f]
        gates[f"random, f = {f:.1f}"] = np.isin(np.arange(len(gap)), rng.choice(len(gap), k, replace=False))
        gates[f"oracle, f = {f:.1f}"] = np.isin(np.arange(len(gap)), np.argsort(-gap)[:k])
    print(f"validation, n = {len(val.y)}; {args.model}; learnt gate fitted on {len(train.y)} training crops "
          f"(ridge alpha {alpha:g}); correlation with |one pass - mirror|: spread "
          f"{np.corrcoef(values['spread'], gap)[0, 1]:.2f}, learnt "
          f"{np.corrcoef(values['learnt'], np.log(0.05 + gap))[0, 1]:.2f} (of its log)\n")
    print("| gate | share mirrored | MAE | minus full flip TTA, paired [95%] | 20-50 RMSE | bias 0-9 per source |")
    print("|---|---|---|---|---|---|")
    print(f"| full flip TTA | 1.00 | {err_full.mean():.3f} | | {np.sqrt(((full - val.y)[in_2050] ** 2).mean()):.3f} | "
          f"{children_bias(full, val.y, sources)} |")
    for name, use in gates.items():
        a = age_from_bins(gated_logits(one, mirror, use))[0]
        d = paired_difference(err_full, np.abs(a - val.y))
        print(f"| {name} | {use.mean():.2f} | {np.abs(a - val.y).mean():.3f} | {d['difference']:+.3f} "
              f"[{d['low']:+.3f}, {d['high']:+.3f}] | {np.sqrt(((a - val.y)[in_2050] ** 2).mean()):.3f} | "
              f"{children_bias(a, val.y, sources)} |")
    if args.context_check <= 0:
        return
    print(f"\ncontext check, {args.context_check} validation photos per source (children 3-9 in brackets):")
    rows = [("full flip TTA", scores["spread"], -1.0), ("one pass", scores["spread"], np.inf)]
    rows += [(f"{name}, f = {f}", scores[name], thresholds[name, float(f)])
             for f in args.context_fractions.split(",") for name in scores]
    for name, score, t in rows:
        s = run_context_check(GatedFlip(net, meta, score, t), prep, val.positions, args.context_check, log=print)
        print(f"  {name}: {s['mean_abs_diff']:.2f} ({s['by_age_band'].get('3-9', {}).get('mean_abs_diff', float('nan')):.2f})")


if __name__ == "__main__":
    main()
