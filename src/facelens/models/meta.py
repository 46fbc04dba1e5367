"""A model's metadata, typed: what a trained model says about itself (issue #19).

Every facelens model carries a JSON object describing it: embedded in an ONNX file under the key
``facelens_meta``, stored as ``ck["meta"]`` in a ``.pt`` checkpoint and written beside both as
``meta.json`` / ``models/*.json``. It used to be read as a plain dict with ``.get(...)`` defaults
scattered over the predictor, the decoders and the API, so two readers could disagree on what a
missing key means. ``ModelMeta`` states each field the code reads once, with its default (cf. timm's
typed ``PretrainedCfg``).

Why ``extra="allow"`` and ``to_dict``: files written by older or newer versions carry keys this
class does not know; they are kept, and ``ModelMeta.from_dict(d).to_dict() == d`` (same keys, same
order, same values) for every shipped model (``tests/test_model_meta.py``), so re-exporting or
re-carding a model never loses or rewrites what it said about itself.

Torch-free on purpose: the ONNX-only prediction path reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from facelens.agebins import head_width
from facelens.tasks import TaskSpec, task_spec

#: Under this age (years) a face is a child's: the eyes say little about sex before puberty, so the sex
#: estimate of such a face (by the age estimate) carries a caution and, in older models, its own temperature.
CHILD_AGE = 13


def in_age_band(ages: np.ndarray, low: int, high: int | None) -> np.ndarray:
    """A boolean per age: in [low, high) (``high`` None: no upper bound); NaN, an unknown age, is in no band."""
    inside = ages >= low
    return inside if high is None else inside & (ages < high)


class BandCalibration(BaseModel):
    """Calibration of whole-face eye logits for faces aged [low, high): p = sigmoid(logit / temperature + offset).

    Why per age band and why an offset: the eyes' evidence and its bias change with age (children's and
    teenagers' answers lean female, those of people over 60 male); one temperature cannot remove a lean.
    Fitted on validation faces by their labelled age; ``predict`` and evaluation choose the band by the age estimate.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: Inclusive lower bound, whole years.
    low: int
    #: Exclusive upper bound, whole years; None: no upper bound.
    high: int | None = None
    temperature: float
    offset: float = 0.0
    #: Validation faces it was fitted on.
    n: int | None = None

    def contains(self, ages: np.ndarray) -> np.ndarray:
        """A boolean per age (NaN, an unknown age, is in no band)."""
        return in_age_band(ages, self.low, self.high)


class Decoding(BaseModel):
    """The part of the metadata that turns raw outputs into estimates: the head and its calibration.

    Why a class of its own: decoding is also asked of calibration results alone (``evaluate.scoring.calibrate``
    returns e.g. ``{"temperature": T}``), which are not whole model descriptions. The defaults are those
    of an uncalibrated model.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: ``age-bins``, ``regression`` or ``binary`` (``models.factory``); None only in calibration results.
    head: str | None = None
    #: Probability the age interval is meant to hold.
    interval: float = 0.8
    #: Factor the age-bins interval is stretched by, fitted on validation data.
    interval_scale: float = 1.0
    #: Age-bins head: (offset, slope) applied to the age and its interval's ends before the interval scale, mapping
    #: an int8 file's answers onto its float network's (post-training quantisation bias correction, fitted at
    #: export on the crops that calibrate the activation ranges: int8 rounding pulls answers towards the middle).
    #: None: the identity. Not a calibration fit: a re-calibration keeps it.
    age_answer_map: list[float] | None = None
    #: Regression head: validation residual quantiles giving the interval (split conformal).
    residual_q: list[float] = [-5.0, 5.0]
    #: Binary head: temperature of single crops.
    temperature: float = 1.0
    #: Binary head: temperature of a face's mean eye logit; None: older models, which use ``temperature``.
    face_temperature: float | None = None
    #: Binary head: temperature of the faces of children (under 13), fitted on validation children alone; None:
    #: ``face_temperature`` for every age. Why: before puberty the eyes say little about sex, and one temperature
    #: fitted on all ages (mostly adults) leaves children's probabilities more confident than they are right.
    child_face_temperature: float | None = None
    #: Binary head: per-age-band calibration of faces, superseding ``child_face_temperature``; faces outside
    #: every band, or of unknown age, get ``face_logit_temperature``. None: older models.
    age_band_calibration: list[BandCalibration] | None = None

    @property
    def face_logit_temperature(self) -> float:
        """The temperature for whole faces (the mean logit of their eyes), falling back to the single-crop one."""
        return self.temperature if self.face_temperature is None else self.face_temperature

    def face_calibration(self, ages: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(temperature, offset) for each of ``n`` faces of the given ``ages`` (years; NaN or None: unknown):
        the age band's where the model has per-band calibration, else the children's temperature under
        ``CHILD_AGE`` if fitted, else the all-ages face temperature."""
        temps, offsets = np.full(n, self.face_logit_temperature), np.zeros(n)
        if ages is None:
            return temps, offsets
        a = np.asarray(ages, dtype=np.float64).reshape(-1)
        if len(a) != n:
            raise ValueError(f"got {len(a)} ages for {n} faces")
        if self.age_band_calibration:
            for band in self.age_band_calibration:
                inside = band.contains(a)
                temps[inside], offsets[inside] = band.temperature, band.offset
        elif self.child_face_temperature is not None:
            temps[a < CHILD_AGE] = self.child_face_temperature
        return temps, offsets


#: The metadata keys a calibration fit writes (``evaluate.scoring.calibrate``): a re-fit replaces all of them.
CALIBRATION_KEYS = tuple(k for k in Decoding.model_fields if k not in ("head", "age_answer_map"))


def decoding_of(meta: Decoding | Mapping[str, Any]) -> Decoding:
    """``meta`` as ``Decoding``: typed metadata as it is, a dict (whole or partial) validated."""
    return meta if isinstance(meta, Decoding) else Decoding.model_validate(dict(meta))


class ModelMeta(Decoding):
    """Everything facelens reads from a model's metadata; unknown keys are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    task: str
    head: str
    input_size: int
    #: ``models.factory.ARCHS`` key; every trained model names it (None only in hand-made test doubles).
    arch: str | None = None
    facelens_version: str | None = None
    created: str | None = None
    #: Version of the detection + alignment pipeline the crops came from (``data.crops.PIPELINE_VERSION``).
    pipeline: str | None = None
    #: Face template of an age model (``face.align.FaceTemplate.from_meta``); None: the loose crop of old models.
    crop: dict[str, Any] | None = None
    #: Eye crop geometry of an eye model (``face.align.eye_geometry_from_meta``: one crop per eye, or
    #: ``{"both_eyes": true, ...}`` for one crop of both); None: the tight single-eye crop.
    eye_crop: dict[str, Any] | None = None
    positive_class: str | None = None
    #: Class folder name -> 1 (female) / 0 (male) for eye models trained on class folders.
    class_map: dict[str, int] | None = None
    #: ``flip-average`` (inside the ONNX graph, added around a PyTorch model) or ``none``.
    tta: str = "flip-average"
    precision: str = "fp32"
    #: How the model's data was split: strategy, seed, fractions, block_size (``data.prepare``).
    split: dict[str, Any] | None = None
    data: list[str] | None = None
    layouts: list[str] | None = None
    counts: dict[str, int] | None = None
    training: dict[str, Any] | None = None
    #: Test metrics (``evaluate.scoring.compute_metrics``) with the split they were measured on.
    metrics: dict[str, Any] | None = None
    export: dict[str, Any] | None = None

    _order: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelMeta:
        """Validate a metadata dict (as stored in a model file); its key order is kept for ``to_dict``."""
        meta = cls.model_validate(dict(d))
        meta._order = tuple(d)
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The metadata as stored: the keys given to ``from_dict`` in their order, unset defaults left out."""
        dumped = self.model_dump(exclude_unset=True)
        ordered = {k: dumped[k] for k in self._order if k in dumped}
        return ordered | {k: v for k, v in dumped.items() if k not in ordered}

    @property
    def spec(self) -> TaskSpec:
        """The task's spec (``facelens.tasks``); ValueError for a task this version does not know."""
        return task_spec(self.task)

    @property
    def num_outputs(self) -> int:
        """Width of the raw output: one logit per age bin for ``age-bins``, else one number."""
        return head_width(self.head)


__all__ = ["CHILD_AGE", "BandCalibration", "Decoding", "ModelMeta", "decoding_of"]
