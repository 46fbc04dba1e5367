"""Every registered task is complete: its spec, and every per-layer registry keyed by task (issue #19).

Why: the tasks' differences live in ``facelens.tasks`` (data) and in small registries in the layers
above (decoders, metrics, groups, evaluation, cards). A task missing from one of them would only
fail when that code path ran; these tests name the gap at once, and say where a third task goes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from facelens.data.prepare import resolve_strategy
from facelens.data.readers import read_dataset
from facelens.evaluate import model_card, pipeline, scoring
from facelens.evaluate.groups import GROUPERS
from facelens.infer.face_tasks import FACE_TASKS
from facelens.infer.postprocess import DECODERS
from facelens.models.factory import ARCHS, num_outputs
from facelens.models.meta import ModelMeta
from facelens.tasks import TASKS, TaskSpec, task_spec

MODELS = Path(__file__).resolve().parents[1] / "models"
SPECS = list(TASKS.values())
OPTIONAL = {"label_range", "pipeline_tag", "positive_class", "crop_model_file"}  # None has a meaning for these (see TaskSpec)


@pytest.mark.parametrize("spec", SPECS, ids=list(TASKS))
def test_spec_is_complete(spec: TaskSpec) -> None:
    assert TASKS[spec.name] is spec and task_spec(spec.name) is spec
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name not in OPTIONAL:
            assert value is not None and value != "" and value != (), f"{spec.name}: {f.name} is empty"
    assert spec.crop_kind in ("face", "eye")
    assert spec.numeric_labels == (spec.label_range is not None)  # the hygiene range is one of numbers
    assert (spec.balance_bin_width > 0) == spec.numeric_labels  # bins of numbers; classes otherwise
    assert spec.primary_metric in {k for k, _, _ in spec.card_metrics}
    assert spec.title and spec.returns.startswith("It returns")
    assert ("binary" in spec.heads) == (spec.positive_class is not None)


@pytest.mark.parametrize("spec", SPECS, ids=list(TASKS))
def test_spec_agrees_with_the_model_factory(spec: TaskSpec) -> None:
    """Every architecture offered for the task has a head the task allows, and every allowed head is offered."""
    heads = {a.heads[spec.name] for a in ARCHS.values() if spec.name in a.heads}
    assert heads, f"no architecture is offered for {spec.name!r}"
    assert heads == set(spec.heads)
    for arch in ARCHS.values():
        if spec.name in arch.heads:
            assert arch.input_size[spec.name] > 0
    for head in spec.heads:
        meta = ModelMeta.from_dict({"name": "m", "task": spec.name, "head": head, "input_size": 8})
        assert meta.num_outputs == num_outputs(head) and meta.spec is spec


@pytest.mark.parametrize("spec", SPECS, ids=list(TASKS))
def test_split_default_is_a_strategy(spec: TaskSpec) -> None:
    assert resolve_strategy(spec.name, "auto") == spec.default_split
    assert resolve_strategy(spec.name, spec.default_split) == spec.default_split


@pytest.mark.parametrize("spec", SPECS, ids=list(TASKS))
def test_shipped_default_model_is_the_tasks(spec: TaskSpec) -> None:
    model = MODELS / spec.model_file
    assert model.is_file(), f"{spec.name}: no shipped model {model}"
    meta = json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["task"] == spec.name and meta["head"] in spec.heads


@pytest.mark.parametrize("spec", SPECS, ids=list(TASKS))
def test_readers_read_the_spec_label_column(spec: TaskSpec, tmp_path: Path) -> None:
    value = "42" if spec.numeric_labels else "classA"
    (tmp_path / "m.csv").write_text(f"path,{spec.label_column}\na.jpg,{value}\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "m.csv", spec.name)
    assert [r.label for r in ds.records] == [42.0 if spec.numeric_labels else "classA"] and not ds.faces
    # Folders named by label: numbers for a numeric task, class names otherwise.
    folders = tmp_path / "folders"
    (folders / value).mkdir(parents=True)
    (folders / value / "x.jpg").write_bytes(b"not decoded by the reader")
    assert [r.label for r in read_dataset(folders, spec.name).records] == [ds.records[0].label]
    if spec.crops_from_faces:  # whole faces labelled in the face column are cut into this task's crops
        (tmp_path / "f.csv").write_text(f"path,{spec.face_label_column}\nface.jpg,female\n", encoding="utf-8")
        faces = read_dataset(tmp_path / "f.csv", spec.name)
        assert faces.faces and faces.records[0].label == "female"


def test_every_registry_knows_every_task() -> None:
    from facelens.evaluate import report
    from facelens.train.config import TASK_DEFAULTS

    names = set(TASKS)
    registries = {"infer.postprocess.DECODERS": DECODERS, "evaluate.scoring.METRICS": scoring.METRICS,
                  "evaluate.scoring.HEADLINES": scoring.HEADLINES, "evaluate.groups.GROUPERS": GROUPERS,
                  "evaluate.pipeline.EVALUATIONS": pipeline.EVALUATIONS,
                  "evaluate.model_card.CARD_TEXTS": model_card.CARD_TEXTS,
                  "train.config.TASK_DEFAULTS": TASK_DEFAULTS, "infer.face_tasks.FACE_TASKS": FACE_TASKS}
    for where, registry in registries.items():
        assert set(registry) == names, f"{where} has {sorted(registry)}, tasks are {sorted(names)}"
    for name, ev in pipeline.EVALUATIONS.items():
        assert callable(getattr(report, ev.report_writer)), f"{name}: evaluate.report.{ev.report_writer} missing"


def test_train_config_offers_the_registered_tasks() -> None:
    from facelens.train.config import TASKS as TRAIN_TASKS

    assert tuple(TASKS) == TRAIN_TASKS


@pytest.mark.parametrize("spec", SPECS, ids=list(TASKS))
def test_card_uses_the_spec(spec: TaskSpec) -> None:
    card = model_card.render_model_card({"name": "m", "task": spec.name, "metrics": {}})
    assert spec.returns in card and spec.title in card
    assert all(f'- "{t}"' in card for t in spec.card_tags)


def test_unknown_task_is_a_clear_error(tmp_path: Path) -> None:
    from facelens.api import default_model_path

    with pytest.raises(ValueError, match=r"unknown task 'gender': choose from age, eyes"):
        task_spec("gender")
    (tmp_path / "m.csv").write_text("path,label\na.jpg,x\n", encoding="utf-8")
    for call in (lambda: read_dataset(tmp_path / "m.csv", "gender"), lambda: default_model_path("gender"),
                 lambda: resolve_strategy("gender", "auto"), lambda: scoring.headline("gender", {})):
        with pytest.raises(ValueError, match="unknown task 'gender'"):
            call()
