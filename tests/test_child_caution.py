"""The sex estimate says so when the face is a child's by the age estimate (eyes are weak evidence then)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from facelens.agebins import AGE_MIN, NUM_AGE_BINS
from facelens.api import CHILD_CAUTION, Analyzer
from facelens.cli import format_result_text
from facelens.infer.predictor import Predictor


class FixedAge(Predictor):
    """An age 'model' that answers one age for every face (the rule under test is the caution, not the model)."""

    backend = "fake"

    def __init__(self, age: int) -> None:
        self.age = age
        self.meta = {"name": "fixed", "task": "age", "head": "age-bins", "input_size": 32, "interval": 0.8}

    def _run(self, crops: np.ndarray) -> np.ndarray:
        logits = np.full((len(crops), NUM_AGE_BINS), -20.0, np.float32)
        logits[:, self.age - AGE_MIN] = 20.0
        return logits


@pytest.mark.parametrize(("age", "cautioned"), [(6, True), (12, True), (13, False), (40, False)])
def test_children_by_the_age_estimate_get_a_caution_on_the_sex_estimate(age: int, cautioned: bool) -> None:
    result = Analyzer(age_model=FixedAge(age)).analyze_array(skdata.astronaut(), "astronaut.png")
    face = result.faces[0]
    assert round(face.age.value) == age
    assert (face.sex.caution == CHILD_CAUTION) is cautioned
    assert face.sex.to_dict()["caution"] == (CHILD_CAUTION if cautioned else None)
    assert (CHILD_CAUTION in format_result_text(result)) is cautioned


def test_no_age_model_means_no_caution() -> None:
    result = Analyzer(age_model=False).analyze_array(skdata.astronaut(), "astronaut.png")
    assert result.faces[0].sex.caution is None
