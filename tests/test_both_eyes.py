"""An eye model that reads both eyes of a face in one crop (issue #17): the data it is trained on, the
crops the Analyzer cuts for it, and how its answer is reported.

Why these tests: every part of the eye path used to assume two crops per face (two records per face,
two crops per detection, a left and a right entry in the answer). A model whose metadata says
``{"both_eyes": true}`` must get one crop per face everywhere, cut exactly as it was trained on, and
must not be handed ready-cut single-eye crops it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from facelens.api import Analyzer
from facelens.data.crops import eye_from_face
from facelens.data.prepare import expand_faces_to_eyes, prepare_records, split_key
from facelens.data.readers import Record
from facelens.errors import DatasetError, ModelLoadError
from facelens.face.align import BOTH_EYES_GEOMETRY, cut_both_eyes
from facelens.face.detect import detect_faces
from facelens.infer.postprocess import decode_face_logits
from facelens.infer.predictor import Predictor
from facelens.schema import flat_rows


class BothEyesModel(Predictor):
    """A both-eye 'model' answering a fixed logit per crop and remembering the crops it was given."""

    backend = "fake"

    def __init__(self, logit: float = 1.0, size: int = 48) -> None:
        self.meta = {"name": "both-eyes-fake", "task": "eyes", "head": "binary", "input_size": size,
                     "eye_crop": BOTH_EYES_GEOMETRY.meta(), "face_temperature": 2.0}
        self.logit = logit
        self.seen: list[np.ndarray] = []

    def _run(self, crops: np.ndarray) -> np.ndarray:
        self.seen.append(crops.copy())
        return np.full((len(crops), 1), self.logit, np.float32)


def test_a_face_gives_one_record_of_both_eyes_split_with_the_face() -> None:
    face = Record(Path("f.jpg"), "female", None, (("age", "30"),))
    recs, digests = expand_faces_to_eyes([face], ["d1"], {Path("f.jpg")}, sides=BOTH_EYES_GEOMETRY.sides)
    assert [r.meta_dict().get("eye_side") for r in recs] == ["both"] and digests == ["d1"]
    assert split_key("eyes", "blocks", recs[0], "d1") == "sha1:d1"  # the face's key, as for the age task


def test_a_both_eye_model_refuses_ready_cut_single_eye_crops_naming_the_set(tmp_path: Path, write_jpeg) -> None:
    write_jpeg(tmp_path / "eyes" / "femaleeyes" / "1.jpg", seed=1)
    write_jpeg(tmp_path / "eyes" / "maleeyes" / "2.jpg", seed=2)
    with pytest.raises(DatasetError, match=r"eyes: holds ready-cut single-eye crops.*--eye-crop both"):
        prepare_records("eyes", [str(tmp_path / "eyes")], "blocks", 0, (0.8, 0.1, 0.1), log=lambda m: None,
                        eye_sides=("both",))


def test_the_analyzer_cuts_one_crop_of_both_eyes_per_face_as_training_cuts_it() -> None:
    photo = skdata.astronaut()
    model = BothEyesModel(logit=1.0)
    analyzer = Analyzer(age_model=False, eye_model=model, full_decode=True)
    result = analyzer.analyze(photo, with_crops=True)
    assert len(result.faces) == 1
    sex = result.faces[0].sex
    assert [e.side for e in sex.eyes] == ["both"] and not sex.eyes_disagree
    (crops,) = model.seen
    assert crops.shape == (1, 48, 48, 3)
    # The crop the model saw is the one training cuts from the same anchors (data.crops.eye_from_face).
    anchors = detect_faces(photo)[0].anchor_points()
    assert np.abs(crops[0].astype(int) - eye_from_face(photo, anchors, "both", 48, BOTH_EYES_GEOMETRY)).max() <= 1
    right, left, mouth = anchors
    _, box = cut_both_eyes(photo, right, left, mouth, 48)
    assert np.allclose(sex.eyes[0].box, box, atol=1.0)
    # The face's answer is the face calibration of its one logit; the page shows the crop of both eyes.
    assert sex.p_female == pytest.approx(float(decode_face_logits(np.array([1.0]), model.model_meta, None)[0]), abs=1e-4)
    assert set(result.crops[0].eyes) == {"both"}


def test_the_csv_row_of_a_both_eye_answer_leaves_the_per_eye_columns_empty() -> None:
    result = Analyzer(age_model=False, eye_model=BothEyesModel(), full_decode=True).analyze(skdata.astronaut())
    (row,) = flat_rows(result.to_dict())
    assert row["p_female"] != "" and row["p_female_left_eye"] == "" and row["p_female_right_eye"] == ""
    assert result.to_dict()["faces"][0]["sex"]["eyes"][0]["side"] == "both"


def test_ready_cut_eye_crops_are_refused_by_a_both_eye_model_with_the_model_to_use() -> None:
    analyzer = Analyzer(age_model=False, eye_model=BothEyesModel())
    with pytest.raises(ModelLoadError, match="reads both eyes.*single-eye model"):
        analyzer.predict_eye_crops([np.zeros((40, 40, 3), np.uint8)])


def test_a_single_eye_geometry_cannot_be_forced_on_a_both_eye_model() -> None:
    from facelens.face.align import WIDE_EYE_GEOMETRY

    with pytest.raises(ValueError, match="reads one crop of both eyes; the eye geometry given cuts one crop per eye"):
        Analyzer(age_model=False, eye_model=BothEyesModel(), eye_geometry=WIDE_EYE_GEOMETRY)
