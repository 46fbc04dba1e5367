"""`facelens evaluate` without --model uses the shipped model, and warns when the split is in-sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_export import eye_folder_dataset, tiny_checkpoint  # tests/ is on sys.path under pytest's default import mode
from typer.testing import CliRunner

from facelens.cli import app
from facelens.evaluate.overlap import in_sample_warning, overlapping_data


def test_overlap_by_folder_relative_to_where_training_ran(tmp_path: Path, monkeypatch) -> None:
    repo, data = tmp_path / "repo", tmp_path / "shared" / "data"
    (data / "utkface").mkdir(parents=True)
    (data / "eyes").mkdir()
    repo.mkdir()
    monkeypatch.chdir(tmp_path)
    model_data = ["../shared/data/utkface"]  # as recorded by a training run in repo/
    assert overlapping_data(model_data, [str(data / "utkface")], [repo]) == [str(data / "utkface")]
    assert overlapping_data(model_data, [str(data)], [repo]) == [str(data)]  # a parent folder holds it
    assert overlapping_data(model_data, ["shared/data/utkface/part"], [repo]) == ["shared/data/utkface/part"]
    assert overlapping_data(model_data, [str(data / "eyes")], [repo]) == []
    assert overlapping_data(model_data, [str(data / "utkface")], [tmp_path / "a" / "b"]) == []


def test_only_train_and_all_are_in_sample(tmp_path: Path) -> None:
    meta = {"data": [str(tmp_path)]}
    assert in_sample_warning(tmp_path / "m.onnx", meta, [str(tmp_path)], "test") is None
    assert in_sample_warning(tmp_path / "m.onnx", meta, [str(tmp_path)], "val") is None
    assert "is the model's own training split" in in_sample_warning(tmp_path / "m.onnx", meta, [str(tmp_path)], "train")
    assert "includes the model's own training split" in in_sample_warning(tmp_path / "m.onnx", meta, [str(tmp_path)], "all")
    assert in_sample_warning(tmp_path / "m.onnx", {}, [str(tmp_path)], "train") is None  # older models: no record


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of 'shipped' models holding a tiny eye model trained (by its metadata) on a tiny dataset."""
    from facelens.train.export import export_onnx

    d = tmp_path_factory.mktemp("ship")
    data = eye_folder_dataset(d / "eyes", per_class=12)
    pt = tiny_checkpoint(d / "eyes.pt")
    ck = torch.load(pt, weights_only=False)
    ck["meta"] |= {"split": {"strategy": "random", "seed": 0, "fractions": [0.5, 0.25, 0.25], "block_size": None},
                   "class_map": {"femaleeyes": 1, "maleeyes": 0}, "data": [str(data)]}
    torch.save(ck, pt)
    models = d / "models"
    models.mkdir()
    export_onnx(pt, models / "eyes-mobilenetv2.onnx", tta=False, parity_samples=2, log=lambda m: None)
    return models, data


def _evaluate(monkeypatch, models: Path, *args: str):
    monkeypatch.setenv("FACELENS_MODELS", str(models))
    monkeypatch.setenv("FACELENS_CACHE", str(models.parent / "cache"))
    return CliRunner().invoke(app, ["evaluate", "eyes", *args])


def test_evaluate_without_model_uses_the_shipped_one_and_warns_in_sample(shipped, monkeypatch) -> None:
    models, data = shipped
    res = _evaluate(monkeypatch, models, "--data", str(data), "--split", "train")
    assert res.exit_code == 0, res.output
    assert f"evaluating the shipped eyes model {models / 'eyes-mobilenetv2.onnx'}" in res.output
    assert "warning:" in res.output and "--split train" in res.output and "use --split test" in res.output
    res = _evaluate(monkeypatch, models, "--data", str(data))  # the default split, test: no warning
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.output


def test_evaluate_without_any_model_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    res = _evaluate(monkeypatch, tmp_path, "--data", str(tmp_path))
    assert res.exit_code == 2
    assert "no --model given and no shipped eyes model" in res.output and "Traceback" not in res.output


def test_evaluate_defaults_to_the_single_eye_model_for_ready_cut_crops_and_the_photo_model_for_faces(
        tmp_path: Path, write_jpeg, monkeypatch) -> None:
    from facelens.evaluate.pipeline import default_model_for

    monkeypatch.setenv("FACELENS_MODELS", str(tmp_path / "models"))
    crops = eye_folder_dataset(tmp_path / "eyes", per_class=2)
    write_jpeg(tmp_path / "utk" / "34_1_0_20170101.jpg.chip.jpg", seed=1)
    faces = str(tmp_path / "utk")
    assert default_model_for("eyes", [faces]).name == "eyes-both-mobilenetv2.onnx"
    assert default_model_for("eyes", [str(crops)]).name == "eyes-mobilenetv2.onnx"
    assert default_model_for("eyes", [str(crops), faces]).name == "eyes-mobilenetv2.onnx"  # only it reads both kinds
    assert default_model_for("age", [faces]).name == "age-mobilenetv2.onnx"


def test_models_sharing_a_file_name_keep_their_own_labels() -> None:
    """Three runs' ``<run>/mobilenetv2/model.pt`` compared at once: each gets its own label, so no
    model's metrics or paired difference overwrites another's."""
    from facelens.evaluate.pipeline import _model_label

    seen: set[str] = set()
    paths = [Path("runs/a/mobilenetv2/model.pt"), Path("runs/b/mobilenetv2/model.pt"),
             Path("runs/c/mobilenetv2/model.pt"), Path("runs/c/mobilenetv2/model.pt")]
    labels = [_model_label(p, {"arch": "mobilenetv2"}, seen) for p in paths]
    assert len(set(labels)) == 4
    assert labels[:3] == ["mobilenetv2", "mobilenetv2 (model.pt)", "mobilenetv2 (runs/c/mobilenetv2/model.pt)"]
