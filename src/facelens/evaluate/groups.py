"""Group labels per scored record (source, gender, colour, age band, the face an eye came from).

Why a module of its own: training, evaluation and export break their metrics down by the same
groups, so the labels are computed in one place from the prepared records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from facelens.data.prepare import PreparedData
from facelens.data.readers import Record
from facelens.evaluate.face_ages import estimate_face_ages, resolve_age_model
from facelens.evaluate.metrics import EYE_AGE_BANDS, age_band_label
from facelens.images import is_grayscale
from facelens.tasks import task_spec


def record_groups(task: str, prep: PreparedData, crops: np.ndarray, positions: np.ndarray,
                  age_model: Path | None = None, estimate_ages: bool = True) -> dict[str, list[str]]:
    """Per-record group labels used for bias breakdowns in the metrics: the source, then the task's own
    (``GROUPERS[task]``). Eye crops cut from faces also get the age estimate ``predict`` would pick their
    calibration band by (``FACE_AGE_ESTIMATE``), from ``age_model`` (default: the shipped one), unless
    ``estimate_ages`` is False (fitting the calibration needs only the labelled ages: ``scoring.calibrate``)."""
    recs = [prep.records[i] for i in positions]
    groups: dict[str, list[str]] = {"source": [prep.sources[i] for i in positions]}
    GROUPERS[task_spec(task).name](groups, prep, recs, crops, positions)
    if estimate_ages and FACE_ID in groups and (model := resolve_age_model(age_model)) is not None:
        groups[FACE_AGE_ESTIMATE] = estimate_face_ages(prep, positions, model)
    return groups


def _age_groups(groups: dict[str, list], prep: PreparedData, recs: list[Record], crops: np.ndarray,
                positions: np.ndarray) -> None:
    """Face photos: the gender and race their labels give (UTKFace names), where known."""
    for key in ("gender", "race"):
        vals = [r.meta_dict().get(key) for r in recs]
        if any(vals):
            groups[key] = [v or "unknown" for v in vals]


def _eye_groups(groups: dict[str, list], prep: PreparedData, recs: list[Record], crops: np.ndarray,
                positions: np.ndarray) -> None:
    """Eye crops: colour, source image size, the age band of the face an eye was cut from, and that face."""
    groups["colour"] = ["grayscale" if is_grayscale(c) else "colour" for c in crops]
    sizes, bands, under_13, faces, ages = [], [], [], [], []
    for r, i in zip(recs, positions, strict=True):
        meta = r.meta_dict()
        if "eye_side" in meta:  # cut from a face: its size is the face's, its age the face's label
            sizes.append(None)
            age = float(meta["age"]) if meta.get("age") else None
            bands.append(age_band_label(age, EYE_AGE_BANDS) if age is not None else None)
            under_13.append(None if age is None else CHILD_VALUE if age < 13 else "13+")
            faces.append(prep.digests[i])
            ages.append(age)
            continue
        with Image.open(r.path) as im:
            s = min(im.size)
        sizes.append("<48px" if s < 48 else "48-63px" if s < 64 else ">=64px")
        bands.append(None)
        under_13.append(None)
        faces.append(None)
        ages.append(None)
    if any(sizes):
        groups["size"] = sizes
    if any(bands):
        groups["age_band"] = bands
        groups[CHILD_GROUP] = under_13  # the targets' split: 0-12 (eyes weak evidence) vs 13+
    if any(faces):
        groups[FACE_ID] = faces
    if any(a is not None for a in ages):
        groups[FACE_AGE] = ages


#: Per task (``facelens.tasks``): adds the task's group labels to ``groups`` (which holds the source).
GROUPERS: dict[str, Callable[[dict[str, list], PreparedData, list[Record], np.ndarray, np.ndarray], None]] = {
    "age": _age_groups, "eyes": _eye_groups}


#: ``record_groups`` key of the face an eye crop was cut from (an id for pairing, not a breakdown).
FACE_ID = "face"
#: ``record_groups`` key of the labelled age (years, a float) of the face an eye crop was cut from: what the
#: metrics are broken down by (bands of the true age).
FACE_AGE = "face_age"
#: ``record_groups`` key of the age model's estimate for that face: what picks the face's calibration band,
#: as in ``predict`` (``evaluate.face_ages``); absent without an age model.
FACE_AGE_ESTIMATE = "face_age_estimate"
#: Keys of ``record_groups`` that pair or describe records but are not breakdowns of the metrics.
NOT_BREAKDOWNS = (FACE_ID, FACE_AGE, FACE_AGE_ESTIMATE)
#: ``record_groups`` key and value marking a crop of a face under 13 by its label (eye task).
CHILD_GROUP, CHILD_VALUE = "child_or_not", "0-12"
