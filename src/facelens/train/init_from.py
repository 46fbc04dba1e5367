"""Start a training run from a trained facelens model (``facelens train --init-from MODEL.pt``).

Why: fine-tuning a trained network (the shipped age model, say, on one's own photos) needs far fewer steps
than learning from ImageNet weights. Two rules keep it honest:

* the trained network must be of the run's architecture and answer the same question about the same pixels
  (task, head, input size, crop);
* it must have been split as this run is (content-addressed, same seed and fractions; or, for other splits, when
  it was trained on any of this run's folders): otherwise photos it trained on, or copies of them, could sit in
  this run's validation or test split and flatter them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from facelens.models.checkpoint import load_checkpoint


def _refuse(path: Path, why: str) -> ValueError:
    return ValueError(f"--init-from {path}: {why}")


def check_compatible(path: Path, meta: dict[str, Any], *, task: str, arch: str, wanted: dict[str, Any],
                     data: list[str], split: dict[str, Any]) -> None:
    """Refuse, naming the file, a trained model this run cannot start from (see the module docstring)."""
    if meta.get("task") != task:
        raise _refuse(path, f"a {meta.get('task')!r} model, this run trains {task!r}")
    for key, value in ({"arch": arch} | wanted).items():
        if meta.get(key) != value:
            raise _refuse(path, f"its {key} is {meta.get(key)!r}, this run's is {value!r}")
    theirs = meta.get("split") or {}
    # A content-addressed split puts a photo on the same side under any path, so copies of the model's training
    # photos in other folders are kept out of validation and test only if this run splits the same way.
    shared = sorted(set(map(_resolved, meta.get("data") or [])) & set(map(_resolved, data)))
    if theirs.get("strategy") == "content" or shared:
        for key in ("strategy", "seed", "fractions"):
            if theirs.get(key) != split.get(key):
                raise _refuse(path, f"it was trained on another split ({key} {theirs.get(key)!r}, this run's "
                                    f"{split.get(key)!r}): photos it learnt from, or copies of them, could be in this "
                                    "run's validation or test split (split as it was: --split content --split-seed "
                                    f"{theirs.get('seed')})")


def _resolved(p: str) -> str:
    return str(Path(p).resolve())


def load_trained(path: str | Path, *, task: str, arch: str, wanted: dict[str, Any], data: list[str],
                 split: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, weights) of a trained ``model.pt`` this run may start from; ValueError naming the file if not."""
    path = Path(path)
    ck = load_checkpoint(path)  # weights_only=True: a model file cannot run code
    meta = ck.get("meta")
    if not isinstance(meta, dict) or "state_dict" not in ck:
        raise _refuse(path, "not a facelens model.pt (no metadata and weights)")
    check_compatible(path, meta, task=task, arch=arch, wanted=wanted, data=data, split=split)
    return meta, ck["state_dict"]


def init_record(path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What the new model's metadata says of the model it started from: the file, its SHA-256 and date."""
    return {"model": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "created": meta.get("created")}
