"""How noisy are the age labels? An estimate from byte-identical copies, and what it implies.

Both age sets hold the same photo more than once under separate labels (see
../shared/data/README.md). One photo has one true age, so the spread of its copies' labels is
label noise; pooled over all copies it bounds what *any* model can score on that set: RMSE
no lower than the noise std, R² no higher than 1 - noise² / label variance. The duplicates
are a selected sample (photos filed twice may be filed wrongly more often), so the numbers are
indicative; they say whether a target is plausible, not what a model will reach.

    python benchmarks/label_noise.py
    python benchmarks/label_noise.py --data ../shared/data/faces-20-50/train --json out.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facelens.data.hygiene import check_hygiene
from facelens.data.readers import read_dataset
from facelens.evaluate.metrics import noise_limits
from facelens.fileio import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [ROOT.parent / "shared/data/utkface", ROOT.parent / "shared/data/faces-20-50/train"]


def noise_report(source: Path) -> dict:
    records = read_dataset(source, "age").records
    est = check_hygiene(records, policy="keep-all").copy_label_noise  # the figure `train` prints (90% interval)
    ages = np.array([float(r.label) for r in records])
    row = {"data": str(source), "images": len(records), "label_std": float(ages.std()), **est}
    if est["noise_std"] is not None:
        row |= noise_limits(est["noise_std"], row["label_std"])
        row["r2_ceiling_range"] = [noise_limits(est["high"], row["label_std"])["r2_ceiling"],
                                   noise_limits(est["low"], row["label_std"])["r2_ceiling"]]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", type=Path, help="age dataset (repeatable); default: both shared sets")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = [noise_report(d) for d in (args.data or DEFAULT_DATA)]
    print("| data | images | copy groups (conflicting) | label noise std [90%] | label std | RMSE floor | R² ceiling [90%] |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["noise_std"] is None:
            print(f"| {r['data']} | {r['images']} | 0 | no copies: no estimate | {r['label_std']:.2f} | - | - |")
            continue
        lo, hi = r["r2_ceiling_range"]
        print(f"| {r['data']} | {r['images']} | {r['groups']} ({r['conflicting']}) | {r['noise_std']:.2f} "
              f"[{r['low']:.2f}, {r['high']:.2f}] | {r['label_std']:.2f} | {r['rmse_floor']:.2f} | "
              f"{r['r2_ceiling']:.2f} [{lo:.2f}, {hi:.2f}] |")
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
