"""Fuzz the decoding gate at scale: seeded mutations of every allowed format (tests/fuzz_corpus.py).

Every input must either decode to an RGB uint8 array or raise an ``ImageLoadError``; any
other exception "escapes" and is printed with the seed and index that reproduce it. Also
reports the errors by reason, inputs per second, the slowest input and the peak RSS.
``--analyzer N`` also sends the first N inputs through ``Analyzer.analyze`` (the shipped models).

    python benchmarks/fuzz_images.py                  # 100,000 inputs (about 15 s on this VM)
    python benchmarks/fuzz_images.py --count 20000 --seed 3 --analyzer 2000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz_corpus import fuzzed_inputs  # noqa: E402

from facelens.errors import ImageLoadError  # noqa: E402
from facelens.images import load_image  # noqa: E402

CHUNK = 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0, help="first seed; each chunk of 1,000 inputs uses the next one")
    ap.add_argument("--analyzer", type=int, default=0, help="also run this many inputs through Analyzer.analyze")
    args = ap.parse_args()

    reasons: Counter = Counter()
    escaped: list[str] = []
    slowest = (0.0, "")
    t0 = time.perf_counter()
    done = 0
    analyzer_inputs = []
    for chunk, seed in enumerate(range(args.seed, args.seed + (args.count + CHUNK - 1) // CHUNK)):
        n = min(CHUNK, args.count - chunk * CHUNK)
        for name, data in fuzzed_inputs(seed, n):
            t1 = time.perf_counter()
            try:
                load_image(data, name=name)
                reasons["decoded"] += 1
            except ImageLoadError as exc:
                reasons[exc.reason] += 1
            except BaseException as exc:  # noqa: BLE001 - what this script is looking for
                escaped.append(f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            dt = time.perf_counter() - t1
            slowest = max(slowest, (dt, name))
            if len(analyzer_inputs) < args.analyzer:
                analyzer_inputs.append((name, data))
            done += 1
    seconds = time.perf_counter() - t0
    print(f"load_image: {done:,} fuzzed inputs in {seconds:.1f} s ({done / seconds:,.0f}/s); "
          f"slowest {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    print("  outcomes: " + ", ".join(f"{k} {v:,}" for k, v in reasons.most_common()))
    if analyzer_inputs:
        from facelens.api import Analyzer

        analyzer = Analyzer()
        t1 = time.perf_counter()
        errors = 0
        for name, data in analyzer_inputs:
            try:
                errors += analyzer.analyze(data, name=name).error is not None
            except BaseException as exc:  # noqa: BLE001
                escaped.append(f"Analyzer {name}: {type(exc).__name__}: {exc}")
        print(f"Analyzer.analyze: {len(analyzer_inputs):,} inputs in {time.perf_counter() - t1:.1f} s, "
              f"{errors:,} error results")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"escaped exceptions: {len(escaped)}")
    for e in escaped[:20]:
        print(e)
    sys.exit(1 if escaped else 0)


if __name__ == "__main__":
    main()
