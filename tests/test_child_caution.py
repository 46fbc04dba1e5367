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


class FixedLogit(Predictor):
    """An eye 'model' whose every crop says logit 2, with an all-ages and a children's face temperature."""

    backend = "fake"

    def __init__(self) -> None:
        self.meta = {"name": "fixed-eyes", "task": "eyes", "head": "binary", "input_size": 32, "temperature": 1.0,
                     "face_temperature": 1.0, "child_face_temperature": 4.0}

    def _run(self, crops: np.ndarray) -> np.ndarray:
        return np.full((len(crops), 1), 2.0, np.float32)


@pytest.mark.parametrize(("age", "temperature"), [(6, 4.0), (12, 4.0), (13, 1.0), (40, 1.0), (None, 1.0)])
def test_children_by_the_age_estimate_get_the_childrens_temperature(age: int | None, temperature: float) -> None:
    """The answer for a face the age model puts under 13 is decoded with the temperature fitted on children."""
    age_model = FixedAge(age) if age is not None else False
    face = Analyzer(age_model=age_model, eye_model=FixedLogit()).analyze_array(skdata.astronaut(), "a.png").faces[0]
    assert face.sex.p_female == pytest.approx(1 / (1 + np.exp(-2.0 / temperature)))


class BandedLogit(FixedLogit):
    """The same eye 'model', with a per-age-band calibration (teenagers: offset -2, 60+: temperature 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.meta = self.meta | {"age_band_calibration": [
            {"low": 13, "high": 20, "temperature": 1.0, "offset": -2.0, "n": 100},
            {"low": 60, "high": None, "temperature": 2.0, "offset": 0.0, "n": 100}]}


@pytest.mark.parametrize(("age", "logit"), [(6, 2.0), (13, 0.0), (19, 0.0), (20, 2.0), (60, 1.0), (None, 2.0)])
def test_the_age_estimate_picks_the_band_calibration_of_the_sex_estimate(age: int | None, logit: float) -> None:
    """Bands supersede the children's temperature; an age outside every band gets the all-ages one."""
    age_model = FixedAge(age) if age is not None else False
    face = Analyzer(age_model=age_model, eye_model=BandedLogit()).analyze_array(skdata.astronaut(), "a.png").faces[0]
    assert face.sex.p_female == pytest.approx(1 / (1 + np.exp(-logit)))
