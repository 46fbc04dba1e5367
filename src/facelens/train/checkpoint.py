"""Atomic checkpoints: a killed run never leaves a half-written checkpoint behind (``facelens.fileio.atomic_path``).

Loading, which must never run code from the file, lives in ``facelens.models.checkpoint``: the
predictor loads models without importing training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facelens.fileio import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save``; ``path`` holds the old checkpoint until the new one is complete."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
