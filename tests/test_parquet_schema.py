"""The Parquet schema of ``--format parquet`` shards is derived from the result models (issue #19: one typed
contract), and is exactly the schema the first shards were written with, so old and new shards read as one table."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from facelens.infer.shards import LANDMARK_KEYS, _arrow_fields, parquet_schema
from facelens.schema import AgeEstimate, EyeEstimate, Face, ImageResult, SexEstimate

pa = pytest.importorskip("pyarrow")


def written_schema():
    """The schema as it was written by hand before it was derived: the on-disk format of existing shards."""
    f64, vec = pa.float64(), pa.list_(pa.float64())
    age = pa.struct([("value", f64), ("low", f64), ("high", f64), ("interval", f64)])
    eye = pa.struct([("side", pa.string()), ("p_female", f64), ("p_male", f64), ("box", vec)])
    sex = pa.struct([("p_female", f64), ("p_male", f64), ("eyes", pa.list_(eye)), ("eyes_disagree", pa.bool_()),
                     ("caution", pa.string())])
    face = pa.struct([("box", vec), ("score", f64), ("landmarks", pa.struct([(k, vec) for k in LANDMARK_KEYS])),
                      ("age", age), ("sex", sex)])
    return pa.schema([("schema", pa.string()), ("path", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                      ("faces", pa.list_(face)), ("error", pa.string()), ("message", pa.string())])


def test_the_derived_schema_is_the_written_one() -> None:
    derived = parquet_schema()
    assert derived.equals(written_schema(), check_metadata=True), f"{derived}\n!=\n{written_schema()}"
    assert str(derived) == str(written_schema())  # field order and nullability included


def _results() -> list[ImageResult]:
    points = {k: (10.0 + i, 20.5) for i, k in enumerate(LANDMARK_KEYS)}
    eyes = (EyeEstimate(side="left", p_female=0.91, box=(1, 2, 3, 4)),
            EyeEstimate(side="right", p_female=0.12, box=(5, 6, 7, 8)))
    full = Face(box=(1.26, 2, 30, 40), score=0.98765, landmarks=points,
                age=AgeEstimate(value=31.234, low=25, high=38.5),
                sex=SexEstimate(p_female=0.55, eyes=eyes, caution="a child: eyes are weak evidence"))
    bare = Face(box=(100, 120, 30, 40), score=0.5, landmarks=points)  # models off: no age, no sex
    one_eye = Face(box=(200, 10, 30, 40), score=0.7, landmarks=points, age=AgeEstimate(value=60, low=50, high=70),
                   sex=SexEstimate(p_female=0.2, eyes=eyes[:1]))
    return [ImageResult(path="/p/group.jpg", width=640, height=480, faces=[full, bare, one_eye],
                        timings_ms={"detect": 3.0}),
            ImageResult(path="/p/empty.jpg", width=64, height=64, message="no face found"),
            ImageResult(path="/p/broken.jpg", error="cannot decode this image")]


def _missing_keys(value: Any, typ, where: str = "") -> list[str]:
    """Every key of a JSON value that has no field in the Arrow type ``typ`` (recursively)."""
    if isinstance(value, dict):
        assert pa.types.is_struct(typ), where
        names = [typ.field(i).name for i in range(typ.num_fields)]
        return [m for k, v in value.items()
                for m in ([f"{where}.{k}"] if k not in names else _missing_keys(v, typ.field(k).type, f"{where}.{k}"))]
    if isinstance(value, list) and value and isinstance(value[0], dict | list):
        assert pa.types.is_list(typ), where
        return [m for i, v in enumerate(value) for m in _missing_keys(v, typ.value_type, f"{where}[{i}]")]
    return []


def test_every_key_of_a_real_result_has_a_column_and_the_rows_read_back_equal() -> None:
    schema = parquet_schema()
    records = [r.model_dump(mode="json") for r in _results()]
    assert records[0]["faces"][0]["sex"]["eyes"] and records[0]["faces"][0]["age"]
    for rec in records:
        assert _missing_keys(rec, pa.struct(list(schema))) == []
    table = pa.Table.from_pylist(records, schema=schema)
    assert table.schema.equals(schema)
    assert table.to_pylist() == records  # dicts: the struct order (see _ARROW_ORDER) does not matter here


def test_a_field_without_a_parquet_rule_is_refused_naming_it() -> None:
    class Loose(BaseModel):
        ok: float
        extra: dict[str, float]

    class Mixed(BaseModel):
        value: int | str

    class Anything(BaseModel):
        blob: Any

    for model, name in ((Loose, "Loose.extra"), (Mixed, "Mixed.value"), (Anything, "Anything.blob")):
        with pytest.raises(TypeError, match=rf"^{name}: no Parquet type"):
            _arrow_fields(model)
