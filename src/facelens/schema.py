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
The CSV form (``facelens predict --out results.csv``) is a flat view of the same record, one row per
face, declared once below as ``FLAT_COLUMNS`` (name and path into the JSON form of each column);
``FLAT_OMITTED`` lists the parts of the record that deliberately have no column.
``eyes_disagree`` is true when the two eyes' P(female) lie on opposite sides of 0.5 and differ by
more than 0.5 (``EYES_DISAGREE_GAP``). ``left``/``right`` are the person's own left and right
(a subject's left eye appears on the image's right side), as in anatomy and in every landmark
model we use. An eye model that reads both eyes in one crop (the default for photos since December 2026)
answers with a single entry in ``eyes``, side ``both`` (its box the crop's); the CSV's per-eye columns
are then empty, and ``eyes_disagree`` is false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_serializer

SCHEMA_VERSION = "facelens/1"

Box = tuple[float, float, float, float]


def _r(values, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


class _Wire(BaseModel):
    """A part of the contract: ``to_dict`` is its JSON form (rounded as documented, aliases applied)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class _Frozen(_Wire):
    model_config = ConfigDict(frozen=True)


class AgeEstimate(_Frozen):
    """Estimated age in years and the interval that holds the true age with probability ``interval``."""

    value: float
    low: float
    high: float
    interval: float = 0.8

    @field_serializer("value", "low", "high")
    def _years(self, v: float) -> float:
        return round(v, 2)


class EyeEstimate(_Frozen):
    """One eye crop's answer; ``box`` is the crop's axis-aligned box in image pixels (x, y, w, h)."""

    side: Literal["left", "right", "both"] = Field(
        description="the person's own side, or 'both' for a crop holding both eyes")
    p_female: float = Field(ge=0.0, le=1.0)
    box: Box

    @computed_field
    @property
    def p_male(self) -> float:
        return round(1.0 - self.p_female, 4)

    @field_serializer("p_female")
    def _prob(self, v: float) -> float:
        return round(v, 4)

    @field_serializer("box")
    def _box(self, v: Box) -> list[float]:
        return _r(v, 1)


#: The two eyes of a face disagree when their P(female) lie on opposite sides of 0.5 *and* differ by
#: more than this: each eye is then fairly confident of the opposite answer (e.g. 0.85 against 0.2),
#: so the combined estimate near the middle hides a conflict (one eye occluded, in shadow, turned
#: away, or a crop cut badly) rather than reporting honest doubt.
EYES_DISAGREE_GAP = 0.5


def eyes_disagree(p_a: float, p_b: float, gap: float = EYES_DISAGREE_GAP) -> bool:
    """True when two per-eye P(female) are on opposite sides of 0.5 and more than ``gap`` apart."""
    return (p_a - 0.5) * (p_b - 0.5) < 0 and abs(p_a - p_b) > gap


class SexEstimate(_Frozen):
    """P(female) of a face from its eyes: the calibrated logit of the crop holding both eyes, or the calibrated
    mean of the two single-eye crops' logits (a single-eye model)."""

    p_female: float = Field(ge=0.0, le=1.0)
    eyes: tuple[EyeEstimate, ...] = ()
    #: Set when the eyes are known to be weak evidence for this face (e.g. a child by the age estimate).
    caution: str | None = None

    @computed_field
    @property
    def p_male(self) -> float:
        return round(1.0 - self.p_female, 4)

    @computed_field(description="the two eyes point confidently at opposite answers (see EYES_DISAGREE_GAP)")
    @property
    def eyes_disagree(self) -> bool:
        """False with fewer than two eyes."""
        return len(self.eyes) == 2 and eyes_disagree(self.eyes[0].p_female, self.eyes[1].p_female)

    @field_serializer("p_female")
    def _prob(self, v: float) -> float:
        return round(v, 4)


class Face(_Frozen):
    box: Box = Field(description="x, y, w, h in pixels of the upright image")
    score: float
    landmarks: dict[str, tuple[float, float]] = Field(default_factory=dict)
    age: AgeEstimate | None = None
    sex: SexEstimate | None = None

    @field_serializer("box")
    def _box(self, v: Box) -> list[float]:
        return _r(v, 1)

    @field_serializer("score")
    def _score(self, v: float) -> float:
        return round(v, 4)

    @field_serializer("landmarks")
    def _points(self, v: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
        return {k: _r(p, 1) for k, p in v.items()}


class ImageResult(_Wire):
    """One photo's answer: every face found, or the reason there is none (``error``: could not be read)."""

    schema_version: Literal["facelens/1"] = Field(SCHEMA_VERSION, alias="schema")
    path: str
    width: int | None = None
    height: int | None = None
    faces: list[Face] = Field(default_factory=list)
    error: str | None = None
    message: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict, exclude=True)
    #: What the models saw (``Analyzer.analyze(..., with_crops=True)``); never serialised.
    crops: list[Any] = Field(default_factory=list, exclude=True, repr=False)

    def flat_rows(self) -> list[dict[str, Any]]:
        """The CSV rows of this result (see ``FLAT_COLUMNS``): one per face, or one status row."""
        return flat_rows(self.to_dict())


class EyeCropResult(_Frozen):
    """Result of ``predict-eyes`` on one eye crop."""

    schema_version: Literal["facelens/1"] = Field(SCHEMA_VERSION, alias="schema")
    path: str
    p_female: float | None = Field(None, ge=0.0, le=1.0)
    error: str | None = None
    #: Set when the input does not look like a single-eye crop (e.g. a whole face photo).
    warning: str | None = None

    @computed_field
    @property
    def p_male(self) -> float | None:
        return None if self.p_female is None else round(1.0 - self.p_female, 4)

    @field_serializer("p_female")
    def _prob(self, v: float | None) -> float | None:
        return None if v is None else round(v, 4)


# --- The flat view: one row per face, the columns of the CSV output ---------------------------


@dataclass(frozen=True)
class Pick:
    """A path step into a list of objects: the one whose ``key`` equals ``value`` (an eye by its side)."""

    key: str
    value: str


PathStep = str | int | Pick


@dataclass(frozen=True)
class FlatColumn:
    """One column of the flat view.

    ``path`` leads into the JSON form (``to_dict()``, so values are rounded exactly as there):
    into the image record for ``scope`` "image" (on every row) and "status" (only on the row of
    a photo without faces or with an error; empty on face rows), into one face for "face" (empty
    on the status row). "index" is the face's position in ``faces`` (its path is empty).
    ``one_line`` collapses whitespace runs (newlines included) into single spaces, so every row
    stays one physical line (``--resume`` relies on it).
    """

    name: str
    scope: Literal["image", "index", "face", "status"]
    path: tuple[PathStep, ...] = ()
    one_line: bool = False


EYE_CROPS: tuple[str, ...] = get_args(EyeEstimate.model_fields["side"].annotation)
#: The sides with a CSV column of their own; the crop of both eyes answers what the face's ``p_female`` says.
EYE_SIDES: tuple[str, ...] = ("left", "right")

#: The CSV columns, in order. A new scalar in the per-face answer gets a column here (or an entry in
#: ``FLAT_OMITTED``); tests/test_flat_view.py fails until it has one or the other.
FLAT_COLUMNS: tuple[FlatColumn, ...] = (
    FlatColumn("path", "image", ("path",)),
    FlatColumn("face", "index"),
    FlatColumn("x", "face", ("box", 0)),
    FlatColumn("y", "face", ("box", 1)),
    FlatColumn("w", "face", ("box", 2)),
    FlatColumn("h", "face", ("box", 3)),
    FlatColumn("score", "face", ("score",)),
    FlatColumn("age", "face", ("age", "value")),
    FlatColumn("age_low", "face", ("age", "low")),
    FlatColumn("age_high", "face", ("age", "high")),
    FlatColumn("p_female", "face", ("sex", "p_female")),
    FlatColumn("p_male", "face", ("sex", "p_male")),
    *(FlatColumn(f"p_female_{side}_eye", "face", ("sex", "eyes", Pick("side", side), "p_female")) for side in EYE_SIDES),
    FlatColumn("error", "status", ("error",), one_line=True),
    FlatColumn("message", "status", ("message",), one_line=True),
)

#: Parts of the JSON form with no CSV column (each path covers everything below it): ``image`` paths
#: start at the image record, ``face`` paths at one face. Why left out: the CSV keeps to one flat,
#: stable row per face; the JSON Lines output has everything.
FLAT_OMITTED: dict[str, tuple[tuple[PathStep, ...], ...]] = {
    "image": (("schema",), ("width",), ("height",)),
    "face": (
        ("landmarks",),
        ("age", "interval"),
        ("sex", "eyes_disagree"),
        ("sex", "caution"),
        *(("sex", "eyes", Pick("side", side), name) for side in EYE_SIDES for name in ("p_male", "box")),
        *(("sex", "eyes", Pick("side", side)) for side in EYE_CROPS if side not in EYE_SIDES),
    ),
}


def one_line(text: str | None) -> str:
    """A text cell without newlines or runs of whitespace (``None`` is empty)."""
    return " ".join((text or "").split())


def flat_header() -> list[str]:
    """The CSV header: the names of ``FLAT_COLUMNS`` in order."""
    return [c.name for c in FLAT_COLUMNS]


def lookup(obj: Any, path: tuple[PathStep, ...]) -> Any:
    """The value at ``path`` in a JSON form (dicts and lists), or ``None`` where any step is missing."""
    for step in path:
        if obj is None:
            return None
        if isinstance(step, Pick):
            obj = next((o for o in obj if isinstance(o, dict) and o.get(step.key) == step.value), None)
        elif isinstance(step, int):
            obj = obj[step] if isinstance(obj, (list, tuple)) and -len(obj) <= step < len(obj) else None
        else:
            obj = obj.get(step) if isinstance(obj, dict) else None
    return obj


def _cell(column: FlatColumn, value: Any) -> Any:
    if column.one_line:
        return one_line(value)
    return "" if value is None else value


def flat_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The flat view of one ``ImageResult.to_dict()``: a row per face, or a single status row for a photo
    with an error or without faces. Every row has every column of ``FLAT_COLUMNS`` ("" where empty)."""
    if record.get("error") or not record.get("faces"):
        return [{c.name: _cell(c, lookup(record, c.path)) if c.scope in ("image", "status") else ""
                 for c in FLAT_COLUMNS}]
    rows = []
    for i, face in enumerate(record["faces"]):
        row: dict[str, Any] = {}
        for c in FLAT_COLUMNS:
            if c.scope == "image":
                row[c.name] = _cell(c, lookup(record, c.path))
            elif c.scope == "index":
                row[c.name] = i
            elif c.scope == "face":
                row[c.name] = _cell(c, lookup(face, c.path))
            else:
                row[c.name] = ""
        rows.append(row)
    return rows


__all__ = ["SCHEMA_VERSION", "EYES_DISAGREE_GAP", "eyes_disagree",
           "AgeEstimate", "EyeEstimate", "SexEstimate", "Face", "ImageResult", "EyeCropResult",
           "Pick", "FlatColumn", "FLAT_COLUMNS", "FLAT_OMITTED", "flat_header", "flat_rows", "lookup", "one_line"]
