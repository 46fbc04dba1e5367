"""Every registered architecture, for every task it offers: builds, runs, exports to ONNX with parity.

Why over the registry (``facelens.models.factory.ARCHS``) and not a hand-written list: a newly
registered architecture is covered the day it is added. The models are untrained and small
(``SIZE`` px crops instead of the task's default), so the whole file runs in seconds on 2 CPU
cores. Their BatchNorm statistics are re-estimated on random images first: a freshly initialised
deep network answers nearly the same for every input, which would let a broken export pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facelens.infer.predictor import OnnxPredictor, TorchPredictor
from facelens.models.factory import ARCHS, create_model, head_of, num_outputs
from facelens.train.export import export_onnx

SIZE = 32  # crop side for every model here: small and fast, and still valid for every architecture
TASKS = ("age", "eyes")
PAIRS = [(arch, task) for arch, spec in ARCHS.items() for task in TASKS if task in spec.heads]
MISSING = [(arch, task) for arch, spec in ARCHS.items() for task in TASKS if task not in spec.heads]
CALIBRATION = {"age": {"interval": 0.8, "interval_scale": 1.0}, "eyes": {"temperature": 1.0}}


def _input_sensitive(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics from random images and re-drawn dense layers, so outputs differ per input."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None  # cumulative average over the passes below
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):  # wider than the default init, so small feature differences show
                mod.weight.normal_(0, 2 / mod.in_features**0.5)
        model.train()
        for _ in range(2):
            model(torch.rand(8, 3, SIZE, SIZE) * 255)
    return model.eval()


def _checkpoint(path: Path, arch: str, task: str) -> Path:
    torch.manual_seed(0)  # the same weights on every run
    model = _input_sensitive(create_model(arch, task, pretrained=False))
    meta = {"name": f"test-{arch}-{task}", "task": task, "arch": arch, "head": head_of(arch, task),
            "input_size": SIZE, "tta": "flip-average"} | CALIBRATION[task]
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    return path


def test_every_registered_architecture_is_covered():
    assert {arch for arch, _ in PAIRS} == set(ARCHS)
    assert {task for _, task in PAIRS} == set(TASKS)


@pytest.mark.parametrize(("arch", "task"), PAIRS, ids=[f"{a}-{t}" for a, t in PAIRS])
def test_forward_shape_and_onnx_parity(tmp_path, arch, task):
    pt = _checkpoint(tmp_path / "model.pt", arch, task)
    torch_pred = TorchPredictor(pt)
    rng = np.random.default_rng(1)
    # noise at five brightness levels: plain noise averages out in a small net's global pooling
    crops = (rng.integers(0, 256, size=(5, SIZE, SIZE, 3)) * np.linspace(0.2, 1.0, 5)[:, None, None, None]).astype(np.uint8)
    want = torch_pred(crops)
    assert want.shape == (5, num_outputs(head_of(arch, task))) == (5, torch_pred.num_outputs)
    assert np.isfinite(want).all()
    assert np.ptp(want, axis=0).max() > 0.1, "untrained model must be input-sensitive, or parity proves nothing"

    res = export_onnx(pt, tmp_path / "model.onnx", parity_samples=4, log=lambda _: None)  # the shipped export path
    got = OnnxPredictor(tmp_path / "model.onnx", threads=1)(crops, batch_size=2)  # a batch size the export never saw
    assert got.shape == want.shape
    # 1e-4 of the output scale: float32 age logits reach ~10 here, where 1e-4 absolute is a few ulps of rounding
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    assert res["max_abs_diff"] <= 1e-4 * scale


@pytest.mark.parametrize(("arch", "task"), MISSING, ids=[f"{a}-{t}" for a, t in MISSING])
def test_tasks_an_architecture_lacks_are_refused(arch, task):
    with pytest.raises(ValueError, match=f"not available for task {task!r}"):
        create_model(arch, task, pretrained=False)
