"""Eye crops cut from labelled faces: reading face sets for the eye task, two eyes per face on one
side of the split, per-face combination and its calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facelens.data.prepare import expand_faces_to_eyes, prepare_records, sex_of_face, split_key
from facelens.data.readers import Record, read_dataset
from facelens.evaluate.groups import FACE_AGE, FACE_AGE_ESTIMATE, FACE_ID
from facelens.evaluate.metrics import EYE_AGE_BANDS, age_band_label
from facelens.evaluate.scoring import (
    CALIBRATION_BANDS,
    MIN_BAND_FACES,
    band_age_key,
    calibrate,
    compute_metrics,
    face_band_index,
    per_face,
)
from facelens.infer.postprocess import decode_face_logits, sigmoid


def test_a_utkface_folder_read_for_the_eye_task_is_a_face_set_labelled_by_sex(tmp_path: Path, write_jpeg) -> None:
    write_jpeg(tmp_path / "utk" / "34_1_0_20170101.jpg.chip.jpg", seed=1)
    write_jpeg(tmp_path / "utk" / "5_0_2_20170102.jpg.chip.jpg", seed=2)
    ds = read_dataset(tmp_path / "utk", "eyes")
    assert ds.faces and "faces" in ds.layout
    assert sorted((r.label, r.meta_dict()["age"]) for r in ds.records) == [("female", "34"), ("male", "5")]
    assert not read_dataset(tmp_path / "utk", "age").faces


def test_a_manifest_with_gender_and_no_label_is_a_face_set_for_the_eye_task(tmp_path: Path, write_jpeg) -> None:
    write_jpeg(tmp_path / "set" / "images" / "a.jpg", seed=3)
    (tmp_path / "set" / "labels.csv").write_text("path,age,gender\nimages/a.jpg,7,female\n")
    ds = read_dataset(tmp_path / "set", "eyes")
    assert ds.faces and ds.records[0].label == "female" and ds.records[0].meta_dict()["age"] == "7"
    assert not read_dataset(tmp_path / "set", "age").faces


def test_each_face_gives_two_eyes_that_share_the_faces_split_key() -> None:
    face = Record(Path("f.jpg"), "female", None, (("age", "30"),))
    crop = Record(Path("femaleeyes/1.jpg"), "femaleeyes")
    recs, digests = expand_faces_to_eyes([face, crop], ["d1", "d2"], {Path("f.jpg")})
    assert [r.meta_dict().get("eye_side") for r in recs] == ["left", "right", None]
    assert digests == ["d1", "d1", "d2"]
    # Both eyes split with the face's content key, the key the age task uses for the same photo.
    assert {split_key("eyes", "blocks", r, d) for r, d in zip(recs[:2], digests[:2], strict=True)} == {"sha1:d1"}
    assert split_key("eyes", "blocks", recs[2], "d2") == "femaleeyes/0"  # ready-cut crops: blocks of file numbers


def test_face_sex_labels_map_to_female_1_and_unknown_ones_are_named() -> None:
    assert sex_of_face(Record(Path("a"), "Female")) == 1 and sex_of_face(Record(Path("a"), "M")) == 0
    with pytest.raises(Exception, match="x.jpg: gender 'other'"):
        sex_of_face(Record(Path("x.jpg"), "other"))


def test_eye_age_bands_split_at_puberty() -> None:
    assert [age_band_label(a, EYE_AGE_BANDS) for a in (1, 3, 12, 13, 19, 20, 59, 60)] == [
        "0-2", "3-12", "3-12", "13-19", "13-19", "20-59", "20-59", "60+"]


def test_per_face_averages_the_two_eyes_logits_and_skips_ready_cut_crops() -> None:
    out = np.array([2.0, 0.0, -1.0, -3.0, 5.0])
    y = np.array([1, 1, 0, 0, 1.0])
    logits, labels, groups, ages = per_face(out, y, ["a", "a", "b", "b", None], {
        "source": ["u", "u", "v", "v", "k"], "size": [None] * 4 + ["<48px"], FACE_AGE: [7.0, 7.0, None, None, None]})
    assert logits.tolist() == [1.0, -2.0] and labels.tolist() == [1, 0]
    assert groups == {"source": ["u", "v"]}  # the face's age is not a breakdown
    assert ages[0] == 7.0 and np.isnan(ages[1])


def test_face_temperature_is_fitted_on_combined_eyes_and_used_for_faces() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 2000)  # the true log-odds of each face
    y = (rng.random(2000) < sigmoid(z)).astype(float)
    # Both eyes of a face say 3x the true log-odds: the combined answer is over-confident by 3x.
    out = np.repeat(3 * z, 2) + rng.normal(0, 0.1, 4000)
    ids = [str(i) for i in np.repeat(np.arange(2000), 2)]
    fitted = calibrate("binary", out.reshape(-1, 1), np.repeat(y, 2), {FACE_ID: ids})
    assert fitted["face_temperature"] == pytest.approx(3.0, rel=0.2)
    assert "age_band_calibration" not in fitted  # no ages: no per-band calibration
    p = decode_face_logits(np.array([3.0]), fitted)
    assert p[0] == pytest.approx(sigmoid(np.array([3.0 / fitted["face_temperature"]]))[0])
    assert decode_face_logits(np.array([2.0]), {"temperature": 2.0})[0] == pytest.approx(sigmoid(np.array([1.0]))[0])


def _faces_by_age(ages: np.ndarray, lean: dict[int, float], seed: int = 0):
    """Two eye logits per face, calibrated except for a constant ``lean[band]`` added to the logit of the
    faces in ``CALIBRATION_BANDS[band]`` (their answers lean to one sex whatever the eyes show)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, len(ages))  # the true log-odds of each face
    y = (rng.random(len(ages)) < sigmoid(z)).astype(float)
    band = face_band_index(ages)
    logits = z + np.array([lean.get(int(b), 0.0) for b in band])
    groups = {FACE_ID: [str(i) for i in np.repeat(np.arange(len(ages)), 2)], FACE_AGE: list(np.repeat(ages, 2))}
    return np.repeat(logits, 2).reshape(-1, 1), np.repeat(y, 2), groups


def test_each_age_band_gets_a_calibration_that_removes_its_lean() -> None:
    ages = np.repeat([6.0, 16.0, 35.0, 70.0], 1500)
    out, y, groups = _faces_by_age(ages, lean={1: 1.0, 3: -1.0})  # teenagers lean +1 (female), 60+ -1
    fitted = calibrate("binary", out, y, groups)
    bands = {(b["low"], b["high"]): b for b in fitted["age_band_calibration"]}
    assert set(bands) == set(CALIBRATION_BANDS) and all(b["n"] == 1500 for b in bands.values())
    assert bands[(13, 20)]["offset"] == pytest.approx(-1.0, abs=0.25)
    assert bands[(60, None)]["offset"] == pytest.approx(1.0, abs=0.25)
    assert bands[(20, 60)]["offset"] == pytest.approx(0.0, abs=0.25)
    # Decoding picks each face's band by the age given (the estimate in predict): a teen's logit 1 is ~even.
    teen, adult, old, unknown = decode_face_logits(np.ones(4), fitted, np.array([16.0, 35.0, 70.0, np.nan]))
    assert teen == pytest.approx(0.5, abs=0.07) and old > adult > teen
    assert unknown == pytest.approx(sigmoid(np.array([1.0 / fitted["face_temperature"]]))[0])
    assert decode_face_logits(np.ones(2), fitted)[0] == unknown  # without ages: the all-ages temperature


def test_a_band_with_too_few_validation_faces_gets_no_calibration_of_its_own() -> None:
    ages = np.concatenate([np.full(MIN_BAND_FACES - 1, 70.0), np.full(2000, 35.0)])
    out, y, groups = _faces_by_age(ages, lean={3: -2.0})
    bands = calibrate("binary", out, y, groups)["age_band_calibration"]
    assert [(b["low"], b["high"]) for b in bands] == [(20, 60)]


def test_older_models_with_a_childrens_temperature_still_decode_with_it() -> None:
    meta = {"temperature": 1.0, "face_temperature": 1.0, "child_face_temperature": 4.0}
    adult, kid, unknown = decode_face_logits(np.full(3, 2.0), meta, np.array([30.0, 8.0, np.nan]))
    assert kid == pytest.approx(sigmoid(np.array([0.5]))[0]) and adult == unknown == pytest.approx(sigmoid(np.array([2.0]))[0])


def test_eye_metrics_report_whole_faces_per_source_and_age_band() -> None:
    out = np.array([3.0, 2.0, -2.0, -1.0, 4.0, 1.0])
    y = np.array([1, 1, 0, 0, 1, 1.0])
    groups = {"source": ["u", "u", "v", "v", "eyes", "eyes"], "age_band": ["20-59", "20-59", "3-12", "3-12", None, None],
              FACE_ID: ["a", "a", "b", "b", None, None]}
    m = compute_metrics("eyes", out.reshape(-1, 1), y, {"temperature": 1.0}, groups)
    assert m["n"] == 6 and m["faces"]["n"] == 2 and m["faces"]["accuracy"] == 1.0
    assert set(m["faces"]["by_source"]) == {"u", "v"} and set(m["by_source"]) == {"u", "v", "eyes"}
    assert m["faces"]["by_group"]["age_band"]["3-12"]["n"] == 1 and "ece" in m["by_group"]["age_band"]["3-12"]


@pytest.mark.data
def test_eye_task_reads_the_kaggle_crops_and_a_face_set_together(shared_data: Path) -> None:
    prep = prepare_records("eyes", [str(shared_data / "eyes"), str(shared_data / "all-age-faces")], "blocks", 0,
                           (0.75, 0.1, 0.15), log=lambda m: None)
    sides = [r.meta_dict().get("eye_side") for r in prep.records]
    assert sides.count("left") == sides.count("right") > 9000
    assert set(prep.sources) == {"eyes", "all-age-faces"} and prep.class_map == {"femaleeyes": 1, "maleeyes": 0}
    # Two eyes of one face: same split, same target.
    face = [i for i, s in enumerate(sides) if s is not None][:2]
    assert prep.splits[face[0]] == prep.splits[face[1]] and prep.targets[face[0]] == prep.targets[face[1]]


def test_eye_crop_geometry_comes_from_the_model_metadata_and_defaults_to_the_tight_crop() -> None:
    from dataclasses import asdict

    from facelens.face.align import (
        BOTH_EYES_GEOMETRY,
        EYE_GEOMETRIES,
        TIGHT_EYE_GEOMETRY,
        WIDE_EYE_GEOMETRY,
        BothEyesGeometry,
        eye_geometry_from_meta,
        parse_eye_geometry,
    )

    assert eye_geometry_from_meta(None) == TIGHT_EYE_GEOMETRY  # models from before the option
    assert eye_geometry_from_meta(asdict(WIDE_EYE_GEOMETRY)) == WIDE_EYE_GEOMETRY
    assert eye_geometry_from_meta(WIDE_EYE_GEOMETRY.meta()) == WIDE_EYE_GEOMETRY
    other = BothEyesGeometry(width=3.0, height=1.2, below=0.0)
    assert eye_geometry_from_meta(other.meta()) == other
    assert parse_eye_geometry("both") == BOTH_EYES_GEOMETRY and BOTH_EYES_GEOMETRY.sides == ("both",)
    assert TIGHT_EYE_GEOMETRY.sides == ("left", "right")
    assert set(EYE_GEOMETRIES) == {"tight", "wide"}


def test_wide_eye_crop_takes_in_more_of_the_face_around_the_eye() -> None:
    from facelens.face.align import TIGHT_EYE_GEOMETRY, WIDE_EYE_GEOMETRY, cut_eye

    rgb = np.zeros((300, 300, 3), np.uint8)
    eye, other = np.array([120.0, 150.0]), np.array([180.0, 150.0])  # 60 px apart
    _, (_, _, w_tight, _) = cut_eye(rgb, eye, other, 64, TIGHT_EYE_GEOMETRY)
    _, (_, _, w_wide, _) = cut_eye(rgb, eye, other, 64, WIDE_EYE_GEOMETRY)
    assert w_tight == pytest.approx(0.7 * 60, abs=3) and w_wide == pytest.approx(60, abs=3)


def test_eye_crops_cut_with_another_geometry_are_cached_apart() -> None:
    from facelens.data.crops import _cache_key
    from facelens.face.align import TIGHT_EYE_GEOMETRY, WIDE_EYE_GEOMETRY

    digests, sides = ["a", "a"], ["left", "right"]
    assert _cache_key(digests, "eye", 64, sides=sides, geometry=TIGHT_EYE_GEOMETRY) != \
        _cache_key(digests, "eye", 64, sides=sides, geometry=WIDE_EYE_GEOMETRY)
    # ready-cut eye crops (no face, no sides) do not depend on the geometry
    assert _cache_key(["b"], "eye", 64, sides=[None], geometry=TIGHT_EYE_GEOMETRY) == \
        _cache_key(["b"], "eye", 64, sides=[None], geometry=WIDE_EYE_GEOMETRY)


def test_analyzer_cuts_eyes_the_way_its_eye_model_was_trained(analyzer) -> None:
    from facelens.api import Analyzer, default_model_path
    from facelens.face.align import EyeCropGeometry, eye_geometry_from_meta

    expected = eye_geometry_from_meta(analyzer.eyes.meta.get("eye_crop"))
    assert analyzer.eye_geometry == expected
    single = default_model_path("eyes", ready_cut=True)  # a geometry of one crop per eye needs a model of single eyes
    forced = Analyzer(age_model=analyzer.age, eye_model=single, eye_geometry=EyeCropGeometry(0.9, 0.0))
    assert forced.eye_geometry == EyeCropGeometry(0.9, 0.0)


def test_evaluation_picks_a_faces_calibration_band_by_the_age_estimate_as_predict_does() -> None:
    ages = np.repeat([6.0, 16.0, 35.0, 70.0], 600)
    out, y, groups = _faces_by_age(ages, lean={1: 1.5, 3: -1.5})
    fitted = calibrate("binary", out, y, groups)
    estimates = np.where(ages == 16.0, 35.0, ages)  # every teenager taken for an adult by the age model
    groups["age_band"] = [age_band_label(a, EYE_AGE_BANDS) for a in np.repeat(ages, 2)]
    with_estimate = groups | {FACE_AGE_ESTIMATE: list(np.repeat(estimates, 2))}
    assert band_age_key(with_estimate) == FACE_AGE_ESTIMATE and band_age_key(groups) == FACE_AGE
    logits = out.reshape(-1)[::2]
    means = []
    for g, picked_by in ((groups, ages), (with_estimate, estimates)):
        means.append(compute_metrics("eyes", out, y, fitted, g)["faces"]["mean_p_positive"])
        assert means[-1] == pytest.approx(decode_face_logits(logits, fitted, picked_by).mean())
    assert abs(means[0] - means[1]) > 0.01  # the teenagers' lean is no longer taken out
    # The breakdown stays by the labelled age: the teenagers' row is there, answered with the adults' calibration.
    by_band = compute_metrics("eyes", out, y, fitted, with_estimate)["faces"]["by_group"]["age_band"]
    assert by_band["13-19"]["n"] == 600


def test_band_calibration_is_fitted_on_labelled_ages_even_where_estimates_are_known() -> None:
    ages = np.repeat([6.0, 16.0, 35.0, 70.0], 600)
    out, y, groups = _faces_by_age(ages, lean={1: 1.0})
    everyone_35 = groups | {FACE_AGE_ESTIMATE: [35.0] * len(out)}
    bands = calibrate("binary", out, y, everyone_35)["age_band_calibration"]
    assert [(b["low"], b["high"]) for b in bands] == list(CALIBRATION_BANDS)  # by label: four bands, not one


def test_face_age_estimates_are_the_age_models_answer_for_the_photo_each_eye_was_cut_from(tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data as skdata

    from facelens.api import Analyzer, default_model_path
    from facelens.evaluate.face_ages import estimate_face_ages, resolve_age_model

    age_model = resolve_age_model(None)
    if age_model is None:
        pytest.skip("no shipped age model")
    assert age_model == default_model_path("age")
    (tmp_path / "utk").mkdir()
    Image.fromarray(skdata.astronaut()).save(tmp_path / "utk" / "40_1_0_20170101.jpg.chip.jpg")
    for k, name in enumerate(("femaleeyes", "maleeyes")):
        (tmp_path / "eyes" / name).mkdir(parents=True)
        Image.fromarray(skdata.astronaut()[180 + k:240 + k, 200:260]).save(tmp_path / "eyes" / name / "1.jpg")
    prep = prepare_records("eyes", [str(tmp_path / "utk"), str(tmp_path / "eyes")], "content", 0, (1.0, 0.0, 0.0), log=lambda m: None)
    positions = np.arange(len(prep.records))
    estimates = estimate_face_ages(prep, positions, age_model)
    sides = [prep.records[i].meta_dict().get("eye_side") for i in positions]
    from_face = [e for e, s in zip(estimates, sides, strict=True) if s]
    assert len(from_face) == 2 and from_face[0] == from_face[1]  # both eyes: one photo, one estimate
    assert [e for e, s in zip(estimates, sides, strict=True) if not s] == [None, None]  # ready-cut crops: no face to age
    answered = Analyzer(eye_model=False).analyze(tmp_path / "utk" / "40_1_0_20170101.jpg.chip.jpg").faces[0].age.value
    assert from_face[0] == pytest.approx(answered, abs=0.05)
