"""--device: one resolution rule for training and both inference backends; a GPU that cannot be used is refused.

This machine has no GPU, so the GPU paths are reached by faking what torch / ONNX Runtime report;
the refusals are also checked end to end through the command line (one line, no traceback).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelens import devices
from facelens.errors import DeviceError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU0", "", "mps"])
def test_unknown_device_names_are_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="--device must be auto, cpu, cuda or cuda:N"):
        devices.check_device_name(name)


@pytest.mark.parametrize(("name", "want"), [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1"), ("AUTO", "auto")])
def test_device_names_are_normalised(name: str, want: str) -> None:
    assert devices.check_device_name(name) == want


def _fake(monkeypatch, gpus: int, ort_cuda: bool) -> None:
    monkeypatch.setattr(devices, "_torch_cuda_count", lambda: gpus)
    monkeypatch.setattr(devices, "onnx_cuda_built", lambda: ort_cuda)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_auto_is_the_cpu_without_a_gpu_for_every_backend(monkeypatch, backend: str) -> None:
    _fake(monkeypatch, gpus=0, ort_cuda=False)
    assert devices.resolve_device("auto", backend) == "cpu"
    assert devices.resolve_device("cpu", backend) == "cpu"


def test_auto_takes_the_gpu_when_usable(monkeypatch) -> None:
    _fake(monkeypatch, gpus=2, ort_cuda=True)
    assert devices.resolve_device("auto", "torch") == "cuda:0"
    assert devices.resolve_device("auto", "onnx") == "cuda:0"
    assert devices.resolve_device("cuda:1", "torch") == "cuda:1"
    with pytest.raises(DeviceError, match="only 2 CUDA GPU"):
        devices.resolve_device("cuda:2", "torch")


def test_cuda_without_gpu_or_gpu_build_is_refused(monkeypatch) -> None:
    _fake(monkeypatch, gpus=0, ort_cuda=False)
    with pytest.raises(DeviceError, match="no CUDA GPU is usable by PyTorch"):
        devices.resolve_device("cuda", "torch")
    with pytest.raises(DeviceError, match="no CUDA provider.*facelens\\[gpu\\]"):
        devices.resolve_device("cuda", "onnx")


def test_onnx_providers_put_cuda_first_with_its_index() -> None:
    assert devices.onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert devices.onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def test_a_silent_onnx_fallback_to_the_cpu_is_refused_unless_auto() -> None:
    cpu_only = ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="could not start its CUDA provider"):
        devices.check_session_device(cpu_only, "cuda", "cuda:0", "m.onnx")
    assert devices.check_session_device(cpu_only, "auto", "cuda:0", "m.onnx") == "cpu"
    assert devices.check_session_device(["CUDAExecutionProvider", *cpu_only], "cuda", "cuda:0", "m.onnx") == "cuda:0"


def test_training_resolves_devices_by_the_same_rule(monkeypatch) -> None:
    from facelens.train.config import TrainRequest
    from facelens.train.runner import resolve_device

    _fake(monkeypatch, gpus=0, ort_cuda=False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="got 'gpu'"):
        TrainRequest(task="age", data=["x"], out="y", device="gpu").check()


def test_predictors_refuse_an_unusable_gpu(monkeypatch) -> None:
    from facelens.api import default_model_path
    from facelens.infer.predictor import load_predictor

    model = default_model_path("eyes")
    if not model.is_file():
        pytest.skip("no shipped eye model")
    _fake(monkeypatch, gpus=0, ort_cuda=False)
    with pytest.raises(DeviceError, match="got 'gpu'"):
        load_predictor(model, device="gpu")
    with pytest.raises(DeviceError, match="no CUDA provider"):
        load_predictor(model, device="cuda")
    assert load_predictor(model, device="auto").device == "cpu"


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["--device", "cuda"], "--device cuda: "),
    (["--device", "cuda", "--backend", "torch"], "--device cuda: no CUDA GPU is usable by PyTorch"),
])
def test_cli_refuses_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    if devices._torch_cuda_count():
        pytest.skip("this machine has a GPU: the refusals do not apply")
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photo)
    res = subprocess.run([sys.executable, "-m", "facelens.cli", "predict", str(photo), *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_onnx_auto_falls_back_to_the_cpu_when_the_gpu_session_fails(monkeypatch) -> None:
    """onnxruntime-gpu installed but no usable GPU: auto runs on the CPU, an explicit cuda is refused."""
    import onnxruntime as ort

    from facelens.api import default_model_path
    from facelens.infer import predictor

    model = default_model_path("eyes")
    if not model.is_file():
        pytest.skip("no shipped eye model")
    real = ort.InferenceSession

    def session(path, opts, providers):
        if any(isinstance(p, tuple) and p[0] == "CUDAExecutionProvider" for p in providers):
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(path, opts, providers=providers)

    _fake(monkeypatch, gpus=0, ort_cuda=True)
    monkeypatch.setattr(ort, "InferenceSession", session)
    assert predictor.OnnxPredictor(model, device="auto").device == "cpu"
    with pytest.raises(DeviceError, match="could not use the GPU.*no CUDA-capable device"):
        predictor.OnnxPredictor(model, device="cuda")


# -- every CLI path, in process (typer's CliRunner): auto works for both backends, a bad name is one clear line


@pytest.fixture(scope="module")
def demo_photo(tmp_path_factory) -> Path:
    """The bundled public-domain demo photo (scikit-image's astronaut, as ``facelens demo`` uses), as a file."""
    from skimage import data as skdata

    path = tmp_path_factory.mktemp("demo") / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(path)
    return path


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from facelens.cli import app

    return CliRunner().invoke(app, args)


def _shipped_models_or_skip(backend: str) -> None:
    from facelens.api import default_model_path

    for task in ("age", "eyes"):
        path = default_model_path(task)
        if not path.is_file() or (backend == "torch" and not path.with_suffix(".pt").is_file()):
            pytest.skip(f"no shipped {task} model for --backend {backend}")


@pytest.mark.parametrize("backend", [[], ["--backend", "onnx"], ["--backend", "torch"]], ids=["auto", "onnx", "torch"])
def test_predict_with_device_auto_runs_on_every_backend(demo_photo: Path, backend: list[str]) -> None:
    _shipped_models_or_skip("torch" if "torch" in backend else "onnx")
    res = _cli(["predict", str(demo_photo), "--json", "--device", "auto", *backend])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert record["error"] is None and len(record["faces"]) == 1
    assert record["faces"][0]["age"] is not None and record["faces"][0]["sex"] is not None


@pytest.mark.parametrize("command", [["predict", "PHOTO"], ["predict-eyes", "PHOTO"], ["serve"],
                                     ["evaluate", "age", "--data", "PHOTO"], ["evaluate", "eyes", "--data", "PHOTO"]])
@pytest.mark.parametrize("backend", [[], ["--backend", "torch"]], ids=["auto", "torch"])
def test_an_unknown_device_is_one_clear_error_everywhere(demo_photo: Path, command: list[str], backend: list[str]) -> None:
    args = [str(demo_photo) if a == "PHOTO" else a for a in command]
    res = _cli([*args, "--device", "gpu", *backend])
    assert res.exit_code == 2
    assert isinstance(res.exception, SystemExit), res.exception  # refused, not crashed
    assert "error: --device must be auto, cpu, cuda or cuda:N, got 'gpu'" in res.stderr
    assert "Traceback" not in res.output and res.stdout == ""


def test_evaluate_runs_with_device_auto(demo_photo: Path, tmp_path: Path) -> None:
    """``evaluate`` takes ``--device`` like ``predict`` (a one-photo folder-per-age set, scored whole)."""
    _shipped_models_or_skip("onnx")
    (tmp_path / "40").mkdir()
    Image.open(demo_photo).save(tmp_path / "40" / "astronaut.png")
    out = tmp_path / "metrics.json"
    res = _cli(["evaluate", "age", "--data", str(tmp_path), "--split", "all", "--device", "auto", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert next(iter(json.loads(out.read_text())["models"].values()))["n_scored"] == 1


def test_serve_resolves_the_device_before_the_server_starts(monkeypatch) -> None:
    import facelens.serve.app as serve_app

    started: list[dict] = []
    monkeypatch.setattr(serve_app, "run_server", lambda **kwargs: started.append(kwargs))
    _fake(monkeypatch, gpus=0, ort_cuda=False)
    for backend, needs in (("torch", "no CUDA GPU is usable by PyTorch"), ("onnx", "no CUDA provider"),
                           ("auto", "no CUDA provider")):
        res = _cli(["serve", "--device", "cuda", "--backend", backend])
        assert res.exit_code == 2 and needs in res.stderr and "Traceback" not in res.output
    res = _cli(["serve", "--backend", "fast"])
    assert res.exit_code == 2 and "--backend must be auto, onnx or torch" in res.stderr
    assert started == []
    for backend in ("auto", "onnx", "torch"):
        res = _cli(["serve", "--device", "auto", "--backend", backend])
        assert res.exit_code == 0, res.output
        assert (started[-1]["backend"], started[-1]["device"]) == (backend, "auto")


def test_the_service_loads_its_models_on_the_device_asked_for() -> None:
    from fastapi.testclient import TestClient

    from facelens.serve.app import create_app

    _shipped_models_or_skip("torch")
    with TestClient(create_app(backend="torch", device="auto")) as client:
        models = client.get("/v1/models").json()["models"]
    assert {(m["task"], m["backend"], m["device"]) for m in models} == {("age", "torch", "cpu"), ("eyes", "torch", "cpu")}
