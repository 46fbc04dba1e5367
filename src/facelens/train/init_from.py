"""Start a training run from a trained facelens model (``facelens train --init-from MODEL.pt``).

Why: fine-tuning a trained network is how a smaller network for a faster CPU is made (``models.slim``: the
hidden channels that matter most are cut out of the trained network, then fine-tuned), and how a trained
model is taught more of the same task. Two rules keep it honest:

* the trained network must answer the same question about the same pixels (task, head, input size, crop);
* if it was trained on any of this run's data, on the same split: otherwise images it trained on could sit in
  this run's validation or test split and flatter them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from facelens.models.checkpoint import load_checkpoint
from facelens.models.factory import create_model

#: (trained arch, run arch) pairs whose weights can be carried over, and how (``init_weights``).
CARRIED_OVER = {("mobilenetv2", "mobilenetv2-slim"): "hidden channels cut out (models.slim)"}


def _refuse(path: Path, why: str) -> ValueError:
    return ValueError(f"--init-from {path}: {why}")


def check_compatible(path: Path, meta: dict[str, Any], *, task: str, arch: str, wanted: dict[str, Any],
                     data: list[str], split: dict[str, Any]) -> None:
    """Refuse, naming the file, a trained model this run cannot start from (see the module docstring)."""
    if meta.get("task") != task:
        raise _refuse(path, f"a {meta.get('task')!r} model, this run trains {task!r}")
    if meta.get("arch") != arch and (meta.get("arch"), arch) not in CARRIED_OVER:
        raise _refuse(path, f"its architecture {meta.get('arch')!r} cannot start a {arch!r} network "
                            f"(same architecture, or {', '.join(f'{a} -> {b}' for a, b in CARRIED_OVER)})")
    for key, value in wanted.items():
        if meta.get(key) != value:
            raise _refuse(path, f"its {key} is {meta.get(key)!r}, this run's is {value!r}")
    shared = sorted(set(map(_norm, meta.get("data") or [])) & set(map(_norm, data)))
    theirs = meta.get("split") or {}
    for key in ("strategy", "seed", "fractions"):
        if shared and theirs.get(key) != split.get(key):
            raise _refuse(path, f"it was trained on {shared[0]} with another split ({key} {theirs.get(key)!r}, this "
                                f"run's {split.get(key)!r}): images it learnt from could be in this run's validation "
                                "or test split")


def _norm(p: str) -> str:
    return str(Path(p).resolve())


def load_trained(path: str | Path, *, task: str, arch: str, wanted: dict[str, Any], data: list[str],
                 split: dict[str, Any]) -> tuple[dict[str, Any], nn.Module]:
    """(metadata, network) of a trained ``model.pt`` this run may start from; ValueError naming the file if not."""
    path = Path(path)
    ck = load_checkpoint(path)  # weights_only=True: a model file cannot run code
    meta = ck.get("meta")
    if not isinstance(meta, dict) or "state_dict" not in ck:
        raise _refuse(path, "not a facelens model.pt (no metadata and weights)")
    check_compatible(path, meta, task=task, arch=arch, wanted=wanted, data=data, split=split)
    net = create_model(meta["arch"], task, pretrained=False)
    net.load_state_dict(ck["state_dict"])
    return meta, net


def init_weights(model: nn.Module, arch: str, trained: nn.Module, trained_arch: str) -> None:
    """Put ``trained``'s weights into ``model`` (``arch``): as they are, or cut down (``CARRIED_OVER``)."""
    if trained_arch == arch:
        model.load_state_dict(trained.state_dict())
    elif (trained_arch, arch) in CARRIED_OVER:
        from facelens.models.slim import slim_state_dict

        model.load_state_dict(slim_state_dict(trained, model))
    else:
        raise ValueError(f"no way to start a {arch!r} network from a {trained_arch!r} one")


def init_record(path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What the new model's metadata says of the model it started from: the file, its SHA-256, arch and date."""
    return {"model": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "arch": meta.get("arch"), "created": meta.get("created")}
