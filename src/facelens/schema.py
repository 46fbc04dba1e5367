"""Result objects and their JSON form: the versioned contract other tools rely on.

``SCHEMA_VERSION`` changes whenever a field is renamed or removed (adding fields is
backwards compatible). One JSON object per input, written as JSON Lines:

    {"schema": "facelens/1", "path": "...", "width": W, "height": H,
     "faces": [{"box": [x, y, w, h], "score": s,
                "landmarks": {"right_eye": [x, y], "left_eye": [x, y], ...},
                "age": {"value": a, "low": lo, "high": hi, "interval": 0.8},
                "sex": {"p_female": f, "p_male": m,
                        "eyes": [{"side": "left", "p_female": f, "p_male": m, "box": [x, y, w, h]}, ...]}}],
     "error": null, "message": null}

``left``/``right`` are the person's own left and right (a subject's left eye appears on the
image's right side), as in anatomy and in every landmark model we use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "facelens/1"


@dataclass(frozen=True)
class AgeEstimate:
    value: float
    low: float
    high: float
    interval: float = 0.8

    def to_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 2), "low": round(self.low, 2), "high": round(self.high, 2), "interval": self.interval}


@dataclass(frozen=True)
class EyeEstimate:
    side: str  # "left" or "right": the person's own side
    p_female: float
    box: tuple[float, float, float, float]

    @property
    def p_male(self) -> float:
        return 1.0 - self.p_female

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "p_female": round(self.p_female, 4),
            "p_male": round(self.p_male, 4),
            "box": [round(v, 1) for v in self.box],
        }


@dataclass(frozen=True)
class SexEstimate:
    p_female: float
    eyes: tuple[EyeEstimate, ...] = ()
    #: Set when the eyes are known to be weak evidence for this face (e.g. a child by the age estimate).
    caution: str | None = None

    @property
    def p_male(self) -> float:
        return 1.0 - self.p_female

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_female": round(self.p_female, 4),
            "p_male": round(self.p_male, 4),
            "eyes": [e.to_dict() for e in self.eyes],
            "caution": self.caution,
        }


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in pixels of the upright image
    score: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    age: AgeEstimate | None = None
    sex: SexEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": {k: [round(v[0], 1), round(v[1], 1)] for k, v in self.landmarks.items()},
            "age": self.age.to_dict() if self.age else None,
            "sex": self.sex.to_dict() if self.sex else None,
        }


@dataclass
class ImageResult:
    path: str
    faces: list[Face] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    error: str | None = None
    message: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: What the models saw (``Analyzer.analyze(..., with_crops=True)``); never serialised.
    crops: list[Any] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "faces": [f.to_dict() for f in self.faces],
            "error": self.error,
            "message": self.message,
        }


@dataclass(frozen=True)
class EyeCropResult:
    """Result of ``predict-eyes`` on one eye crop."""

    path: str
    p_female: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "path": self.path,
            "p_female": None if self.p_female is None else round(self.p_female, 4),
            "p_male": None if self.p_female is None else round(1.0 - self.p_female, 4),
            "error": self.error,
        }


__all__ = ["SCHEMA_VERSION", "AgeEstimate", "EyeEstimate", "SexEstimate", "Face", "ImageResult", "EyeCropResult", "asdict"]
