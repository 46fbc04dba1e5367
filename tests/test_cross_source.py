"""The cross-source tooling: age bands, source-balanced sampling, the photo augmentation, the tight
crop, the context check and leave-one-source-out."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from facelens.data.prepare import source_name
from facelens.evaluate.context import context_summary, tight_chip
from facelens.evaluate.metrics import age_band_label, age_metrics, source_band_rows
from facelens.face.align import (
    LOOSE_AGE_TEMPLATE,
    MEDIUM_AGE_TEMPLATE,
    TIGHT_AGE_TEMPLATE,
    UTKFACE_CHIP,
    FaceTemplate,
    apply_transform,
    chip_insets,
    similarity_transform,
)
from facelens.train.augment import PHOTO_AUGMENT, AugmentConfig, _frame_ends, augment_batch
from facelens.train.commands import reproduce_commands
from facelens.train.config import TrainRequest
from facelens.train.runner import run_training
from facelens.train.sampling import balanced_weights, epoch_order


def test_age_bands_cover_every_age_with_the_issues_edges() -> None:
    got = {a: age_band_label(a) for a in (0, 2, 2.9, 3, 9, 10, 19, 20, 39, 40, 59, 60, 116)}
    assert got == {0: "0-2", 2: "0-2", 2.9: "0-2", 3: "3-9", 9: "3-9", 10: "10-19", 19: "10-19", 20: "20-39",
                   39: "20-39", 40: "40-59", 59: "40-59", 60: "60+", 116: "60+"}


def test_age_metrics_report_bias_per_band_and_the_source_view_lists_them() -> None:
    y = np.array([1, 5, 5, 30, 70.0])
    pred = np.array([3, 20, 10, 30, 50.0])
    m = age_metrics(y, pred)
    assert m["by_age_band"]["3-9"] == {"n": 2, "mae": 10.0, "mean_signed_error": 10.0}
    assert m["by_age_band"]["60+"]["mean_signed_error"] == -20.0
    assert list(m["by_age_band"]) == ["0-2", "3-9", "20-39", "60+"]
    rows = source_band_rows(m | {"by_source": {"a": age_metrics(y[:2], pred[:2])}})
    assert list(rows) == ["all", "a"] and rows["a"]["3-9"]["mae"] == 15.0


def test_balanced_weights_make_sources_equal_within_each_age_bin() -> None:
    # Bin 20-24: source a has 30 images, b has 10; bin 0-4 only a (20 images).
    src = np.array(["a"] * 30 + ["b"] * 10 + ["a"] * 20)
    age = np.array([22.0] * 40 + [2.0] * 20)
    w = balanced_weights(src, age, bin_width=5, cap=0)
    assert w.mean() == pytest.approx(1.0)
    assert w[:30].sum() == pytest.approx(w[30:40].sum())  # equal share of the shared bin
    assert w[:40].sum() / w.sum() == pytest.approx(40 / 60)  # the bin keeps its pooled mass
    capped = balanced_weights(src, age, bin_width=5, cap=1.2)
    assert capped.max() <= 1.2 * (1 + 1e-6) and capped.mean() == pytest.approx(1.0)


def test_flattened_weights_lift_rare_age_bins_by_the_square_root_and_keep_sources_equal() -> None:
    # Bin 20-24: 90 images (a: 60, b: 30); bin 60-64: 10 images (a only).
    src = np.array(["a"] * 60 + ["b"] * 30 + ["a"] * 10)
    age = np.array([22.0] * 90 + [62.0] * 10)
    w = balanced_weights(src, age, bin_width=5, cap=0, flatten=0.5)
    assert w[90:].sum() / w[:90].sum() == pytest.approx(np.sqrt(10) / np.sqrt(90))  # share ~ sqrt(count)
    assert w[:60].sum() == pytest.approx(w[60:90].sum())  # still an equal share per source within the bin
    flat = balanced_weights(src, age, bin_width=5, cap=0, flatten=1.0)
    assert flat[90:].sum() == pytest.approx(flat[:90].sum())  # flatten 1: every bin the same mass
    assert np.allclose(balanced_weights(src, age, bin_width=5, cap=0, flatten=0.0), balanced_weights(src, age, cap=0))
    with pytest.raises(ValueError, match="flatten"):
        balanced_weights(src, age, flatten=1.5)


def test_balanced_weights_check_their_inputs() -> None:
    with pytest.raises(ValueError, match="2 sources for 3 labels"):
        balanced_weights(["a", "b"], np.zeros(3))
    assert len(balanced_weights([], np.zeros(0))) == 0


def test_epoch_order_is_a_pure_function_of_seed_and_epoch_and_follows_the_weights() -> None:
    assert np.array_equal(epoch_order(10, 2, 5, 0, 3), epoch_order(10, 2, 5, 0, 3))
    assert sorted(epoch_order(10, 2, 5, 0, 3).tolist()) == list(range(10))
    w = np.array([0.0] * 5 + [1.0] * 5)
    drawn = epoch_order(10, 4, 25, 0, 0, w)
    assert len(drawn) == 100 and drawn.min() >= 5
    with pytest.raises(ValueError, match="3 sampling weights for 10"):
        epoch_order(10, 1, 1, 0, 0, np.ones(3))


def test_photo_augmentation_is_seeded_in_range_and_changes_images() -> None:
    x = torch.rand(16, 3, 32, 32) * 255
    a = augment_batch(x.clone(), PHOTO_AUGMENT, torch.Generator().manual_seed(3))
    b = augment_batch(x.clone(), PHOTO_AUGMENT, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    everything = AugmentConfig(sepia=1, fade=1, blur=1, low_res=1, noise=1, jpeg=1, border=1)
    c = augment_batch(x.clone(), everything, torch.Generator().manual_seed(0))
    assert c.shape == x.shape and torch.isfinite(c).all() and (c - x).abs().mean() > 5


def test_frame_ends_repeat_the_edge_beyond_the_inset() -> None:
    img = torch.arange(100, dtype=torch.float32).view(1, 10, 10)
    out = _frame_ends(img, torch.tensor([0.2, 0.0, 0.0, 0.3]), torch.tensor([True, True, True, True]))
    assert torch.equal(out[0, :, 0], out[0, :, 2])  # left 2 columns repeat column 2
    assert torch.equal(out[0, 9], out[0, 6])  # bottom 3 rows repeat row 6
    assert torch.equal(out[0, 3:6, 3:], img[0, 3:6, 3:])  # the inside is untouched


def test_face_template_comes_from_the_model_metadata_and_defaults_to_the_old_crop() -> None:
    assert FaceTemplate.from_meta(None) == LOOSE_AGE_TEMPLATE
    meta = {"right_eye": [0.295, 0.33], "left_eye": [0.705, 0.33], "mouth": [0.5, 0.78]}
    assert FaceTemplate.from_meta(meta) == TIGHT_AGE_TEMPLATE


def test_tight_crop_of_a_utkface_style_chip_stays_inside_the_chip() -> None:
    """The point of the tight template: on a chip cut the way UTKFace cuts them, the crop needs
    (almost) no border fill, so chips and photos with margins look alike to the model."""
    chip_pts = UTKFACE_CHIP.points(200)
    m = similarity_transform(TIGHT_AGE_TEMPLATE.points(128), chip_pts)  # crop -> chip coordinates
    corners = apply_transform(m, np.array([[0, 0], [128, 0], [0, 128], [128, 128]], float))
    assert corners.min() > -8 and corners.max() < 208  # at most a few pixels past the 200 px chip
    loose = apply_transform(similarity_transform(LOOSE_AGE_TEMPLATE.points(128), chip_pts),
                            np.array([[0, 0], [128, 128]], float))
    assert loose.min() < -50  # the old crop ran far past it


def test_medium_crop_is_the_tight_square_widened_by_a_quarter_about_its_centre() -> None:
    """Same face, same centre, 1.25x the side: the hair and neck band the tight crop cuts, and on a
    UTKFace chip a border band of about an eighth of the side (not the loose crop's 60% of the area)."""
    to_tight = similarity_transform(MEDIUM_AGE_TEMPLATE.points(128), TIGHT_AGE_TEMPLATE.points(128))
    corners = apply_transform(to_tight, np.array([[0, 0], [128, 128]], float))
    np.testing.assert_allclose(corners, [[-16, -16], [144, 144]], atol=0.5)
    chip = apply_transform(similarity_transform(MEDIUM_AGE_TEMPLATE.points(128), UTKFACE_CHIP.points(200)),
                           np.array([[0, 0], [128, 128]], float))
    assert -30 < chip.min() < -10 and chip.max() < 215  # 8-12% of the chip past its top and sides


def test_chip_insets_say_where_a_utkface_chip_ends_inside_each_template() -> None:
    tight, medium, loose = (chip_insets(t) for t in (TIGHT_AGE_TEMPLATE, MEDIUM_AGE_TEMPLATE, LOOSE_AGE_TEMPLATE))
    assert max(tight) < 0.02  # the tight crop is the chip
    assert 0.05 < medium[0] < 0.1 and 0.09 < medium[1] < 0.13 and medium[3] < 0.01  # sides and top, not the chin
    assert all(lo > me for lo, me in zip(loose, medium, strict=True))


def test_chip_fill_repeats_the_edge_beyond_the_chip_on_every_chosen_crop() -> None:
    still = AugmentConfig(flip=0, max_rotate_deg=0, scale=(1, 1), max_shift=0, brightness=0, contrast=0,
                          saturation=0, grayscale=0)
    x = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 255
    filled = augment_batch(x.clone(), replace(still, chip_fill=1.0, chip_insets=(0.2, 0.0, 0.0, 0.25)))
    assert torch.allclose(filled[..., 0], filled[..., 2], atol=1e-3)  # >= 3 px of the left side repeat its inner edge
    assert torch.allclose(filled[..., 19, :], filled[..., 16, :], atol=1e-3)  # >= 4 px at the bottom
    assert torch.allclose(filled[..., 8:12, 8:12], x[..., 8:12, 8:12], atol=1e-3)  # the face is untouched
    assert torch.allclose(augment_batch(x.clone(), replace(still, chip_fill=1.0)), x, atol=1e-3)  # no insets: nothing to fill


def test_tight_chip_puts_the_eyes_where_utkface_has_them() -> None:
    rgb = np.zeros((400, 300, 3), np.uint8)
    anchors = np.array([[120.0, 150], [180, 150], [150, 210]])
    chip = tight_chip(rgb, anchors)
    assert chip.shape == (200, 200, 3)


def test_context_summary_measures_how_far_answers_move() -> None:
    photo = np.array([10.0, 30, np.nan, 60])
    chip = np.array([12.0, 27, 5, 60])
    s = context_summary(photo, chip, np.array([5, 30, 40, 70]), ["a", "b", "b", "b"])
    assert s["n"] == 3 and s["n_skipped"] == 1
    assert s["mean_abs_diff"] == pytest.approx(5 / 3)
    assert s["by_source"]["a"]["mean_diff"] == 2.0 and s["by_source"]["b"]["n"] == 2
    assert s["by_age_band"]["3-9"]["mean_abs_diff"] == 2.0


def test_source_names_follow_the_dataset_folder() -> None:
    assert source_name("../shared/data/faces-20-50/train") == "faces-20-50"
    assert source_name("/x/utkface/") == "utkface"
    assert source_name("/x/my-set.csv") == "my-set"


def test_bad_crop_augment_and_balance_options_are_refused_before_the_run_folder(tmp_path: Path) -> None:
    for options, message in (({"face_crop": "wide"}, "--face-crop"), ({"eye_crop": "huge"}, "--eye-crop"),
                             ({"augment": "heavy"}, "--augment"),
                             ({"balance": "age"}, "--balance")):
        req = TrainRequest(task="age", data=[str(tmp_path)], out=str(tmp_path / "run"), **options)
        with pytest.raises(ValueError, match=message):
            run_training(req, log=lambda m: None)
        assert not (tmp_path / "run").exists()


def test_reproduce_command_names_crop_augmentation_and_balance() -> None:
    cfg = {"task": "age", "data": ["d"], "out": "runs/x", "archs": ["mobilenetv2"], "epochs": 1, "batch_size": 8,
           "lr": 0.001, "seed": 0, "split_resolved": "content"}
    assert "--face-crop loose --augment basic --balance none" in reproduce_commands(cfg, "mobilenetv2")[0]
    new = cfg | {"face_crop": "tight", "augment": "photo", "balance": "source"}
    assert "--face-crop tight --augment photo --balance source" in reproduce_commands(new, "mobilenetv2")[0]
    tuned = new | {"init_from": "models/age-mobilenetv2.pt"}
    assert reproduce_commands(tuned, "mobilenetv2")[0].endswith("--init-from models/age-mobilenetv2.pt")


@pytest.mark.data
@pytest.mark.slow
def test_leave_one_source_out_trains_twin_and_left_out_runs_and_resumes(tmp_path: Path, shared_data: Path) -> None:
    from facelens.train.cross_source import leave_one_source_out

    # Two small sources in folder-per-age layout, copied into tmp from the real sets (never into the repo).
    ages = {"20-50": sorted((shared_data / "faces-20-50" / "train").glob("*/*.jpg"))[::200][:30]}
    aaf = shared_data / "all-age-faces"
    ages["aaf"] = [aaf / line.split(",")[0] for line in (aaf / "labels.csv").read_text().splitlines()[1::300][:30]]
    data = []
    for name, files in ages.items():
        for f in files:
            age = f.parent.name if name == "20-50" else str(int(f.stem.split("A")[-1]))
            (tmp_path / "data" / name / age).mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / name / age / f.name).write_bytes(f.read_bytes())
        data.append(str(tmp_path / "data" / name))
    req = TrainRequest(task="age", data=data, out="", epochs=1, max_steps_per_epoch=1, batch_size=8,
                       input_size=48, pretrained=False, threads=2, fractions=(0.5, 0.2, 0.3))
    lines: list[str] = []
    out = tmp_path / "loso"
    result = leave_one_source_out(req, out, log=lambda m: None, echo=lines.append)
    assert set(result["by_source"]) == {"20-50", "aaf"}
    for name, row in result["by_source"].items():
        assert row["mae_ratio"] == pytest.approx(row["left_out"]["mae"] / row["in_source"]["mae"])
        cfg = json.loads((out / f"without-{name}" / "config.json").read_text())
        assert all(name not in d for d in cfg["data"])  # the left-out run never saw the source
    assert (out / "cross_source.json").exists() and lines[0].startswith("| source")
    logs: list[str] = []
    leave_one_source_out(req, out, log=logs.append, echo=lambda m: None)  # a re-run trains nothing
    assert sum("done before" in m for m in logs) == 3


def test_leave_one_source_out_for_eyes_scores_whole_faces_and_crops(tmp_path: Path, shared_data: Path) -> None:
    """The eye recipe: a crop-only source is scored on its crops, a face source on whole faces (both eyes)."""
    from facelens.train.config import cross_source_recipe
    from facelens.train.cross_source import leave_one_source_out, table_lines

    kaggle = tmp_path / "data" / "kaggle"
    for cls in ("femaleeyes", "maleeyes"):
        (kaggle / cls).mkdir(parents=True)
        for f in sorted((shared_data / "eyes" / cls).glob("*.jpg"))[:24]:
            (kaggle / cls / f.name).write_bytes(f.read_bytes())
    utk = tmp_path / "data" / "utk"
    utk.mkdir()
    for f in sorted((shared_data / "utkface").glob("*.jpg"))[::400][:24]:
        (utk / f.name).write_bytes(f.read_bytes())
    req = replace(cross_source_recipe("eyes"), data=[str(kaggle), str(utk)], epochs=1, max_steps_per_epoch=1,
                  batch_size=8, input_size=32, pretrained=False, threads=2, fractions=(0.5, 0.2, 0.3), split="random")
    result = leave_one_source_out(req, tmp_path / "loso", log=lambda m: None, echo=lambda m: None)
    rows = result["by_source"]
    assert result["task"] == "eyes" and set(rows) == {"kaggle", "utk"}
    assert rows["kaggle"]["in_source"]["unit"] == "crops" and rows["utk"]["in_source"]["unit"] == "faces"
    for row in rows.values():
        assert row["left_out"]["error"] == pytest.approx(1 - row["left_out"]["accuracy"])
        if row["in_source"]["error"] > 0:
            assert row["error_ratio"] == pytest.approx(row["left_out"]["error"] / row["in_source"]["error"])
    lines = table_lines(result)
    assert "error rate, never saw it" in lines[0] and len(lines) == 4


def test_face_crops_detect_once_per_file_content_and_rewarp_for_another_template(tmp_path: Path, monkeypatch) -> None:
    from skimage import data as skdata

    from facelens.data import crops as crops_mod
    from facelens.data.hygiene import content_digest

    photo = tmp_path / "astronaut.png"
    from PIL import Image

    Image.fromarray(skdata.astronaut()).save(photo)
    digest = content_digest(photo.read_bytes())
    tight = crops_mod.build_crops([photo], [digest], "face", 64, cache_dir=tmp_path / "cache", workers=1,
                                  template=TIGHT_AGE_TEMPLATE)
    assert tight.crops.shape == (1, 64, 64, 3) and not tight.failures

    def no_detection(path: str):
        raise AssertionError(f"detected {path} again")

    monkeypatch.setattr(crops_mod, "_detect_one", no_detection)
    loose = crops_mod.build_crops([photo], [digest], "face", 64, cache_dir=tmp_path / "cache", workers=1,
                                  template=LOOSE_AGE_TEMPLATE)
    assert loose.crops.shape == (1, 64, 64, 3)
    assert np.abs(loose.crops.astype(int) - tight.crops.astype(int)).mean() > 10  # another framing, same anchors
    store = crops_mod.AnchorStore(tmp_path / "cache" / "crops" / f"anchors-{crops_mod.PIPELINE_VERSION}.npz")
    assert store.anchors[digest] is not None and store.missing([digest, "other"]) == [1]
