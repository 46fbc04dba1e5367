"""Result objects and their JSON form: the versioned contract other tools rely on.

``SCHEMA_VERSION`` changes whenever a field is renamed or removed (adding fields is
backwards compatible). One JSON object per input, written as JSON Lines:

    {"schema": "facelens/1", "path": "...", "width": W, "height": H,
     "faces": [{"box": [x, y, w, h], "score": s,
                "landmarks": {"right_eye": [x, y], "left_eye": [x, y], ...},
                "age": {"value": a, "low": lo, "high": hi, "interval": 0.8},
                "sex": {"p_female": f, "p_male": m,
                        "eyes": [{"side": "left", "p_female": f, "p_male": m, "box": [x, y, w, h]}, ...],
                        "eyes_disagree": false, "caution": null}}],
     "error": null, "message": null}

Faces are listed in reading order (rows top to bottom, each row left to right).
``eyes_disagree`` is true when the two eyes' P(female) lie on opposite sides of 0.5 and differ by
more than 0.5 (``EYES_DISAGREE_GAP``). ``left``/``right`` are the person's own left and right
(a subject's left eye appears on the image's right side), as in anatomy and in every landmark
model we use.
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


#: The two eyes of a face disagree when their P(female) lie on opposite sides of 0.5 *and* differ by
#: more than this: each eye is then fairly confident of the opposite answer (e.g. 0.85 against 0.2),
#: so the combined estimate near the middle hides a conflict (one eye occluded, in shadow, turned
#: away, or a crop cut badly) rather than reporting honest doubt.
EYES_DISAGREE_GAP = 0.5


def eyes_disagree(p_a: float, p_b: float, gap: float = EYES_DISAGREE_GAP) -> bool:
    """True when two per-eye P(female) are on opposite sides of 0.5 and more than ``gap`` apart."""
    return (p_a - 0.5) * (p_b - 0.5) < 0 and abs(p_a - p_b) > gap


@dataclass(frozen=True)
class SexEstimate:
    p_female: float
    eyes: tuple[EyeEstimate, ...] = ()
    #: Set when the eyes are known to be weak evidence for this face (e.g. a child by the age estimate).
    caution: str | None = None

    @property
    def p_male(self) -> float:
        return 1.0 - self.p_female

    @property
    def eyes_disagree(self) -> bool:
        """The two eyes point confidently at opposite answers (``eyes_disagree``); False with fewer than two eyes."""
        return len(self.eyes) == 2 and eyes_disagree(self.eyes[0].p_female, self.eyes[1].p_female)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_female": round(self.p_female, 4),
            "p_male": round(self.p_male, 4),
            "eyes": [e.to_dict() for e in self.eyes],
            "eyes_disagree": self.eyes_disagree,
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
    #: Set when the input does not look like a single-eye crop (e.g. a whole face photo).
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "path": self.path,
            "p_female": None if self.p_female is None else round(self.p_female, 4),
            "p_male": None if self.p_female is None else round(1.0 - self.p_female, 4),
            "error": self.error,
            "warning": self.warning,
        }


__all__ = ["SCHEMA_VERSION", "EYES_DISAGREE_GAP", "eyes_disagree",
           "AgeEstimate", "EyeEstimate", "SexEstimate", "Face", "ImageResult", "EyeCropResult", "asdict"]
