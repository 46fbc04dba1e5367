"""Distilling a model's flip-averaged answer into one pass (``facelens train age --distill-from``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facelens.agebins import NUM_AGE_BINS
from facelens.models.wrappers import FlipAverage
from facelens.train.config import TrainRequest
from facelens.train.distill import distillation_targets, load_teacher, teacher_distributions, teacher_record
from facelens.train.export import export_onnx
from facelens.train.loop import expected_age, loss_fn, soft_age_targets
from tests.test_export import tiny_checkpoint

CROP = {"right_eye": [0.3, 0.3], "left_eye": [0.7, 0.3], "mouth": [0.5, 0.8]}
SPLIT = {"strategy": "content", "seed": 0, "fractions": [0.75, 0.1, 0.15]}


def teacher_file(path: Path, **changes) -> Path:
    """A tiny age checkpoint with the metadata a teacher carries (arch, size, crop, split), ``changes`` applied."""
    tiny_checkpoint(path, task="age")
    ck = torch.load(path, weights_only=True)
    ck["meta"] |= {"input_size": 64, "crop": CROP, "split": SPLIT} | changes
    torch.save(ck, path)
    return path


def test_a_distribution_target_is_used_as_it_is_and_the_l1_term_pulls_to_its_mean() -> None:
    torch.manual_seed(0)
    out = torch.randn(6, NUM_AGE_BINS)
    ages = torch.tensor([2.0, 8, 30, 45, 66, 80])
    as_labels = loss_fn("age-bins", out, ages, 1.5)
    as_distributions = loss_fn("age-bins", out, soft_age_targets(ages, 1.5), 1.5)
    assert float(as_labels) == pytest.approx(float(as_distributions), rel=1e-6)
    target = soft_age_targets(ages + 7, 3.0)  # a teacher that answers 7 years older, more widely
    with_l1 = loss_fn("age-bins", out, target, 1.5, age_l1=0.5) - loss_fn("age-bins", out, target, 1.5)
    bins = torch.arange(NUM_AGE_BINS, dtype=torch.float32)
    assert float(with_l1) == pytest.approx(0.5 * float((expected_age(out) - target @ bins).abs().mean()), rel=1e-5)


def test_targets_mix_teacher_and_label_by_the_weight_and_stay_distributions() -> None:
    ages = torch.tensor([5.0, 50.0])
    labels, teacher = soft_age_targets(ages, 1.5).numpy(), soft_age_targets(ages + 10, 1.5).numpy()
    bins = np.arange(NUM_AGE_BINS)
    for weight, mean in ((1.0, [15, 60]), (0.0, [5, 50]), (0.25, [7.5, 52.5])):
        t = distillation_targets(teacher, labels, weight)
        np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(t @ bins, mean, atol=0.01)
    with pytest.raises(ValueError, match="must be"):
        distillation_targets(teacher[:, :50], labels[:, :50], 1.0)


def test_teacher_distributions_are_the_flip_average_answer(tmp_path: Path) -> None:
    _, net = load_teacher(teacher_file(tmp_path / "t.pt"), arch="mobilenetv2", input_size=64, crop=CROP, split=SPLIT)
    crops = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    got = teacher_distributions(net, crops, torch.device("cpu"), batch_size=2)
    x = torch.as_tensor(crops).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        want = FlipAverage(net)(x).softmax(1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # not the one-pass answer: the mirror image changes what an untrained network says
    assert np.abs(got - net(x).softmax(1).detach().numpy()).max() > 1e-4


@pytest.mark.parametrize(("change", "named"), [
    ({"input_size": 96}, "input_size"), ({"crop": {"right_eye": [0.2, 0.3]}}, "crop"),
    ({"split": SPLIT | {"seed": 1}}, "another split"), ({"task": "eyes", "head": "binary"}, "task"),
])
def test_a_teacher_for_other_pixels_or_another_split_is_refused_naming_it(tmp_path: Path, change: dict, named: str) -> None:
    path = teacher_file(tmp_path / "t.pt", **change)
    with pytest.raises(ValueError, match=named) as err:
        load_teacher(path, arch="mobilenetv2", input_size=64, crop=CROP, split=SPLIT)
    assert str(path) in str(err.value)


def test_a_file_without_metadata_is_not_a_teacher(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not a facelens model.pt"):
        load_teacher(path, arch="mobilenetv2", input_size=64, crop=CROP, split=SPLIT)


def test_the_teacher_record_names_the_file_by_content(tmp_path: Path) -> None:
    path = teacher_file(tmp_path / "t.pt")

    rec = teacher_record(path, {"created": "2026-12-06T00:00:00Z"}, 0.5)
    assert rec["teacher_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and rec["weight"] == 0.5


def test_distill_options_are_checked_before_the_run(tmp_path: Path) -> None:
    def request(**kw) -> TrainRequest:
        return TrainRequest(**({"task": "age", "data": ["x"], "out": str(tmp_path / "run")} | kw))

    with pytest.raises(ValueError, match="no such model file"):
        request(distill_from=str(tmp_path / "missing.pt")).check()
    with pytest.raises(ValueError, match="distill-weight"):
        request(distill_weight=1.5).check()
    teacher = str(teacher_file(tmp_path / "t.pt"))
    with pytest.raises(ValueError, match="only age"):
        request(task="eyes", distill_from=teacher).check()
    with pytest.raises(ValueError, match="one --arch"):
        request(archs=["mobilenetv2", "seed-cnn"], distill_from=teacher).check()
    request(distill_from=teacher).check()


def test_export_follows_the_models_own_tta_unless_told(tmp_path: Path) -> None:
    pt = tiny_checkpoint(tmp_path / "age.pt", task="age")
    ck = torch.load(pt, weights_only=True)
    ck["meta"]["tta"] = "none"  # as a distilled model's
    torch.save(ck, pt)
    for name, tta, want in (("own", None, "none"), ("told", True, "flip-average")):
        export_onnx(pt, tmp_path / f"{name}.onnx", tta=tta, parity_samples=2, log=lambda m: None)
        assert json.loads((tmp_path / f"{name}.json").read_text())["tta"] == want
