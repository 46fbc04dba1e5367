"""End-to-end runs on the real data in ../shared/data (skipped when it is absent).

- a tiny training run per task (a few steps of one epoch) produces a model, which then goes
  through export, predict and evaluate via the real command line;
- the shipped models beat the trivial predictor (mean age / majority class) on held-out
  test-split samples they never saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facelens.api import Analyzer, default_model_path
from facelens.evaluate.model_card import format_value

pytestmark = [pytest.mark.data, pytest.mark.slow]


def facelens(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "facelens.cli", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"facelens {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_age_run(tmp_path_factory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("age-run")
    facelens("train", "age", "--data", str(shared_data / "faces-20-50" / "train"), "--out", str(out), "--epochs", "1",
             "--max-images", "48", "--max-steps-per-epoch", "2", "--batch-size", "16", "--arch", "mobilenetv2",
             "--arch", "seed-cnn")
    return out


def test_tiny_age_training_writes_a_complete_run(tiny_age_run: Path) -> None:
    for name in ("config.json", "hygiene.json", "split.csv", "comparison.json"):
        assert (tiny_age_run / name).is_file(), name
    comparison = json.loads((tiny_age_run / "comparison.json").read_text())
    assert set(comparison["models"]) == {"mobilenetv2", "seed-cnn"}
    meta = json.loads((tiny_age_run / "mobilenetv2" / "meta.json").read_text())
    assert meta["split"]["strategy"] == "content" and meta["interval_scale"] > 0
    assert (tiny_age_run / "mobilenetv2" / "checkpoints" / "last.pt").is_file()


def test_a_run_with_another_training_seed_and_the_same_split_seed_scores_on_the_same_images(
        tiny_age_run: Path, tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "seed1"
    facelens("train", "age", "--data", str(shared_data / "faces-20-50" / "train"), "--out", str(out), "--epochs", "1",
             "--max-images", "48", "--max-steps-per-epoch", "2", "--batch-size", "16", "--seed", "1", "--split-seed", "0",
             "--precision", "auto")
    assert (out / "split.csv").read_text() == (tiny_age_run / "split.csv").read_text()
    meta = json.loads((out / "mobilenetv2" / "meta.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert meta["split"]["seed"] == 0 and config["seed"] == 1
    # ``auto`` is kept as asked (a resume re-resolves it on its machine); what ran is recorded beside it.
    import torch

    from facelens.train.loop import native_bf16

    ran = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert config["precision"] == "auto" and config["precision_resolved"] == ran == meta["training"]["precision"]
    first = np.load(tiny_age_run / "mobilenetv2" / "test_predictions.npz")
    second = np.load(out / "mobilenetv2" / "test_predictions.npz")
    assert list(first["paths"]) == list(second["paths"]) and len(first["paths"]) > 0  # the same test images, same order
    assert not np.allclose(first["outputs"], second["outputs"])  # trained with other randomness


def test_the_runs_config_json_reads_back_as_the_request_it_ran(tiny_age_run: Path) -> None:
    from dataclasses import asdict

    from facelens.train.config import RECORDED_KEYS, request_from_config

    written = json.loads((tiny_age_run / "config.json").read_text())
    req = request_from_config(tiny_age_run / "config.json")  # what ``facelens train --config`` would run
    assert req.epochs == 1 and req.max_images == 48 and req.archs == ["mobilenetv2", "seed-cnn"]
    assert json.loads(json.dumps(asdict(req))) == {k: v for k, v in written.items() if k not in RECORDED_KEYS}


def test_tiny_age_model_exports_predicts_and_evaluates(tiny_age_run: Path, tmp_path: Path, shared_data: Path) -> None:
    onnx = tmp_path / "age.onnx"
    out = facelens("export", "--model", str(tiny_age_run / "mobilenetv2" / "model.pt"), "--out", str(onnx)).stdout
    diff = float(out.rsplit("max abs difference", 1)[1].strip())
    assert diff < 1e-3
    photo = next((shared_data / "faces-20-50" / "train" / "30").glob("*.jpg"))
    res = facelens("predict", str(photo), "--json", "--age-model", str(onnx), "--no-eyes")
    line = json.loads(res.stdout.splitlines()[0])
    assert line["error"] is None and line["path"] == str(photo)
    if line["faces"]:
        age = line["faces"][0]["age"]
        assert age["low"] <= age["value"] <= age["high"]
    metrics = tmp_path / "m.json"
    facelens("evaluate", "age", "--model", str(onnx), "--data", str(shared_data / "faces-20-50" / "train"),
             "--out", str(metrics))
    m = json.loads(metrics.read_text())["models"]
    (only,) = m.values()
    assert only["split"] == "test" and only["n_scored"] > 0 and np.isfinite(only["mae"])


def test_a_run_can_fine_tune_a_trained_model_on_its_split(tiny_age_run: Path, tmp_path: Path, shared_data: Path) -> None:
    trained = tiny_age_run / "mobilenetv2" / "model.pt"
    common = ("--data", str(shared_data / "faces-20-50" / "train"), "--epochs", "1", "--max-images", "48",
              "--max-steps-per-epoch", "1", "--batch-size", "16", "--arch", "mobilenetv2", "--lr", "1e-9",
              "--seed", "1")  # another initial head than the trained run's (seed 0)
    facelens("train", "age", *common, "--split-seed", "0", "--out", str(tmp_path / "tuned"), "--init-from", str(trained))
    meta = json.loads((tmp_path / "tuned" / "mobilenetv2" / "meta.json").read_text())
    assert meta["training"]["init_from"]["model"] == str(trained)
    # at a learning rate of 1e-9 the fine-tuned head is the trained one; from ImageNet weights it is a new one
    head = "1.classifier.1.weight"
    before = torch.load(trained, weights_only=True)["state_dict"][head]
    after = torch.load(tmp_path / "tuned" / "mobilenetv2" / "model.pt", weights_only=True)["state_dict"][head]
    assert torch.allclose(before, after, atol=1e-6)
    facelens("train", "age", *common, "--split-seed", "0", "--out", str(tmp_path / "fresh"))
    fresh = torch.load(tmp_path / "fresh" / "mobilenetv2" / "model.pt", weights_only=True)["state_dict"][head]
    assert not torch.allclose(before, fresh, atol=1e-3)
    # the trained model's split is this run's: the same test images
    first = np.load(tiny_age_run / "mobilenetv2" / "test_predictions.npz")
    second = np.load(tmp_path / "tuned" / "mobilenetv2" / "test_predictions.npz")
    assert list(first["paths"]) == list(second["paths"])
    # another split on the same data: refused before any crop is cut, naming the file
    refused = facelens("train", "age", *common, "--out", str(tmp_path / "other"), "--init-from", str(trained),
                       "--split-seed", "3", check=False)
    assert refused.returncode != 0 and str(trained) in refused.stderr and "another split" in refused.stderr
    assert not (tmp_path / "other" / "mobilenetv2" / "crop_failures.json").exists()
    assert "Traceback" not in refused.stderr


def small_manifest(shared_data: Path, folder: Path) -> tuple[Path, list[Path]]:
    """A CSV manifest of 48 faces-20-50 photos aged 30 and 45, for re-calibrating an export quickly."""
    photos = sorted((shared_data / "faces-20-50" / "train" / "30").glob("*.jpg"))[:24]
    photos += sorted((shared_data / "faces-20-50" / "train" / "45").glob("*.jpg"))[:24]
    manifest = folder / "small.csv"
    manifest.write_text("path,age\n" + "".join(f"{p},{p.parent.name}\n" for p in photos))
    return manifest, photos


def test_shipped_variant_gets_its_own_metrics_and_card(tiny_age_run: Path, tmp_path: Path, shared_data: Path) -> None:
    """A --no-tta export re-measured on a small manifest; its card reports it and shows the run's model beside it."""
    manifest, photos = small_manifest(shared_data, tmp_path)
    onnx = tmp_path / "age-fast.onnx"
    facelens("export", "--model", str(tiny_age_run / "mobilenetv2" / "model.pt"), "--out", str(onnx), "--no-tta",
             "--data", str(manifest))
    meta = json.loads(onnx.with_suffix(".json").read_text())
    assert meta["tta"] == "none" and meta["export"]["recalibrated_on"] == "val"
    assert 0 < meta["metrics"]["n"] < len(photos)
    card = tmp_path / "card.md"
    facelens("model-card", "--run", str(tiny_age_run), "--model", str(onnx), "--out", str(card))
    text = card.read_text()
    export_line = next(line for line in text.splitlines() if line.startswith("facelens export"))
    assert "--no-tta" in export_line and manifest.name in export_line
    assert "The run's PyTorch model" in text
    assert format_value(meta["metrics"]["mae"]) in text


@pytest.mark.parametrize("answer_map", [True, False])
def test_int8_age_export_maps_its_answers_onto_the_float_network(tiny_age_run: Path, tmp_path: Path, shared_data: Path,
                                                                  answer_map: bool) -> None:
    """An int8 age file carries the answer map fitted at export (or none when asked), and its card rebuilds it."""
    manifest, _ = small_manifest(shared_data, tmp_path)
    onnx = tmp_path / "age-int8.onnx"
    facelens("export", "--model", str(tiny_age_run / "mobilenetv2" / "model.pt"), "--out", str(onnx), "--int8",
             "--int8-calibration", "percentile", *([] if answer_map else ["--no-int8-answer-map"]), "--data", str(manifest))
    meta = json.loads(onnx.with_suffix(".json").read_text())
    assert meta["precision"] == "int8" and meta["quantization"]["calibration"] == "percentile"
    if answer_map:
        offset, slope = meta["age_answer_map"]
        assert 0.5 < slope < 2.0 and abs(offset) < 50
    else:
        assert meta.get("age_answer_map") is None
    card = tmp_path / "card.md"
    facelens("model-card", "--run", str(tiny_age_run), "--model", str(onnx), "--out", str(card))
    export_line = next(line for line in card.read_text().splitlines() if line.startswith("facelens export"))
    assert "--int8 --int8-calibration percentile" in export_line
    assert ("--no-int8-answer-map" in export_line) is not answer_map


def test_resume_continues_a_finished_run_without_retraining(tiny_age_run: Path, shared_data: Path) -> None:
    before = (tiny_age_run / "mobilenetv2" / "checkpoints" / "best.pt").stat().st_mtime_ns
    proc = facelens("train", "age", "--data", str(shared_data / "faces-20-50" / "train"), "--out", str(tiny_age_run),
                    "--epochs", "1", "--max-images", "48", "--max-steps-per-epoch", "2", "--batch-size", "16",
                    "--resume")
    assert "resumed from" in proc.stderr
    assert (tiny_age_run / "mobilenetv2" / "checkpoints" / "best.pt").stat().st_mtime_ns == before


def test_tiny_eye_training_and_predict_eyes(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "eyes-run"
    proc = facelens("train", "eyes", "--data", str(shared_data / "eyes"), "--out", str(out), "--epochs", "1",
                    "--max-images", "48", "--max-steps-per-epoch", "2", "--batch-size", "16")
    assert "femaleeyes -> female" in proc.stderr and "split (blocks" in proc.stderr
    model = out / "mobilenetv2" / "model.pt"
    crop = next((shared_data / "eyes" / "maleeyes").glob("*.jpg"))
    res = json.loads(facelens("predict-eyes", str(crop), "--json", "--eye-model", str(model)).stdout)
    assert res["error"] is None and abs(res["p_female"] + res["p_male"] - 1) < 1e-3


def test_tiny_both_eye_training_predicts_one_crop_per_face_and_refuses_eye_crops(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "both-run"
    facelens("train", "eyes", "--data", str(shared_data / "utkface"), "--out", str(out), "--epochs", "1",
             "--max-images", "48", "--max-steps-per-epoch", "2", "--batch-size", "16", "--eye-crop", "both")
    model = out / "mobilenetv2" / "model.pt"
    meta = json.loads((out / "mobilenetv2" / "meta.json").read_text())
    assert meta["eye_crop"]["both_eyes"] is True and meta["input_size"] == 96
    photo = next((shared_data / "utkface").glob("*.jpg"))
    res = json.loads(facelens("predict", str(photo), "--json", "--no-age", "--eye-model", str(model)).stdout)
    assert [e["side"] for e in res["faces"][0]["sex"]["eyes"]] == ["both"]
    crop = next((shared_data / "eyes" / "maleeyes").glob("*.jpg"))
    refused = facelens("predict-eyes", str(crop), "--eye-model", str(model), check=False)
    assert refused.returncode != 0 and "reads both eyes" in refused.stderr
    refused = facelens("evaluate", "eyes", "--model", str(model), "--data", str(shared_data / "eyes"), check=False)
    assert refused.returncode != 0 and "ready-cut single-eye crops" in refused.stderr


def _sample(task: str, shared_data: Path, n: int, data: list[Path]):
    from facelens.data.prepare import prepare_records
    from facelens.data.splits import DEFAULT_FRACTIONS

    strategy = "content" if task == "age" else "blocks"
    prep = prepare_records(task, [str(d) for d in data], strategy, 0, DEFAULT_FRACTIONS, log=lambda m: None)
    test = np.flatnonzero(prep.splits == "test")
    train_mean = float(prep.targets[prep.splits == "train"].mean())
    pick = np.random.default_rng(1).choice(test, size=min(n, len(test)), replace=False)
    return [prep.records[i] for i in pick], prep.targets[pick], train_mean


def test_shipped_age_model_beats_the_mean_on_held_out_faces(shared_data: Path) -> None:
    model = default_model_path("age")
    if not model.is_file():
        pytest.fail(f"shipped age model missing: {model}")
    records, ages, train_mean = _sample("age", shared_data, 200, [shared_data / "utkface"])
    analyzer = Analyzer(eye_model=False)
    pred, true = [], []
    for r, a in zip(records, ages, strict=True):
        res = analyzer.analyze(r.path)
        if res.faces:
            pred.append(res.faces[0].age.value)
            true.append(a)
    true_arr, pred_arr = np.array(true), np.array(pred)
    assert len(pred) > 150
    model_mae = np.abs(pred_arr - true_arr).mean()
    mean_mae = np.abs(train_mean - true_arr).mean()
    assert model_mae < 0.6 * mean_mae, (model_mae, mean_mae)


def test_shipped_eye_model_beats_the_majority_class_on_a_held_out_block(shared_data: Path) -> None:
    model = default_model_path("eyes", ready_cut=True)
    if not model.is_file():
        pytest.fail(f"shipped eye model missing: {model}")
    records, labels, train_rate = _sample("eyes", shared_data, 300, [shared_data / "eyes"])
    results = Analyzer(age_model=False, eye_model=model).predict_eye_crops([r.path for r in records])
    p = np.array([r.p_female for r in results])
    accuracy = np.mean((p >= 0.5) == (labels >= 0.5))
    majority = max(labels.mean(), 1 - labels.mean())
    assert accuracy > majority + 0.1, (accuracy, majority)
