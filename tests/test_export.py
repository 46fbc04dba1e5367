"""ONNX export: the exported graph (flip TTA included) gives the PyTorch model's outputs, metadata survives.

The model is a throwaway MobileNetV2 eye model (64 px) with random weights. A freshly
initialised deep network gives nearly the same output for every input, which would let a
broken export pass, so its BatchNorm statistics are re-estimated on random images and the
head is re-drawn: outputs then differ from input to input and from the mirrored input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facelens.cli import app
from facelens.errors import ModelLoadError
from facelens.infer.predictor import OnnxPredictor, TorchPredictor, load_predictor
from facelens.models.factory import create_model, default_input_size
from facelens.train.export import export_onnx


def tiny_checkpoint(path: Path, task: str = "eyes", seed: int = 0) -> Path:
    """Save an input-sensitive, untrained MobileNetV2 in the trainer's checkpoint format."""
    torch.manual_seed(seed)
    model = create_model("mobilenetv2", task, pretrained=False)
    size = default_input_size("mobilenetv2", task)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None  # cumulative average over the calibration passes
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, 0.1)
        model.train()
        for _ in range(2):
            model(torch.rand(16, 3, size, size) * 255)
    head = "age-bins" if task == "age" else "binary"
    meta = {"name": f"test-{task}", "task": task, "arch": "mobilenetv2", "head": head, "input_size": size,
            "tta": "flip-average"} | ({"interval": 0.8, "interval_scale": 1.0} if task == "age" else {"temperature": 1.0})
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, dict]:
    d = tmp_path_factory.mktemp("export")
    pt = tiny_checkpoint(d / "eyes.pt")
    res = export_onnx(pt, d / "eyes.onnx")
    return pt, d / "eyes.onnx", res


def test_export_reports_small_parity_difference(exported):
    _, onnx_path, res = exported
    assert onnx_path.is_file()
    assert res["out"] == str(onnx_path)
    assert res["samples"] > 0
    assert 0.0 <= res["max_abs_diff"] < 1e-3


def test_onnx_matches_torch_on_fresh_inputs(exported):
    pt, onnx_path, _ = exported
    tp, op = TorchPredictor(pt), OnnxPredictor(onnx_path)
    crops = np.random.default_rng(123).integers(0, 256, size=(9, 64, 64, 3), dtype=np.uint8)
    want, got = tp(crops), op(crops, batch_size=4)  # odd batch split: dynamic batch axis works
    assert got.shape == want.shape == (9, 1)
    assert np.ptp(want) > 0.1, "test model must be input-sensitive, or parity proves nothing"
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max())))
    # the flip-average TTA is inside the graph: a mirrored crop gives the same output
    np.testing.assert_allclose(op(crops[:, :, ::-1].copy()), got, atol=1e-3 * max(1.0, float(np.abs(got).max())))


def test_metadata_travels_with_onnx_file(exported):
    pt, onnx_path, _ = exported
    op = load_predictor(onnx_path)
    assert op.backend == "onnx"
    assert {k: v for k, v in op.meta.items() if k not in ("precision", "export")} == TorchPredictor(pt).meta
    assert op.meta["precision"] == "fp32"
    assert op.meta["export"]["parity_max_abs_diff"] < 1e-3
    assert load_predictor(onnx_path, backend="torch").backend == "torch"  # the .pt twin beside it


def test_torch_backend_needs_pt_twin(tmp_path, exported):
    _, onnx_path, _ = exported
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_path.read_bytes())
    with pytest.raises(ModelLoadError, match="lone.pt"):
        load_predictor(lone, backend="torch")


def test_cli_export_prints_parity(tmp_path, exported):
    pt, _, _ = exported
    out = tmp_path / "cli.onnx"
    res = CliRunner().invoke(app, ["export", "--model", str(pt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert "max abs difference" in res.output
    diff = float(res.output.rsplit("max abs difference", 1)[1].split()[0])
    assert diff < 1e-3


def test_cli_export_of_a_non_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    res = CliRunner().invoke(app, ["export", "--model", str(bad), "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code != 0
    assert "bad.pt" in res.output
    assert not (tmp_path / "x.onnx").exists()
    assert "Traceback" not in res.output


def test_no_tta_export_is_the_bare_network(tmp_path, exported):
    pt, _, _ = exported
    res = export_onnx(pt, tmp_path / "bare.onnx", tta=False)
    bare = OnnxPredictor(tmp_path / "bare.onnx")
    assert bare.meta["tta"] == "none"
    assert res["max_abs_diff"] < 1e-3
    crops = np.random.default_rng(5).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    out, mirrored = bare(crops), bare(crops[:, :, ::-1].copy())
    assert np.abs(out - mirrored).max() > 1e-3, "without TTA a mirrored crop gives another output"
    # the flip-average model is the mean of the bare model on the crop and its mirror
    np.testing.assert_allclose(load_predictor(exported[1])(crops), (out + mirrored) / 2, atol=1e-3)


def eye_folder_dataset(root: Path, per_class: int = 40) -> Path:
    """Two class folders of small random JPEGs (content differs, so the content split is stable)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("femaleeyes", "maleeyes"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}{i}.jpg", quality=90)
    return root


def test_int8_export_is_recalibrated_and_measured_on_its_own_split(tmp_path, exported, monkeypatch):
    monkeypatch.setenv("FACELENS_CACHE", str(tmp_path / "cache"))
    pt, fp32_onnx, _ = exported
    ck = torch.load(pt, weights_only=False)
    ck["meta"] |= {"split": {"strategy": "random", "seed": 0, "fractions": [0.5, 0.25, 0.25], "block_size": None},
                   "class_map": {"femaleeyes": 1, "maleeyes": 0}}
    torch.save(ck, tmp_path / "eyes.pt")
    data = eye_folder_dataset(tmp_path / "eyes")
    res = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "eyes.pt"), "--out", str(tmp_path / "q.onnx"),
                                   "--int8", "--int8-calibration", "percentile", "--data", str(data)])
    assert res.exit_code == 0, res.output
    q = OnnxPredictor(tmp_path / "q.onnx")
    assert q.meta["precision"] == "int8" and q.meta["tta"] == "flip-average"
    assert q.meta["quantization"]["calibration"] == "percentile"
    assert q.meta["export"]["recalibrated_on"] == "val"
    # the stored test metrics are what `facelens evaluate` measures on the same split with this file
    res = CliRunner().invoke(app, ["evaluate", "eyes", "--model", str(tmp_path / "q.onnx"), "--data", str(data),
                                   "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    measured = next(iter(json.loads((tmp_path / "m.json").read_text())["models"].values()))
    assert q.meta["metrics"]["split"] == "test" and 0 < q.meta["metrics"]["n"] < 80
    assert measured["n"] == q.meta["metrics"]["n"]
    assert measured["accuracy"] == pytest.approx(q.meta["metrics"]["accuracy"])
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * fp32_onnx.stat().st_size
    import onnx

    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer), "weights stored as int8"
    # the stem convolution and the head read float32 weights straight from the file; every other Conv is quantised
    float_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    kept = [n for n in convs + [n for n in graph.node if n.op_type == "Gemm"] if n.input[1] in float_weights]
    assert [n.name for n in kept] == q.meta["quantization"]["float32_nodes"]
    assert len(kept) == 2 and kept[0] is convs[0] and kept[1].op_type == "Gemm"


def test_unknown_int8_calibration_is_a_clear_error(tmp_path, exported):
    pt, _, _ = exported
    res = CliRunner().invoke(app, ["export", "--model", str(pt), "--out", str(tmp_path / "q.onnx"), "--int8",
                                   "--int8-calibration", "entropy", "--data", str(tmp_path)])
    assert res.exit_code != 0
    assert "minmax" in res.output and "percentile" in res.output
    assert not (tmp_path / "q.onnx").exists()


def test_int8_without_data_is_a_clear_error(tmp_path, exported):
    pt, _, _ = exported
    res = CliRunner().invoke(app, ["export", "--model", str(pt), "--out", str(tmp_path / "q.onnx"), "--int8"])
    assert res.exit_code != 0
    assert "--data" in res.output
    assert not (tmp_path / "q.onnx").exists()


def test_failed_export_keeps_the_previous_file_and_leaves_no_temporary_files(tmp_path, exported, monkeypatch):
    import facelens.train.export as export_module

    pt, _, _ = exported
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous model")

    def broken_parity(*args, **kwargs):
        raise RuntimeError("parity run failed")

    monkeypatch.setattr(export_module, "OnnxPredictor", broken_parity)
    with pytest.raises(RuntimeError, match="parity run failed"):
        export_onnx(pt, out)
    assert out.read_bytes() == b"the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_pt_out_recalibrates_the_checkpoint_on_its_own_outputs(tmp_path, exported, monkeypatch):
    """``--out X.pt``: the .pt twin gets calibration fitted on its own val outputs, test metrics that
    ``evaluate`` reproduces, and the same weights; without --data it is a clear error and nothing is written."""
    monkeypatch.setenv("FACELENS_CACHE", str(tmp_path / "cache"))
    pt, _, _ = exported
    ck = torch.load(pt, weights_only=False)
    ck["meta"] |= {"split": {"strategy": "random", "seed": 0, "fractions": [0.5, 0.25, 0.25], "block_size": None},
                   "class_map": {"femaleeyes": 1, "maleeyes": 0}, "temperature": 123.0}
    torch.save(ck, tmp_path / "eyes.pt")
    data = eye_folder_dataset(tmp_path / "eyes")
    res = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "eyes.pt"), "--out", str(tmp_path / "r.pt")])
    assert res.exit_code != 0 and "--data" in res.output and not (tmp_path / "r.pt").exists()
    res = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "eyes.pt"), "--out", str(tmp_path / "r.pt"),
                                   "--data", str(data)])
    assert res.exit_code == 0, res.output
    r = TorchPredictor(tmp_path / "r.pt")
    assert r.meta["temperature"] != 123.0 and r.meta["recalibration"]["on"] == "val"
    assert r.meta["tta"] == "flip-average" and r.meta.get("split") == ck["meta"]["split"]
    new = torch.load(tmp_path / "r.pt", weights_only=True)
    assert all(torch.equal(new["state_dict"][k], v) for k, v in ck["state_dict"].items())
    res = CliRunner().invoke(app, ["evaluate", "eyes", "--model", str(tmp_path / "r.pt"), "--data", str(data),
                                   "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    measured = next(iter(json.loads((tmp_path / "m.json").read_text())["models"].values()))
    assert measured["n"] == r.meta["metrics"]["n"]
    assert measured["ece"] == pytest.approx(r.meta["metrics"]["ece"])


def test_export_flags_rebuild_the_variant_a_card_describes():
    from facelens.train.commands import export_flags

    assert export_flags({"tta": "flip-average", "precision": "fp32"}) == []
    assert export_flags({"tta": "none", "precision": "int8"}) == ["--no-tta", "--int8"]
    assert export_flags({"precision": "int8", "quantization": {"calibration": "percentile"}}) == [
        "--int8", "--int8-calibration percentile"]


def _peaked_logits(ages: np.ndarray) -> np.ndarray:
    """Age-bin logits whose distribution is a narrow bump at each age (its mean is that age, away from 0 and 100)."""
    bins = np.arange(101)
    return -((bins[None, :] - np.asarray(ages, dtype=float)[:, None]) ** 2) / (2 * 0.7**2)


def test_fit_answer_map_recovers_the_line_from_int8_to_float_answers():
    from facelens.train.export import fit_answer_map

    int8_ages = np.linspace(8, 80, 40)
    offset, slope = fit_answer_map(_peaked_logits(int8_ages), _peaked_logits(-0.5 + 1.02 * int8_ages))
    assert offset == pytest.approx(-0.5, abs=0.05) and slope == pytest.approx(1.02, abs=0.002)


def test_decode_age_applies_the_answer_map_to_the_age_and_its_interval_and_a_refit_keeps_it():
    from facelens.infer.postprocess import decode_age
    from facelens.models.meta import CALIBRATION_KEYS

    logits = _peaked_logits(np.array([5.0, 40.0, 99.5])) / 20  # wide enough for an interval of some years
    plain = decode_age(logits, {"head": "age-bins"})
    mapped = decode_age(logits, {"head": "age-bins", "age_answer_map": [1.0, 1.1]})
    for p, m in zip(plain, mapped, strict=True):
        np.testing.assert_allclose(m, np.clip(1.0 + 1.1 * p, 0, 100))
    assert mapped[0][2] == 100.0  # clipped to the head's range
    assert "age_answer_map" not in CALIBRATION_KEYS and "interval_scale" in CALIBRATION_KEYS
