"""The Analyzer runs one ``FaceTask`` per task (issue #19): every task has one, and each runs on its own.

Why: the Analyzer loops over its face tasks with no task names in the loop, so a task without a
registered class could not be run, and a task that filled (or needed) another's part of the result
would only show when that other model was left out. Fake models keep this independent of the
shipped ones: what is checked is where the answers go, not what they are.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from facelens.api import Analyzer, FaceCrops
from facelens.infer.face_tasks import FACE_TASKS, FaceTask
from facelens.infer.predictor import Predictor
from facelens.schema import Face
from facelens.tasks import TASKS

#: The Analyzer's constructor argument for each task's model.
MODEL_ARGS = {"age": "age_model", "eyes": "eye_model"}


class Constant(Predictor):
    """A 'model' of ``task`` answering the same raw outputs for every crop."""

    backend = "fake"

    def __init__(self, task: str, head: str, outputs: int) -> None:
        self.meta = {"name": f"constant-{task}", "task": task, "head": head, "input_size": 32}
        self.outputs = outputs

    def _run(self, crops: np.ndarray) -> np.ndarray:
        return np.zeros((len(crops), self.outputs), np.float32)


def constant_model(task: str) -> Constant:
    head = TASKS[task].heads[0]
    probe = Constant(task, head, 0)
    return Constant(task, head, probe.num_outputs)


def test_every_task_has_a_face_task() -> None:
    assert list(FACE_TASKS) == list(TASKS), "FACE_TASKS must list the tasks in TASKS order"
    assert set(MODEL_ARGS) == set(TASKS), "a task without an Analyzer argument for its model"
    fields = [cls.face_field for cls in FACE_TASKS.values()]
    assert len(set(fields)) == len(fields), f"two tasks write the same Face field: {fields}"
    for name, cls in FACE_TASKS.items():
        assert issubclass(cls, FaceTask) and cls.name == name
        assert cls.face_field in Face.model_fields, f"{name}: schema.Face has no field {cls.face_field!r}"
        assert cls.crops_per_face >= 1


@pytest.mark.parametrize("task", list(TASKS))
def test_an_analyzer_with_one_model_fills_only_its_field(task: str) -> None:
    analyzer = Analyzer(**{arg: constant_model(t) if t == task else False for t, arg in MODEL_ARGS.items()})
    assert list(analyzer.tasks) == [task]
    assert (analyzer.age is not None, analyzer.eyes is not None) == (task == "age", task == "eyes")
    result = analyzer.analyze(skdata.astronaut(), with_crops=True)
    assert result.error is None and len(result.faces) == 1
    face = result.faces[0]
    for name, cls in FACE_TASKS.items():
        assert (getattr(face, cls.face_field) is not None) == (name == task), cls.face_field
    assert list(result.timings_ms) == ["load", "detect", *TASKS]  # a timing for every task, run or not
    assert all(result.timings_ms[name] == 0.0 for name in TASKS if name != task)
    shown, face_task = result.crops[0], analyzer.tasks[task]
    expected = face_task.shown_crops(np.zeros((face_task.crops_per_face, 32, 32, 3), np.uint8))
    assert isinstance(shown, FaceCrops)
    assert (shown.face is not None) == ("face" in expected) and set(shown.eyes) == set(expected.get("eyes", {}))


def test_both_models_run_in_task_order() -> None:
    analyzer = Analyzer(**{arg: constant_model(t) for t, arg in MODEL_ARGS.items()})
    assert list(analyzer.tasks) == list(TASKS)
    face = analyzer.analyze(skdata.astronaut()).faces[0]
    assert all(getattr(face, cls.face_field) is not None for cls in FACE_TASKS.values())
