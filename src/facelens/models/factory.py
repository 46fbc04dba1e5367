"""One factory for every architecture (as in timm): ``create_model(arch, task, pretrained)``.

Every model takes float32 NCHW RGB in 0..255 and normalises inside, so exported ONNX files,
the PyTorch path and the seed baselines all accept the same input and no caller can forget
the ImageNet statistics. Outputs depend on the task's *head*:
- ``age-bins``: logits over ages 0..100 (softmax -> expected age and quantile interval);
- ``regression``: one number (the seed's MSE head);
- ``binary``: one logit, positive = female.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from facelens.agebins import head_width
from facelens.models.seed import SeedCNN, SeedXception

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """0..255 RGB -> ImageNet-normalised (or plain 0..1 when ``imagenet`` is False)."""

    def __init__(self, imagenet: bool = True) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN if imagenet else (0.0, 0.0, 0.0)).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD if imagenet else (1.0, 1.0, 1.0)).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class ArchSpec:
    build: Callable[[int, bool], nn.Module]  # (num_outputs, pretrained) -> body producing outputs
    input_size: dict[str, int]  # default input size per task
    heads: dict[str, str]  # head per task
    imagenet_norm: bool = True
    pretrained: bool = True  # ImageNet weights exist (the seed baselines always start from scratch)


def _mobilenet_v2(num_outputs: int, pretrained: bool) -> nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2()
    if pretrained:
        from facelens.models.pretrained import mobilenet_v2_weights_path

        model.load_state_dict(torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True))
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(model.last_channel, num_outputs))
    return model


ARCHS: dict[str, ArchSpec] = {
    "mobilenetv2": ArchSpec(_mobilenet_v2, {"age": 128, "eyes": 64}, {"age": "age-bins", "eyes": "binary"}),
    "seed-cnn": ArchSpec(lambda n, p: SeedCNN(), {"age": 120}, {"age": "regression"}, imagenet_norm=False,
                         pretrained=False),
    "seed-xception": ArchSpec(lambda n, p: SeedXception(), {"eyes": 64}, {"eyes": "binary"}, imagenet_norm=False,
                              pretrained=False),
}


def head_of(arch: str, task: str) -> str:
    spec = _spec(arch, task)
    return spec.heads[task]


def default_input_size(arch: str, task: str) -> int:
    return _spec(arch, task).input_size[task]


def _spec(arch: str, task: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    if task not in spec.heads:
        raise ValueError(f"architecture {arch!r} is not available for task {task!r} (tasks: {', '.join(spec.heads)})")
    return spec


def num_outputs(head: str) -> int:
    return head_width(head)


def check_frozen_blocks(arch: str, task: str, n: int, pretrained: bool) -> None:
    """Refuse ``--frozen-blocks`` where it makes no sense, before any data is read (the block
    count is taken from an untrained skeleton: cheap, no weights read)."""
    spec = _frozen_option_spec(arch, task, n, pretrained)
    if n:
        _blocks_to_freeze(spec.build(1, False), n, f"{arch} ")


def _frozen_option_spec(arch: str, task: str, n: int, pretrained: bool) -> ArchSpec:
    """The arch's spec, once ``n`` is known to be a count its weights allow freezing."""
    spec = _spec(arch, task)
    if n < 0:
        raise ValueError(f"--frozen-blocks must be >= 0, got {n}")
    if n and not (pretrained and spec.pretrained):
        raise ValueError(f"--frozen-blocks {n} needs pretrained weights, which {arch!r} "
                         f"{'has but --no-pretrained turned off' if spec.pretrained else 'does not have'}: "
                         "freezing randomly initialised blocks would only cripple the network")
    return spec


def _blocks_to_freeze(model: nn.Module, n: int, name: str = "") -> nn.Sequential:
    """The first ``n`` blocks of the backbone's ``features``; at least one block must stay trainable."""
    features = next((m for key, m in model.named_modules() if key.rsplit(".", 1)[-1] == "features"), None)
    if not isinstance(features, nn.Sequential):
        raise ValueError("--frozen-blocks needs a backbone with staged 'features' blocks (e.g. mobilenetv2)")
    if n >= len(features):
        raise ValueError(f"--frozen-blocks {n} would freeze the whole {name}backbone ({len(features)} blocks); "
                         "use fewer")
    return features[:n]


def freeze_early_blocks(model: nn.Module, n: int) -> int:
    """Keep the first ``n`` blocks of the backbone's ``features`` at their pretrained weights.

    Why: on a CPU most of a MobileNetV2 training step is the backward pass through the first,
    high-resolution blocks (measured: 1.13 s -> 0.66 s per batch of 64 at 128 px with 4 frozen),
    and those blocks compute generic edges and textures that ImageNet already taught them.
    BatchNorm statistics there still follow the new data. Returns the number of frozen parameters.
    """
    if n < 0:
        raise ValueError(f"--frozen-blocks must be >= 0, got {n}")
    if n == 0:
        return 0
    params = list(_blocks_to_freeze(model, n).parameters())
    for p in params:
        p.requires_grad_(False)
    return sum(p.numel() for p in params)


def create_model(arch: str, task: str, pretrained: bool = True, frozen_blocks: int = 0) -> nn.Module:
    """Build ``arch`` for ``task`` ('age' or 'eyes'), with ImageNet weights where the arch has them,
    its first ``frozen_blocks`` backbone blocks kept at those weights."""
    spec = _frozen_option_spec(arch, task, frozen_blocks, pretrained)  # the block count is checked on the model
    model = nn.Sequential(Normalize(spec.imagenet_norm), spec.build(num_outputs(spec.heads[task]), pretrained))
    freeze_early_blocks(model, frozen_blocks)
    return model
