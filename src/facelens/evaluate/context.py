"""Context check: does a face's age answer move when it comes with or without its surroundings?

A model that has learned where a photo comes from (tight, border-padded UTKFace chips against
photos with hair, neck and background) answers differently for the *same face* framed two ways.
For each photo this cuts a UTKFace-style chip around its main face (the geometry measured on
2,000 UTKFace files: eyes 0.40 of the chip apart, their centre at (0.48, 0.30) of the chip, the
chip 200 px square) and runs the whole prediction path on both the photo and the chip: detect,
align with the model's own template, predict. The mean absolute difference of the two answers is
the context sensitivity; zero means the framing does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facelens.data.crops import face_crop_from_image
from facelens.errors import ImageLoadError
from facelens.evaluate.metrics import age_band_label
from facelens.face.align import CHIP_SIZE, UTKFACE_CHIP, FaceTemplate, align_face
from facelens.images import load_image
from facelens.infer.postprocess import decode_age
from facelens.infer.predictor import Predictor


def tight_chip(rgb: np.ndarray, anchor_points: np.ndarray) -> np.ndarray:
    """The face of ``rgb`` re-cut as a tight UTKFace-style chip (what the photo would look like in UTKFace)."""
    return align_face(rgb, anchor_points, CHIP_SIZE, UTKFACE_CHIP)[0]


def _age(pred: Predictor, crop: np.ndarray) -> float:
    return float(decode_age(pred(crop[None]), pred.model_meta)[0][0])


def context_pairs(pred: Predictor, paths: Sequence[Path], log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
    """(answer on the photo, answer on its tight chip) per path; NaN where either has no face."""
    template = FaceTemplate.from_meta(pred.model_meta.crop)
    size = pred.model_meta.input_size
    out = np.full((len(paths), 2), np.nan)
    for i, p in enumerate(tqdm(paths, desc="context check", unit="img")):
        try:
            rgb = load_image(p)
        except ImageLoadError as exc:
            log(f"context check: {exc}")
            continue
        whole = face_crop_from_image(rgb, size, template)
        if whole is None:
            continue
        chip = face_crop_from_image(tight_chip(rgb, whole[1].anchor_points()), size, template)
        if chip is None:
            continue
        out[i] = _age(pred, whole[0]), _age(pred, chip[0])
    return out[:, 0], out[:, 1]


def context_summary(on_photo: np.ndarray, on_chip: np.ndarray, ages: np.ndarray, sources: Sequence[str]) -> dict:
    """Mean |photo - chip| answer (and the signed mean, chip minus photo) overall, per source and per age band."""
    ok = np.isfinite(on_photo) & np.isfinite(on_chip)
    diff = (on_chip - on_photo)[ok]
    src = np.asarray(sources)[ok]
    bands = np.array([age_band_label(a) for a in np.asarray(ages)[ok]])

    def row(m: np.ndarray) -> dict:
        return {"n": int(m.sum()), "mean_abs_diff": float(np.abs(diff[m]).mean()), "mean_diff": float(diff[m].mean())}

    everything = np.ones(len(diff), bool)
    out = {"n_pairs": int(ok.sum()), "n_skipped": int((~ok).sum()), **(row(everything) if len(diff) else {})}
    out["by_source"] = {s: row(src == s) for s in sorted(set(src.tolist()))}
    out["by_age_band"] = {b: row(bands == b) for b in sorted(set(bands.tolist()), key=lambda b: int(b.rstrip("+").split("-")[0]))}
    return out


def context_lines(summary: dict) -> list[str]:
    """Plain-text lines of a ``context_summary``."""
    if not summary.get("n"):
        return ["context check: no photo gave a face both ways"]
    lines = [f"context check (same face: photo vs tight chip), mean |difference| {summary['mean_abs_diff']:.2f} years "
             f"(chip minus photo {summary['mean_diff']:+.2f}), n = {summary['n']}"]
    for key in ("by_source", "by_age_band"):
        lines.append("  " + " | ".join(f"{k}: {r['mean_abs_diff']:.2f} (n={r['n']})" for k, r in summary[key].items()))
    return lines
