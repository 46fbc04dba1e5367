"""Public Python API: ``Analyzer().analyze(path_or_array)`` -> ImageResult.

    >>> from facelens import Analyzer
    >>> result = Analyzer().analyze("group.jpg")
    >>> [(f.age.value, f.sex.p_female) for f in result.faces]

One Analyzer loads its models once and is safe to share between threads (the service
does). Every face goes through the same crop code the models were trained on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facelens.data.crops import eye_crop_from_image
from facelens.errors import ImageLoadError, ModelLoadError
from facelens.face.align import AGE_TEMPLATE, DEFAULT_EYE_GEOMETRY, EyeCropGeometry, align_face, cut_eye
from facelens.face.detect import DEFAULT_MIN_SCORE, Detection, detect_faces
from facelens.images import ImageInput, load_image
from facelens.infer.postprocess import combine_eye_probabilities, decode_age, decode_eyes
from facelens.infer.predictor import Predictor, load_predictor
from facelens.schema import AgeEstimate, EyeCropResult, EyeEstimate, Face, ImageResult, SexEstimate

AGE_MODEL_FILE = "age-mobilenetv2.onnx"
EYE_MODEL_FILE = "eyes-mobilenetv2.onnx"
NO_FACE_MESSAGE = "no face found"


def models_dir() -> Path:
    """Where the shipped default models live: $FACELENS_MODELS, else the repository's models/."""
    env = os.environ.get("FACELENS_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def default_model_path(task: str) -> Path:
    return models_dir() / (AGE_MODEL_FILE if task == "age" else EYE_MODEL_FILE)


@dataclass
class FaceCrops:
    """What the models saw for one face (for the web page and reports)."""

    face: np.ndarray | None = None
    eyes: dict[str, np.ndarray] = field(default_factory=dict)


def _open(model: str | Path | Predictor | None | bool, task: str, backend: str, device: str) -> Predictor | None:
    if model is False:
        return None
    if isinstance(model, Predictor):
        return model
    path = Path(model) if model else default_model_path(task)
    if model is None and not path.is_file():
        return None  # no shipped default yet: the analyzer runs without this task
    if backend == "torch" and path.suffix == ".onnx":
        pass  # load_predictor finds the .pt twin
    pred = load_predictor(path, backend=backend, device=device)
    if pred.meta.get("task") != task:
        raise ModelLoadError(f"{path}: is a {pred.meta.get('task')!r} model, expected a {task!r} model")
    return pred


class Analyzer:
    """Detects faces and estimates age (whole face) and sex (each eye region) for every face.

    ``age_model`` / ``eye_model``: a path, a loaded Predictor, None for the shipped default,
    or False to skip that task. ``backend``: 'auto' (ONNX Runtime for .onnx files), 'onnx' or 'torch'.
    """

    def __init__(
        self,
        age_model: str | Path | Predictor | None | bool = None,
        eye_model: str | Path | Predictor | None | bool = None,
        backend: str = "auto",
        device: str = "cpu",
        min_face_score: float = DEFAULT_MIN_SCORE,
        max_faces: int = 50,
        eye_geometry: EyeCropGeometry = DEFAULT_EYE_GEOMETRY,
    ) -> None:
        self.age = _open(age_model, "age", backend, device)
        self.eyes = _open(eye_model, "eyes", backend, device)
        if self.age is None and self.eyes is None:
            raise ModelLoadError(f"no models to run: none given and no shipped defaults in {models_dir()}")
        self.min_face_score = min_face_score
        self.max_faces = max_faces
        self.eye_geometry = eye_geometry

    def models_info(self) -> list[dict]:
        out = []
        for pred in (self.age, self.eyes):
            if pred is None:
                continue
            m = pred.meta
            out.append({"name": m["name"], "task": m["task"], "arch": m["arch"], "version": m.get("facelens_version"),
                        "created": m.get("created"), "input_size": m["input_size"], "backend": pred.backend,
                        "test_metrics": {k: v for k, v in m.get("metrics", {}).items() if not isinstance(v, (dict, list))}})
        return out

    # -- whole photos -------------------------------------------------------------------------
    def analyze(self, src: ImageInput, *, name: str | None = None, with_crops: bool = False) -> ImageResult:
        """Analyse one photo. Bad images give ``error`` set and no faces, never an exception."""
        return next(self.analyze_many([src], names=[name] if name else None, with_crops=with_crops))

    def analyze_many(self, srcs: Iterable[ImageInput], names: Iterable[str] | None = None,
                     with_crops: bool = False) -> Iterator[ImageResult]:
        names_it = iter(names) if names is not None else None
        for src in srcs:
            label = next(names_it) if names_it is not None else (str(src) if isinstance(src, (str, Path)) else "<image>")
            t0 = time.perf_counter()
            try:
                rgb = load_image(src, name=label)
            except ImageLoadError as exc:
                yield ImageResult(path=label, error=str(exc))
                continue
            yield self.analyze_array(rgb, label, with_crops=with_crops, t_load=time.perf_counter() - t0)

    def analyze_array(self, rgb: np.ndarray, label: str = "<image>", with_crops: bool = False,
                      t_load: float = 0.0) -> ImageResult:
        result = ImageResult(path=label, width=int(rgb.shape[1]), height=int(rgb.shape[0]))
        t0 = time.perf_counter()
        dets = detect_faces(rgb, self.min_face_score)[: self.max_faces]
        t1 = time.perf_counter()
        result.timings_ms = {"load": round(t_load * 1000, 2), "detect": round((t1 - t0) * 1000, 2)}
        if not dets:
            result.message = NO_FACE_MESSAGE
            return result
        ages, face_crops = self._ages(rgb, dets)
        t2 = time.perf_counter()
        sexes, eye_crops = self._sexes(rgb, dets)
        t3 = time.perf_counter()
        result.timings_ms |= {"age": round((t2 - t1) * 1000, 2), "eyes": round((t3 - t2) * 1000, 2)}
        result.faces = [
            Face(box=d.box, score=d.score, landmarks=d.landmarks(), age=ages[i] if ages else None,
                 sex=sexes[i] if sexes else None)
            for i, d in enumerate(dets)
        ]
        if with_crops:
            result.crops = [FaceCrops(face_crops[i] if face_crops is not None else None, eye_crops[i] if eye_crops else {})
                            for i in range(len(dets))]
        return result

    def _ages(self, rgb: np.ndarray, dets: list[Detection]) -> tuple[list[AgeEstimate] | None, np.ndarray | None]:
        if self.age is None:
            return None, None
        size = self.age.meta["input_size"]
        crops = np.stack([align_face(rgb, d.anchor_points(), size, AGE_TEMPLATE)[0] for d in dets])
        value, low, high = decode_age(self.age(crops), self.age.meta)
        interval = float(self.age.meta.get("interval", 0.8))
        ages = [AgeEstimate(float(v), float(lo), float(hi), interval) for v, lo, hi in zip(value, low, high, strict=True)]
        return ages, crops

    def _sexes(self, rgb: np.ndarray, dets: list[Detection]):
        if self.eyes is None:
            return None, None
        size = self.eyes.meta["input_size"]
        crops, boxes = [], []
        for d in dets:
            for eye, other in ((d.left_eye, d.right_eye), (d.right_eye, d.left_eye)):
                c, b = cut_eye(rgb, np.array(eye), np.array(other), size, self.eye_geometry)
                crops.append(c)
                boxes.append(b)
        p = decode_eyes(self.eyes(np.stack(crops)), self.eyes.meta)
        out, crop_maps = [], []
        for i in range(len(dets)):
            eyes = (EyeEstimate("left", float(p[2 * i]), boxes[2 * i]), EyeEstimate("right", float(p[2 * i + 1]), boxes[2 * i + 1]))
            out.append(SexEstimate(combine_eye_probabilities([e.p_female for e in eyes]), eyes))
            crop_maps.append({"left": crops[2 * i], "right": crops[2 * i + 1]})
        return out, crop_maps

    # -- single eye crops ---------------------------------------------------------------------
    def predict_eye_crops(self, srcs: Iterable[ImageInput], names: Iterable[str] | None = None) -> list[EyeCropResult]:
        """P(female) for ready-made single-eye crops (no detection), like the Kaggle eye set."""
        if self.eyes is None:
            raise ModelLoadError("no eye model loaded")
        size = self.eyes.meta["input_size"]
        names_l = list(names) if names is not None else None
        results: list[EyeCropResult | None] = []
        crops, where = [], []
        for i, src in enumerate(srcs):
            label = names_l[i] if names_l else (str(src) if isinstance(src, (str, Path)) else "<image>")
            try:
                crops.append(eye_crop_from_image(load_image(src, name=label), size))
                where.append((i, label))
                results.append(None)
            except ImageLoadError as exc:
                results.append(EyeCropResult(label, error=str(exc)))
        if crops:
            p = decode_eyes(self.eyes(np.stack(crops)), self.eyes.meta)
            for (i, label), pf in zip(where, p, strict=True):
                results[i] = EyeCropResult(label, float(pf))
        return [r for r in results if r is not None]


def analyze(src: ImageInput, **kwargs) -> ImageResult:
    """One-shot convenience: ``facelens.analyze("photo.jpg")`` with the default models."""
    return Analyzer(**kwargs).analyze(src)
