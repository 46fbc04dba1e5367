"""Distillation of a model's flip-averaged answer into one pass (``facelens train age --distill-from``).

Why: the shipped age models answer the mean of two passes, the face and its mirror image (``FlipAverage``),
which is worth about 0.1 years of MAE and costs half the speed. A network trained to give, from the face
alone, the distribution its teacher gives from both, can drop the second pass. The student starts from the
teacher's weights and sees the training crops augmented (mirrored half of the time) while its target is
the teacher's answer on the clean crop, so it learns one answer for a face and its mirror image.

The teacher must have been trained on the same split: otherwise its answers on the student's training
images could carry what it learned from the student's validation and test images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from facelens.agebins import NUM_AGE_BINS
from facelens.models.checkpoint import load_checkpoint
from facelens.models.factory import create_model
from facelens.models.wrappers import FlipAverage


def load_teacher(path: str | Path, *, arch: str, input_size: int, crop: dict, split: dict) -> tuple[dict, torch.nn.Module]:
    """(metadata, network) of a trained age ``model.pt`` that can teach a run with these settings.

    Refused, naming the file: another task or head, architecture, input size or face crop (its answers would be
    for other pixels), or another split (see the module docstring).
    """
    path = Path(path)
    ck = load_checkpoint(path)  # weights_only=True: a model file cannot run code
    meta = ck.get("meta")
    if not isinstance(meta, dict) or "state_dict" not in ck:
        raise ValueError(f"--distill-from {path}: not a facelens model.pt (no metadata and weights)")
    wanted = {"task": "age", "head": "age-bins", "arch": arch, "input_size": input_size, "crop": crop}
    for key, value in wanted.items():
        if meta.get(key) != value:
            raise ValueError(f"--distill-from {path}: the teacher's {key} is {meta.get(key)!r}, this run's is {value!r}")
    theirs = meta.get("split") or {}
    for key in ("strategy", "seed", "fractions"):
        if theirs.get(key) != split.get(key):
            raise ValueError(f"--distill-from {path}: the teacher was trained on another split ({key} {theirs.get(key)!r}, "
                             f"this run's {split.get(key)!r}); its answers could carry this run's validation and test images")
    net = create_model(arch, "age", pretrained=False)
    net.load_state_dict(ck["state_dict"])
    return meta, net.eval()


@torch.no_grad()
def teacher_distributions(teacher: torch.nn.Module, crops: np.ndarray, device: torch.device,
                          batch_size: int = 128) -> np.ndarray:
    """The teacher's flip-averaged age distribution (softmax of the mean logits, as the shipped answer) per crop."""
    from facelens.train.loop import predict_outputs

    tta = FlipAverage(teacher).to(device, memory_format=torch.channels_last)  # the layout training runs in: faster on CPUs
    logits = predict_outputs(tta, crops, device, batch_size, desc="teacher answers")
    return torch.from_numpy(logits).softmax(1).numpy().astype(np.float32)


def distillation_targets(teacher: np.ndarray, soft_labels: np.ndarray, weight: float) -> np.ndarray:
    """Per image, ``weight`` x the teacher's distribution + (1 - ``weight``) x the soft label (both sum to 1).

    Cross-entropy is linear in its target, so this is the usual weighted sum of a distillation and a label loss.
    """
    if teacher.shape != soft_labels.shape or teacher.shape[1:] != (NUM_AGE_BINS,):
        raise ValueError(f"targets of shape {teacher.shape} and {soft_labels.shape}; both must be (N, {NUM_AGE_BINS})")
    return (weight * teacher + (1.0 - weight) * soft_labels).astype(np.float32)


def teacher_record(path: str | Path, meta: dict, weight: float) -> dict:
    """What a distilled model's metadata says of its teacher: which file (and its SHA-256), and how much it weighed."""
    return {"teacher": str(path), "teacher_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "teacher_created": meta.get("created"), "weight": weight}
