"""What a newcomer expects of inputs and outputs (#21): OpenCV colour order, faces in reading order,
a flag when the two eyes disagree, a warning when predict-eyes is handed a face photo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from facelens.cli import format_result_text
from facelens.errors import ModelLoadError
from facelens.schema import EyeEstimate, Face, ImageResult, SexEstimate, eyes_disagree

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def analyzer():
    from facelens.api import Analyzer

    try:
        a = Analyzer()
    except ModelLoadError as exc:
        pytest.skip(f"no shipped models: {exc}")
    if a.age is None or a.eyes is None:
        pytest.skip("the shipped age or eye model is missing")
    return a


def test_bgr_arrays_are_read_as_bgr_when_said(analyzer) -> None:
    rgb = skdata.astronaut()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    want = analyzer.analyze(rgb).to_dict()["faces"]
    assert analyzer.analyze(bgr, color="bgr").to_dict()["faces"] == want
    assert analyzer.analyze_array(bgr, color="bgr").to_dict()["faces"] == want
    assert [r.to_dict()["faces"] for r in analyzer.analyze_many([bgr, bgr], color="bgr")] == [want, want]
    # the mistake the option prevents: a BGR array taken as RGB feeds the models colour-swapped crops
    # (compared on the crops, not the answers: a model trained with colour augmentation may barely move)
    right = analyzer.analyze(rgb, with_crops=True).crops[0]
    said = analyzer.analyze(bgr, color="bgr", with_crops=True).crops[0]
    wrong = analyzer.analyze(bgr, with_crops=True).crops[0]
    assert np.array_equal(said.face, right.face) and said.eyes.keys() == right.eyes.keys()
    assert all(np.array_equal(said.eyes[k], right.eyes[k]) for k in right.eyes)
    assert np.abs(wrong.face.astype(int) - right.face.astype(int)).mean() > 5


def test_color_is_checked(analyzer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'rgb' or 'bgr', got 'brg'"):
        analyzer.analyze(skdata.astronaut(), color="brg")
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), skdata.astronaut())
    with pytest.raises(ValueError, match="applies to numpy arrays"):
        analyzer.analyze(photo, color="bgr")


def test_faces_come_in_reading_order(analyzer) -> None:
    """A small face on the left and a large one on the right: the detector lists the large one first."""
    face = skdata.astronaut()[20:320, 80:380]
    photo = np.full((420, 900, 3), 200, np.uint8)
    photo[110:260, 40:190] = cv2.resize(face, (150, 150))
    photo[20:400, 450:830] = cv2.resize(face, (380, 380))
    faces = analyzer.analyze(photo).faces
    assert len(faces) == 2
    assert faces[0].box[0] < faces[1].box[0]  # left first, although smaller
    text = format_result_text(analyzer.analyze(photo, name="two.png"))
    assert text.index("face 1 at x=") < text.index("face 2 at x=")
    assert int(text.split("face 1 at x=")[1].split()[0]) < 200


def _sex(p_left: float, p_right: float) -> SexEstimate:
    eyes = (EyeEstimate(side="left", p_female=p_left, box=(0, 0, 1, 1)),
            EyeEstimate(side="right", p_female=p_right, box=(0, 0, 1, 1)))
    return SexEstimate(p_female=(p_left + p_right) / 2, eyes=eyes)


@pytest.mark.parametrize(("a", "b", "want"), [
    (0.9, 0.2, True),  # opposite sides, 0.7 apart
    (0.2, 0.9, True),
    (0.7, 0.3, False),  # opposite sides but only 0.4 apart: honest doubt, not a conflict
    (0.99, 0.6, False),  # same side
    (0.5, 0.0, False),  # 0.5 is on neither side
])
def test_eyes_disagree_rule(a: float, b: float, want: bool) -> None:
    assert eyes_disagree(a, b) is want
    assert _sex(a, b).eyes_disagree is want
    assert _sex(a, b).to_dict()["eyes_disagree"] is want


def test_eyes_disagree_in_text_and_json() -> None:
    r = ImageResult(path="p.jpg", faces=[Face(box=(0, 0, 50, 50), score=0.9, sex=_sex(0.92, 0.15)),
                                         Face(box=(60, 0, 50, 50), score=0.9, sex=_sex(0.92, 0.85))], width=120, height=60)
    d = r.to_dict()
    assert d["schema"] == "facelens/1"
    assert [f["sex"]["eyes_disagree"] for f in d["faces"]] == [True, False]
    lines = format_result_text(r).splitlines()
    assert "two eyes disagree" in lines[1] and "left eye 92.0%" in lines[1] and "right eye 15.0%" in lines[1]
    assert "disagree" not in lines[2]


def _predict_eyes(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facelens.cli", "predict-eyes", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_predict_eyes_warns_on_a_face_photo(tmp_path: Path) -> None:
    from facelens.api import Analyzer, default_model_path
    from facelens.data.crops import eye_from_face
    from facelens.face.detect import detect_faces

    model = default_model_path("eyes", ready_cut=True)  # predict-eyes' model: the photo default reads both eyes at once
    if not model.is_file():
        pytest.skip("no shipped single-eye model")
    rgb = skdata.astronaut()
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    det = detect_faces(rgb)[0]
    eye = tmp_path / "eye.png"
    cv2.imwrite(str(eye), cv2.cvtColor(eye_from_face(rgb, det.anchor_points(), "left", 64), cv2.COLOR_RGB2BGR))

    single = Analyzer(age_model=False, eye_model=model)
    results = {r.path: r for r in single.predict_eye_crops([photo, eye], names=[str(photo), str(eye)])}
    assert "face photo" in results[str(photo)].warning and results[str(photo)].p_female is not None
    assert results[str(eye)].warning is None

    res = _predict_eyes(str(photo), str(eye), "--json")
    assert res.returncode == 0, res.stderr
    rows = {json.loads(line)["path"]: json.loads(line) for line in res.stdout.splitlines()}
    assert "facelens predict" in rows[str(photo)]["warning"]
    assert rows[str(eye)]["warning"] is None
    text = _predict_eyes(str(photo)).stdout
    assert "warning: this looks like a face photo" in text
