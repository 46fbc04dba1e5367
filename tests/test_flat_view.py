"""The CSV columns come from the schema (issue #19): one declaration, ``schema.FLAT_COLUMNS``.

The header and every row of ``facelens predict --out results.csv`` are derived from it; these tests
pin the output byte for byte (older files must stay resumable and readable by the same scripts) and
fail when a scalar of the answer has neither a column nor an entry in ``FLAT_OMITTED``, so adding a
field to the schema is one decision in one place.
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from facelens.infer.batch import CSV_FIELDS, _csv_text, csv_rows
from facelens.schema import (
    FLAT_COLUMNS,
    FLAT_OMITTED,
    AgeEstimate,
    EyeEstimate,
    Face,
    ImageResult,
    Pick,
    SexEstimate,
    flat_header,
    flat_rows,
)

HEADER = ["path", "face", "x", "y", "w", "h", "score", "age", "age_low", "age_high", "p_female", "p_male",
          "p_female_left_eye", "p_female_right_eye", "error", "message"]


def _eye(side: str, p: float) -> EyeEstimate:
    return EyeEstimate(side=side, p_female=p, box=(1.04, 2.06, 3.0, 4.55))


SAMPLES = [
    ImageResult(path="a/full.jpg", width=640, height=480, faces=[
        Face(box=(10.04, 20.06, 100.5, 120.449), score=0.987654, landmarks={"left_eye": (1.23, 4.56)},
             age=AgeEstimate(value=31.23456, low=25.0, high=38.999),
             sex=SexEstimate(p_female=0.123456, eyes=(_eye("left", 0.2), _eye("right", 0.0456789)))),
        Face(box=(300, 40, 80, 90), score=0.5,
             sex=SexEstimate(p_female=1.0, eyes=(_eye("right", 0.99999),), caution="child")),
        Face(box=(0.0, 0.0, 1.0, 1.0), score=0.0, age=AgeEstimate(value=7, low=3, high=12.5)),
    ]),
    ImageResult(path='b/none, "quoted".png', width=10, height=10, message="no face found"),
    ImageResult(path="c/broken.jpg", error="cannot read\nthis  file:\tbad", message="line one\r\nline two"),
    ImageResult(path="d/err-with-faces.jpg", error="x", faces=[Face(box=(1, 2, 3, 4), score=0.9)]),
    ImageResult(path="e/plain.jpg"),
]

#: Written by the hand-flattened ``csv_rows`` before the columns were derived from the schema.
GOLDEN = """\
path,face,x,y,w,h,score,age,age_low,age_high,p_female,p_male,p_female_left_eye,p_female_right_eye,error,message
a/full.jpg,0,10.0,20.1,100.5,120.4,0.9877,31.23,25.0,39.0,0.1235,0.8765,0.2,0.0457,,
a/full.jpg,1,300.0,40.0,80.0,90.0,0.5,,,,1.0,0.0,,1.0,,
a/full.jpg,2,0.0,0.0,1.0,1.0,0.0,7.0,3.0,12.5,,,,,,
"b/none, ""quoted"".png",,,,,,,,,,,,,,,no face found
c/broken.jpg,,,,,,,,,,,,,,cannot read this file: bad,line one line two
d/err-with-faces.jpg,,,,,,,,,,,,,,x,
e/plain.jpg,,,,,,,,,,,,,,,
"""


def test_header_is_derived_and_unchanged() -> None:
    assert flat_header() == [c.name for c in FLAT_COLUMNS] == CSV_FIELDS == HEADER


def test_rows_are_byte_identical_to_the_hand_flattened_output() -> None:
    text = ",".join(CSV_FIELDS) + "\n" + "".join(_csv_text(csv_rows(r.to_dict()), CSV_FIELDS) for r in SAMPLES)
    assert text == GOLDEN


def test_every_row_has_every_column_and_the_method_agrees() -> None:
    for r in SAMPLES:
        rows = flat_rows(r.to_dict())
        assert rows == r.flat_rows() == csv_rows(r.to_dict())
        assert all(list(row) == HEADER for row in rows)
        assert len(rows) == (len(r.faces) if r.faces and not r.error else 1)


# --- coverage: every scalar of the JSON form has a column or is knowingly left out ----------------


def wire_paths(model: type[BaseModel]) -> set[tuple]:
    """Paths to the scalars of ``model``'s JSON form (aliases, computed fields; excluded fields skipped).

    A fixed-length tuple (a box) is one scalar per entry; a list of models told apart by a literal
    ``side`` (the eyes) is one ``Pick`` per side; a dict (landmarks) is one leaf.
    """
    fields: dict[str, Any] = {f.alias or name: f.annotation for name, f in model.model_fields.items() if not f.exclude}
    fields |= {name: cf.return_type for name, cf in model.model_computed_fields.items()}
    return {(name, *rest) for name, ann in fields.items() for rest in _paths_of(ann)}


def _paths_of(ann: Any) -> set[tuple]:
    origin, args = get_origin(ann), [a for a in get_args(ann) if a is not type(None)]
    if origin in (Union, types.UnionType):
        return _paths_of(args[0]) if len(args) == 1 else {()}
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return wire_paths(ann)
    if origin is tuple and args:
        if args[-1] is Ellipsis:
            item = args[0]
            if isinstance(item, type) and issubclass(item, BaseModel) and "side" in item.model_fields:
                sides = get_args(item.model_fields["side"].annotation)
                return {(Pick("side", s), *p) for s in sides for p in wire_paths(item) if p != ("side",)}
            return {()}
        return {(i,) for i in range(len(args))}
    return {()}


def _uncovered(leaves: set[tuple], columns: list[tuple], omitted: tuple[tuple, ...]) -> set[tuple]:
    return {p for p in leaves if p not in columns and not any(p[: len(o)] == o for o in omitted)}


def _image_leaves(model: type[BaseModel] = ImageResult) -> set[tuple]:
    return {p for p in wire_paths(model) if p[0] != "faces"}


IMAGE_COLUMNS = [c.path for c in FLAT_COLUMNS if c.scope in ("image", "status")]
FACE_COLUMNS = [c.path for c in FLAT_COLUMNS if c.scope == "face"]


def test_every_scalar_of_a_face_has_a_column() -> None:
    leaves = wire_paths(Face)
    assert ("sex", "eyes", Pick("side", "left"), "p_female") in leaves and ("box", 3) in leaves  # the walk sees deep
    assert _uncovered(leaves, FACE_COLUMNS, FLAT_OMITTED["face"]) == set()
    assert _uncovered(_image_leaves(), IMAGE_COLUMNS, FLAT_OMITTED["image"]) == set()


def test_no_column_or_omission_points_nowhere() -> None:
    face, image = wire_paths(Face), _image_leaves()
    assert [p for p in FACE_COLUMNS if p not in face] == []
    assert [p for p in IMAGE_COLUMNS if p not in image] == []
    assert [o for o in FLAT_OMITTED["face"] if not any(p[: len(o)] == o for p in face)] == []
    assert [o for o in FLAT_OMITTED["image"] if not any(p[: len(o)] == o for p in image)] == []
    assert len(set(flat_header())) == len(FLAT_COLUMNS)


def test_a_new_field_without_a_column_is_caught() -> None:
    class AgeWithMode(AgeEstimate):
        mode: float = 0.0

    class FaceWithMore(Face):
        quality: float = 0.0
        age: AgeWithMode | None = None

    assert _uncovered(wire_paths(FaceWithMore), FACE_COLUMNS, FLAT_OMITTED["face"]) == {("quality",), ("age", "mode")}
