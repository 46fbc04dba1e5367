"""Starting a run from a trained model (``facelens train --init-from``): what is refused, what is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facelens.train.config import TrainRequest
from facelens.train.init_from import init_record, load_trained
from tests.test_export import tiny_checkpoint

CROP = {"right_eye": [0.3, 0.3], "left_eye": [0.7, 0.3], "mouth": [0.5, 0.8]}
SPLIT = {"strategy": "content", "seed": 0, "fractions": [0.75, 0.1, 0.15]}
DATA = ["faces", "more-faces"]
WANTED = {"head": "age-bins", "input_size": 64, "crop": CROP}


def trained_file(path: Path, **changes) -> Path:
    """A tiny age checkpoint with the metadata a trained run writes (size, crop, split, data), ``changes`` applied."""
    tiny_checkpoint(path, task="age")
    ck = torch.load(path, weights_only=True)
    ck["meta"] |= {"input_size": 64, "crop": CROP, "split": SPLIT, "data": DATA} | changes
    torch.save(ck, path)
    return path


def load(path: Path, data: list[str] = DATA, split: dict = SPLIT):
    return load_trained(path, task="age", arch="mobilenetv2", wanted=WANTED, data=data, split=split)


@pytest.mark.parametrize(("change", "named"), [
    ({"input_size": 96}, "input_size"), ({"crop": {"right_eye": [0.2, 0.3]}}, "crop"),
    ({"split": SPLIT | {"seed": 1}}, "another split"), ({"task": "eyes", "head": "binary"}, "'eyes' model"),
    ({"arch": "seed-cnn"}, "its arch is 'seed-cnn'"),
])
def test_a_model_for_other_pixels_or_another_split_is_refused_naming_it(tmp_path: Path, change: dict, named: str) -> None:
    path = trained_file(tmp_path / "t.pt", **change)
    with pytest.raises(ValueError, match=named) as err:
        load(path)
    assert str(path) in str(err.value)


def test_a_content_split_must_match_even_on_other_folders_which_may_hold_copies(tmp_path: Path) -> None:
    path = trained_file(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="another split.*--split-seed 0"):
        load(path, data=["my-own-photos"], split=SPLIT | {"seed": 7})
    meta, weights = load(path, data=["my-own-photos"])
    assert meta["split"] == SPLIT and "1.classifier.1.weight" in weights


def test_another_random_split_is_fine_when_the_model_never_saw_these_folders(tmp_path: Path) -> None:
    random = {"strategy": "random", "seed": 7, "fractions": [0.75, 0.1, 0.15]}
    path = trained_file(tmp_path / "t.pt", split=random)
    assert load(path, data=["my-own-photos"])[0]["split"] == random
    with pytest.raises(ValueError, match="another split"):
        load(path, data=DATA)


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a facelens model.pt"):
        load(path)


def test_the_record_names_the_file_by_path_and_content(tmp_path: Path) -> None:
    path = trained_file(tmp_path / "t.pt")
    meta, _ = load(path)
    record = init_record(path, meta)
    assert record["model"] == str(path) and len(record["sha256"]) == 64
    trained_file(path, created="another day")
    assert init_record(path, load(path)[0])["sha256"] != record["sha256"]


def test_the_request_checks_the_file_and_one_arch_before_reading_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such model file"):
        TrainRequest(task="age", data=["d"], out="o", init_from=str(tmp_path / "missing.pt")).check()
    path = trained_file(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="one --arch"):
        TrainRequest(task="age", data=["d"], out="o", init_from=str(path), archs=["mobilenetv2", "seed-cnn"]).check()
