"""Model architectures behind one factory: ``create_model(arch, task, pretrained)``; ``wrappers`` (the
flip-average TTA, crops to tensors), ``checkpoint`` (weights-only loading) and ``meta`` (the typed model
metadata) shared by inference and training.

The factory's names are loaded on first use (PEP 562), not on import: ``facelens.models.meta`` is read by
the ONNX-only prediction path, which must not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARCHS", "create_model", "default_input_size"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from facelens.models import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'facelens.models' has no attribute {name!r}")
