"""Model files cannot run code: .pt files load with torch's weights-only unpickler (issue #20)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facelens.api import models_dir
from facelens.cli import app
from facelens.errors import ModelLoadError
from facelens.infer.predictor import load_predictor
from facelens.models.checkpoint import load_checkpoint
from facelens.train.checkpoint import save_checkpoint


class _WritesMarker:
    """Unpickling this runs ``exec``: with weights_only=False it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"meta": {"task": "age", "payload": _WritesMarker(marker)}, "state_dict": {}}, path)
    return path


def test_malicious_model_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(ModelLoadError) as info:
        load_predictor(evil)
    assert not marker.exists(), "code from the model file ran"
    msg = str(info.value)
    assert "evil.pt" in msg and "refused" in msg and "exec" in msg
    with pytest.raises(ModelLoadError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_cli_refuses_malicious_age_model(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"")
    res = CliRunner().invoke(app, ["predict", str(photo), "--age-model", str(evil), "--no-eyes"])
    assert res.exit_code == 2, res.output
    assert not marker.exists()
    assert "evil.pt" in res.output and "Traceback" not in res.output


def test_garbage_and_non_dict_files_are_model_load_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a zip or pickle" * 10)
    with pytest.raises(ModelLoadError, match="junk.pt"):
        load_checkpoint(junk)
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(ModelLoadError, match="list.pt.*not a dict"):
        load_checkpoint(listed)


def test_training_checkpoint_round_trip(tmp_path):
    """What the training loop saves (tensors, optimizer and scheduler state, plain values) loads back."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    state = {"epoch": 1, "best": float("inf"), "history": [{"epoch": 1, "val": 3.5}], "stopped": False}
    save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                          "scheduler": sched.state_dict(), "state": state,
                                          "config": {"augment": {"flip": True}, "fractions": (0.8, 0.1, 0.1)}})
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["state"] == state and ck["config"]["fractions"] == (0.8, 0.1, 0.1)
    assert torch.equal(ck["model"]["weight"], model.state_dict()["weight"])


@pytest.mark.parametrize("name", ["age-mobilenetv2.pt", "eyes-mobilenetv2.pt", "baselines/age-seed-cnn.pt"])
def test_shipped_pytorch_models_still_load(name):
    path = models_dir() / name
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    pred = load_predictor(path, backend="torch")
    assert pred.meta["task"] in ("age", "eyes")


def test_a_checkpoint_whose_weights_do_not_fit_its_architecture_is_refused_naming_it(tmp_path):
    """load_network (the predictor's and the benchmarks' loader) builds the network the metadata names, in eval mode,
    and refuses weights of another shape with a ModelLoadError naming the file, not a torch traceback."""
    from facelens.models.checkpoint import load_network

    shipped = load_checkpoint(models_dir() / "age-mobilenetv2.pt")
    meta, net = load_network(models_dir() / "age-mobilenetv2.pt")
    assert meta == shipped["meta"] and not net.training
    bad = dict(shipped["state_dict"])
    key = next(k for k, v in bad.items() if v.ndim == 2)  # the head's weight matrix
    bad[key] = bad[key][:-1]
    torch.save({"meta": shipped["meta"], "state_dict": bad}, tmp_path / "cut.pt")
    with pytest.raises(ModelLoadError, match=r"cut\.pt: not a facelens PyTorch model \(RuntimeError: .*size mismatch"):
        load_network(tmp_path / "cut.pt")
