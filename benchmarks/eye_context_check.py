"""Context check for the eye model: does P(female) move when the same face comes without its surroundings?

The age context check (``facelens evaluate age --context-check N``, ``evaluate.context``) for the eye model: up
to ``--n`` test-split photos per face source (seeded pick), each answered through the whole prediction path
(``Analyzer``, largest face) as it is and re-cut as a tight UTKFace-style chip around its face
(``evaluate.context.tight_chip``). Reports mean |P(female) on photo - on chip| and how often the side of 0.5 flips,
overall, per source and per age band.

    python benchmarks/eye_context_check.py --n 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facelens.api import Analyzer, default_model_path
from facelens.data.crops import face_crop_from_image
from facelens.data.prepare import prepare_records
from facelens.evaluate.context import tight_chip
from facelens.evaluate.metrics import age_band_label
from facelens.face.align import TIGHT_AGE_TEMPLATE
from facelens.images import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="photos per source")
    ap.add_argument("--eye-model", type=Path, default=None)
    args = ap.parse_args()
    analyzer = Analyzer(age_model=None, eye_model=args.eye_model or default_model_path("eyes"))
    prep = prepare_records("age", [str(DATA / "utkface"), str(DATA / "all-age-faces")], "content", 0,
                           (0.75, 0.1, 0.15), log=lambda m: None)
    rng = np.random.default_rng(0)
    src = np.asarray(prep.sources)
    test = np.flatnonzero(prep.splits == "test")
    pick = np.sort(np.concatenate([rng.permutation(test[src[test] == s])[: args.n] for s in sorted(set(src[test]))]))
    rows = []
    for i in pick:
        rgb = load_image(prep.records[i].path)
        found = face_crop_from_image(rgb, 128, TIGHT_AGE_TEMPLATE)
        if found is None:
            continue
        on_photo, on_chip = analyzer.analyze(rgb), analyzer.analyze(tight_chip(rgb, found[1].anchor_points()))
        if not on_photo.faces or not on_chip.faces:
            continue
        rows.append((src[i], age_band_label(prep.targets[i]), on_photo.faces[0].sex.p_female, on_chip.faces[0].sex.p_female))
    s, b = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    p, c = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])

    def line(name: str, m: np.ndarray) -> str:
        return (f"{name}: mean |photo - chip| {np.mean(np.abs(p[m] - c[m])):.3f}, side of 0.5 flips "
                f"{np.mean((p[m] >= 0.5) != (c[m] >= 0.5)):.3f}, n = {int(m.sum())}")

    print(line("all", np.ones(len(rows), bool)))
    for name in sorted(set(s)):
        print(line(name, s == name))
    for name in dict.fromkeys(sorted(set(b), key=lambda x: float(x.split("-")[0].rstrip("+")))):
        print(line(name, b == name))


if __name__ == "__main__":
    main()
