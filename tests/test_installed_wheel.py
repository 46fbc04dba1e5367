"""The product works after ``pip install`` outside the repository: the wheel carries the default
models, and ``facelens demo`` finds them from any folder (issue #19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the build backend (setuptools) is already in the test venv; the network may not be.
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, cwd=out)
    return next(out.glob("facelens-*.whl"))


def test_the_wheel_carries_the_default_models_and_their_cards(wheel: Path) -> None:
    from facelens.tasks import TASKS

    names = set(zipfile.ZipFile(wheel).namelist())
    files = {f for spec in TASKS.values() for f in (spec.model_file, spec.crop_model_file) if f}
    assert {"age-mobilenetv2.onnx", "eyes-both-mobilenetv2.onnx", "eyes-mobilenetv2.onnx"} <= files
    for file in files:  # every default model (photos, and ready-cut crops), with its card
        assert f"facelens/shipped_models/{file}" in names
        assert f"facelens/shipped_models/{Path(file).with_suffix('.md')}" in names
    assert not any(n.endswith(".pt") for n in names)  # training checkpoints stay in the repository


def test_facelens_demo_runs_from_a_fresh_venv_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], check=True)
    # The dependencies (torch, onnxruntime, ...) come from this test's venv, appended after the new venv's own
    # site-packages, so the facelens imported is the wheel's copy and nothing from the checkout.
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FACELENS_MODELS")}
    where = subprocess.run([str(py), "-c", "import facelens, facelens.api as a; print(facelens.__file__); print(a.models_dir())"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.split()
    assert all(Path(w).resolve().is_relative_to(venv.resolve()) for w in where), where
    run = subprocess.run([str(venv / "bin" / "facelens"), "demo", "--json"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["faces"], result
    face = result["faces"][0]
    assert 15 < face["age"]["value"] < 80 and 0.0 <= face["sex"]["p_female"] <= 1.0
