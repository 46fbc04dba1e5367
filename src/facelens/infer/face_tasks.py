"""One object per task that the Analyzer runs on detected faces (issue #19), as insightface's
``FaceAnalysis`` holds one model object per task and loops over them.

A ``FaceTask`` wraps a task's loaded ``Predictor`` and knows everything the Analyzer used to spell
out per task: the crops it needs of a detected face (their transforms, for choosing the decode they
are cut from, and the cutting itself), how a batch of crops becomes one estimate per face, which
field of ``schema.Face`` holds that estimate, and what it shows of its crops (``api.FaceCrops``).
``FACE_TASKS`` registers one class per task of ``facelens.tasks.TASKS``; the Analyzer keeps its
tasks in that order, so a task may use the estimates of those before it (the eyes' child caution
reads the age estimate).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from facelens.face.align import (
    EyeGeometry,
    FaceTemplate,
    align_face,
    cut_eye_region,
    eye_geometry_from_meta,
    similarity_transform,
)
from facelens.face.detect import Detection
from facelens.infer.postprocess import decode_age, decode_eyes, decode_face_logits
from facelens.infer.predictor import Predictor
from facelens.models.meta import CHILD_AGE
from facelens.reduced import ReducedImage
from facelens.schema import AgeEstimate, Box, EyeEstimate, SexEstimate

#: Below ``CHILD_AGE`` by the age estimate the eyes say little about sex (puberty changes the brow and eye
#: region): the answer carries this caution (shown by the text output and the web page).
CHILD_CAUTION = "a child by the age estimate: the eyes tell sex poorly before puberty; treat this as a guess"

#: A crop's affine transform from full-image pixels and its side in pixels.
CropTransform = tuple[np.ndarray, int]


@dataclass
class TaskCrops:
    """One task's crops of the faces of one photo, ``crops_per_face`` per face in face order."""

    pixels: np.ndarray  # (F * crops_per_face, S, S, 3) uint8
    #: The full-image box (x, y, w, h) of each crop, for tasks that report them (eyes); else empty.
    boxes: list[Box] = field(default_factory=list)
    seconds: float = 0.0  # time spent cutting them


class FaceTask(ABC):
    """A task run on every detected face: its predictor, its crops, its decoding, its place on a Face."""

    #: The task's name in ``facelens.tasks.TASKS``.
    name: ClassVar[str]
    #: The field of ``schema.Face`` that holds this task's estimate.
    face_field: ClassVar[str]
    #: How many crops one face gives.
    crops_per_face: ClassVar[int]

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def input_size(self) -> int:
        return self.predictor.model_meta.input_size

    @abstractmethod
    def crop_transforms(self, d: Detection) -> list[CropTransform]:
        """The transform from full-image pixels of each crop of face ``d`` (for ``Analyzer._crop_needs``)."""

    @abstractmethod
    def cut(self, src: ReducedImage, d: Detection) -> tuple[list[np.ndarray], list[Box]]:
        """Face ``d``'s crops cut from ``src`` (coordinates in ``d`` are full-image ones), and their boxes."""

    @abstractmethod
    def estimate(self, crops: np.ndarray, boxes: Sequence[Box], earlier: Mapping[str, list]) -> list[Any]:
        """One estimate per face from the crops of several faces (and their boxes) in face order.

        ``earlier``: the estimates of the tasks run before this one, by ``face_field``.
        """

    @abstractmethod
    def shown_crops(self, crops: np.ndarray) -> dict[str, Any]:
        """One face's crops as fields of ``api.FaceCrops`` (what the web page and reports show)."""

    def cut_faces(self, dets: Sequence[Detection], sources: Sequence[ReducedImage]) -> TaskCrops:
        """The crops of every face of a photo, each cut from its own source, and the time it took."""
        t0 = time.perf_counter()
        crops: list[np.ndarray] = []
        boxes: list[Box] = []
        for d, src in zip(dets, sources, strict=True):
            c, b = self.cut(src, d)
            crops += c
            boxes += b
        return TaskCrops(np.stack(crops), boxes, time.perf_counter() - t0)


class AgeTask(FaceTask):
    """Age from one aligned face crop per face, cut with the template the model was trained on."""

    name = "age"
    face_field = "age"
    crops_per_face = 1

    def __init__(self, predictor: Predictor) -> None:
        super().__init__(predictor)
        # The face crop the age model was trained on (its metadata names it; older models used the loose one).
        self.template = FaceTemplate.from_meta(predictor.model_meta.crop)

    def crop_transforms(self, d: Detection) -> list[CropTransform]:
        size = self.input_size
        return [(similarity_transform(d.anchor_points(), self.template.points(size)), size)]

    def cut(self, src: ReducedImage, d: Detection) -> tuple[list[np.ndarray], list[Box]]:
        return [align_face(src.pixels, src.from_full_centre(d.anchor_points()), self.input_size, self.template)[0]], []

    def estimate(self, crops: np.ndarray, boxes: Sequence[Box], earlier: Mapping[str, list]) -> list[AgeEstimate]:
        meta = self.predictor.model_meta
        value, low, high = decode_age(self.predictor(crops), meta)
        interval = float(meta.interval)
        return [AgeEstimate(value=float(v), low=float(lo), high=float(hi), interval=interval)
                for v, lo, hi in zip(value, low, high, strict=True)]

    def shown_crops(self, crops: np.ndarray) -> dict[str, Any]:
        return {"face": crops[0]}


class EyesTask(FaceTask):
    """Sex from the eye crops of each face, cut as the eye model was trained: one per eye (left, then right)
    or one holding both eyes. Each crop's answer, and the face's from the mean of its crops' logits,
    calibrated by the age estimate's band; cautioned when the age estimate (if it ran) says a child."""

    name = "eyes"
    face_field = "sex"
    crops_per_face = 2  # the single-eye models'; an instance of a both-eye model has 1

    def __init__(self, predictor: Predictor, geometry: EyeGeometry | None = None) -> None:
        super().__init__(predictor)
        # How the eye model's crops were cut (its metadata names it; older models used the tight one).
        trained = eye_geometry_from_meta(predictor.model_meta.eye_crop)
        if geometry is not None and geometry.sides != trained.sides:
            raise ValueError(f"eye model {predictor.model_meta.name!r} reads {_crop_kind(trained)}; the eye geometry "
                             f"given cuts {_crop_kind(geometry)}")
        self.geometry = geometry or trained
        self.crops_per_face = len(self.geometry.sides)

    def crop_transforms(self, d: Detection) -> list[CropTransform]:
        size = self.input_size
        return [(self.geometry.transform(d.anchor_points(), side, size), size) for side in self.geometry.sides]

    def cut(self, src: ReducedImage, d: Detection) -> tuple[list[np.ndarray], list[Box]]:
        crops, boxes = [], []
        anchors = src.from_full_centre(d.anchor_points())
        for side in self.geometry.sides:
            c, (x, y, w, h) = cut_eye_region(src.pixels, anchors, side, self.input_size, self.geometry)
            crops.append(c)
            (fx, fy), = src.to_full_centre(np.array([[x, y]]))
            boxes.append((float(fx), float(fy), w * src.factor, h * src.factor))
        return crops, boxes

    def estimate(self, crops: np.ndarray, boxes: Sequence[Box], earlier: Mapping[str, list]) -> list[SexEstimate]:
        meta = self.predictor.model_meta
        k = self.crops_per_face
        logits = self.predictor(crops).reshape(-1)
        p = decode_eyes(logits, meta)
        ages: list[AgeEstimate] | None = earlier.get(AgeTask.face_field)
        age_values = None if ages is None else np.array([a.value for a in ages], dtype=np.float64)
        young = None if age_values is None else age_values < CHILD_AGE
        p_face = decode_face_logits(logits.reshape(-1, k).mean(1), meta, age_values)
        sexes = []
        for i in range(len(p_face)):
            eyes = tuple(EyeEstimate(side=side, p_female=float(p[k * i + j]), box=boxes[k * i + j])
                         for j, side in enumerate(self.geometry.sides))
            caution = CHILD_CAUTION if young is not None and young[i] else None
            sexes.append(SexEstimate(p_female=float(p_face[i]), eyes=eyes, caution=caution))
        return sexes

    def shown_crops(self, crops: np.ndarray) -> dict[str, Any]:
        return {"eyes": dict(zip(self.geometry.sides, crops, strict=True))}


def _crop_kind(geometry: EyeGeometry) -> str:
    return "one crop of both eyes" if geometry.sides == ("both",) else "one crop per eye"


#: The face task of each task in ``facelens.tasks.TASKS`` (``tests/test_face_tasks.py`` checks all have one).
FACE_TASKS: dict[str, type[FaceTask]] = {cls.name: cls for cls in (AgeTask, EyesTask)}


__all__ = ["CHILD_AGE", "CHILD_CAUTION", "FACE_TASKS", "AgeTask", "CropTransform", "EyesTask", "FaceTask",
           "TaskCrops"]
