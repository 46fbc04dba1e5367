"""Model architectures behind one factory: ``create_model(arch, task, pretrained)``; ``wrappers`` (the
flip-average TTA, crops to tensors) and ``checkpoint`` (weights-only loading) shared by inference and training."""

from facelens.models.factory import ARCHS, create_model, default_input_size

__all__ = ["ARCHS", "create_model", "default_input_size"]
