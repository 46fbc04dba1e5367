"""Model architectures behind one factory: ``create_model(arch, task, pretrained)``."""

from facelens.models.factory import ARCHS, create_model, default_input_size

__all__ = ["ARCHS", "create_model", "default_input_size"]
