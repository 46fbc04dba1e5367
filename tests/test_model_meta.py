"""``ModelMeta`` reads every shipped model's metadata and gives back exactly the dict it read (issue #19).

Why exact: export, model cards and the service pass a model's metadata on; a typed reader that
dropped unknown keys, reordered them or rewrote values (lists to tuples, a missing key to its
default) would quietly change what a model says about itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facelens.infer.postprocess import decode_age, decode_eyes, decode_face_logits
from facelens.models.meta import Decoding, ModelMeta, decoding_of

MODELS = Path(__file__).resolve().parents[1] / "models"
JSON_FILES = sorted(MODELS.rglob("*.json"))
ONNX_FILES = sorted(MODELS.rglob("*.onnx"))
PT_FILES = sorted(MODELS.rglob("*.pt"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(MODELS)) for p in paths]


def test_there_are_shipped_models_to_check() -> None:
    assert JSON_FILES and ONNX_FILES and PT_FILES


@pytest.mark.parametrize("path", JSON_FILES, ids=_ids(JSON_FILES))
def test_json_metadata_round_trips_unchanged(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    d = json.loads(text)
    out = ModelMeta.from_dict(d).to_dict()
    assert out == d
    assert list(out) == list(d)  # same key order: the file written back is the same text
    assert json.dumps(out, indent=2) == json.dumps(d, indent=2)


@pytest.mark.parametrize("path", ONNX_FILES, ids=_ids(ONNX_FILES))
def test_onnx_embedded_metadata_round_trips_unchanged(path: Path) -> None:
    import onnx

    from facelens.infer.predictor import META_KEY

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    d = json.loads(props[META_KEY])
    meta = ModelMeta.from_dict(d)
    assert meta.to_dict() == d
    assert json.dumps(meta.to_dict()) == json.dumps(d)
    assert meta.spec.name == meta.task and meta.head in meta.spec.heads


@pytest.mark.parametrize("path", PT_FILES, ids=_ids(PT_FILES))
def test_checkpoint_metadata_round_trips_unchanged(path: Path) -> None:
    from facelens.models.checkpoint import load_checkpoint

    d = load_checkpoint(path)["meta"]
    out = ModelMeta.from_dict(d).to_dict()
    assert out == d
    assert repr(out) == repr(d)  # same types too (tuples stay tuples, numpy scalars stay numpy scalars)


def test_defaults_are_the_ones_the_readers_used() -> None:
    m = ModelMeta.from_dict({"name": "m", "task": "age", "head": "age-bins", "input_size": 8})
    assert (m.tta, m.precision, m.interval, m.interval_scale, m.temperature) == ("flip-average", "fp32", 0.8, 1.0, 1.0)
    assert m.residual_q == [-5.0, 5.0] and m.crop is None and m.eye_crop is None and m.class_map is None
    assert m.face_logit_temperature == 1.0
    assert m.to_dict() == {"name": "m", "task": "age", "head": "age-bins", "input_size": 8}  # defaults not written
    assert ModelMeta.from_dict({"name": "e", "task": "eyes", "head": "binary", "input_size": 8,
                                "temperature": 2.0}).face_logit_temperature == 2.0


def test_unknown_keys_are_kept_and_missing_required_ones_refused() -> None:
    d = {"name": "m", "future_key": {"a": [1, 2]}, "task": "eyes", "head": "binary", "input_size": 8}
    assert ModelMeta.from_dict(d).to_dict() == d
    with pytest.raises(ValueError, match="input_size"):
        ModelMeta.from_dict({"name": "m", "task": "age", "head": "age-bins"})


def test_decoders_take_typed_metadata_and_dicts_alike() -> None:
    import numpy as np

    full = {"name": "e", "task": "eyes", "head": "binary", "input_size": 8, "temperature": 2.0,
            "face_temperature": 0.5}
    logits = np.array([1.0, -2.0])
    for meta in (full, ModelMeta.from_dict(full), decoding_of(full)):
        assert decode_eyes(logits, meta) == pytest.approx(1 / (1 + np.exp(-logits / 2.0)))
        assert decode_face_logits(logits, meta) == pytest.approx(1 / (1 + np.exp(-logits / 0.5)))
    assert isinstance(decoding_of({"temperature": 3.0}), Decoding)  # calibration results alone decode too
    age = {"name": "a", "task": "age", "head": "regression", "input_size": 8, "residual_q": [-2.0, 3.0]}
    value, low, high = decode_age(np.array([[30.0]]), ModelMeta.from_dict(age))
    assert (value[0], low[0], high[0]) == (30.0, 28.0, 33.0)


def test_reading_metadata_does_not_import_torch() -> None:
    """The ONNX-only prediction path reads ``ModelMeta``; torch must stay unloaded."""
    code = "import sys, facelens.models.meta, facelens.infer.predictor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert out.stdout.strip() == "False"
