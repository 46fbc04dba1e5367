"""The age model's estimate for the faces eye crops were cut from: what ``predict`` picks an eye calibration band by.

Why: a face's P(female) is calibrated per age band (children's eyes say little, so their answers are
flattened), and ``predict`` can only know the age from the age model. Scored with the band of the
labelled age, the evaluation measured another decoder than the one users get: teenagers estimated as
adults get the adults' sharper calibration in ``predict``. With the same estimate here, evaluation and
``predict`` decode alike (the bands are still fitted on labelled ages: fitting on the estimate was
measured and not better, docs/experiments.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facelens.data.prepare import PreparedData
from facelens.infer.postprocess import decode_age
from facelens.infer.predictor import load_predictor
from facelens.tasks import default_model_path


def resolve_age_model(age_model: Path | str | None) -> Path | None:
    """``age_model``, or the shipped age model (as ``predict`` uses it) when None; None if that is not installed."""
    if age_model is not None:
        return Path(age_model)
    path = default_model_path("age")
    return path if path.is_file() else None


def estimate_face_ages(prep: PreparedData, positions: np.ndarray, age_model: Path) -> list[float | None]:
    """Per record position, the age model's estimate of the record's photo (its largest face, cut and
    decoded as ``predict`` does); None for records that are not cut from a face photo or show no face."""
    pred = load_predictor(age_model)
    is_face = np.array(["eye_side" in prep.records[i].meta_dict() for i in positions], dtype=bool)
    out: list[float | None] = [None] * len(positions)
    if not is_face.any():
        return out
    faces = np.asarray(positions)[is_face]
    photos = {str(prep.records[i].path): i for i in faces}  # both eyes of a face share one photo
    cs, pos = prep.model_crops(np.array(list(photos.values())), pred.model_meta, desc="age crops")
    ages = decode_age(pred(cs.crops), pred.model_meta)[0]
    by_path = {str(prep.records[i].path): float(a) for i, a in zip(pos, ages, strict=True)}
    for k, i in enumerate(positions):
        if is_face[k]:
            out[k] = by_path.get(str(prep.records[i].path))
    return out
