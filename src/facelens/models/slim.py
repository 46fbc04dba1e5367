"""A MobileNetV2 with half the hidden channels per block, and how to cut one out of a full MobileNetV2.

Why: on AVX2-only CPUs (no VNNI) the age model with its flip TTA is limited by the network itself (two
passes per face, docs/experiments.md). In a MobileNetV2 most of the compute is in the inverted residual
blocks' hidden layers (1x1 expansion to 6x the block's width, 3x3 depthwise, 1x1 projection), so an
expansion ratio of 3 halves those layers while the block outputs, the stem and the head keep their
width. The slim network is not trained from nothing: its weights are cut out of a trained full network
(ImageNet's, or a trained facelens model via ``train --init-from``), keeping per block the hidden
channels that matter most, then fine-tuned.

Pure functions for the channel choice; ``slim_state_dict`` copies tensors and never touches files.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

#: torchvision's MobileNetV2 stages (expansion t, channels c, repeats n, stride s) with t = 6 halved to 3.
SLIM_EXPANSION = 3
SLIM_SETTING = [[1, 16, 1, 1], [SLIM_EXPANSION, 24, 2, 2], [SLIM_EXPANSION, 32, 3, 2], [SLIM_EXPANSION, 64, 4, 2],
                [SLIM_EXPANSION, 96, 3, 1], [SLIM_EXPANSION, 160, 3, 2], [SLIM_EXPANSION, 320, 1, 1]]
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def hidden_channel_scores(dw_gamma: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor:
    """How much each hidden channel of a block can pass on: |depthwise BN scale| x L2 norm of its projection weights.

    Why this product: a channel reaches the block output only through its depthwise BatchNorm (gamma scales
    it; a near-zero gamma leaves only a constant the projection's BatchNorm absorbs poorly) and through its
    column of the 1x1 projection. Either being small makes the channel cheap to drop.
    """
    return dw_gamma.detach().abs() * proj_weight.detach().flatten(1).norm(dim=0)


def channels_to_keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in their original order (so kept channels keep their relative layout)."""
    if not 0 < k <= scores.numel():
        raise ValueError(f"cannot keep {k} of {scores.numel()} channels")
    return torch.topk(scores, k).indices.sort().values


def _expanding_blocks(model: nn.Module) -> dict[str, InvertedResidual]:
    """Inverted residual blocks with an expansion layer (conv = expand, depthwise, projection conv, projection BN)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, InvertedResidual) and len(m.conv) == 4}


def slim_state_dict(full: nn.Module, slim: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for ``slim`` cut out of ``full`` (same module layout, fewer hidden channels per block).

    Per expanding block the hidden channels with the highest ``hidden_channel_scores`` are kept: their rows
    of the expansion conv and its BatchNorm, the depthwise conv and its BatchNorm, and their columns of the
    projection conv. Every other tensor is copied as it is, so a shape mismatch there is an error.
    """
    state = {k: v.detach().clone() for k, v in full.state_dict().items()}
    slim_blocks = _expanding_blocks(slim)
    full_blocks = _expanding_blocks(full)
    if slim_blocks.keys() != full_blocks.keys():
        raise ValueError("the two networks do not have the same inverted residual blocks")
    for name, block in full_blocks.items():
        k = slim_blocks[name].conv[1][0].out_channels
        keep = channels_to_keep(hidden_channel_scores(block.conv[1][1].weight, block.conv[2].weight), k)
        p = f"{name}.conv."
        for layer in ("0", "1"):  # expansion and depthwise: conv rows and BatchNorm entries
            state[f"{p}{layer}.0.weight"] = state[f"{p}{layer}.0.weight"][keep].clone()
            for t in _BN_TENSORS:
                state[f"{p}{layer}.1.{t}"] = state[f"{p}{layer}.1.{t}"][keep].clone()
        state[f"{p}2.weight"] = state[f"{p}2.weight"][:, keep].clone()
    return state


def slim_mobilenet_v2(full: nn.Module | None = None) -> nn.Module:
    """A torchvision MobileNetV2 of expansion ratio 3; with ``full`` (a torchvision MobileNetV2), cut out of it."""
    import torchvision

    slim = torchvision.models.mobilenet_v2(inverted_residual_setting=SLIM_SETTING)
    if full is not None:
        slim.load_state_dict(slim_state_dict(full, slim))
    return slim
