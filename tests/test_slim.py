"""The half-width MobileNetV2 (``models.slim``) and how it is cut out of a full one."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.mobilenetv2 import InvertedResidual

from facelens.models.factory import create_model
from facelens.models.slim import channels_to_keep, hidden_channel_scores, slim_state_dict


def test_the_kept_channels_are_the_highest_scores_in_their_original_order() -> None:
    scores = torch.tensor([0.5, 3.0, 0.1, 2.0, 9.0, 0.2])
    assert channels_to_keep(scores, 3).tolist() == [1, 3, 4]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="cannot keep"):
            channels_to_keep(scores, bad)


def test_a_channel_scores_zero_when_its_scale_or_its_projection_is_zero() -> None:
    gamma = torch.tensor([1.0, -2.0, 0.0, 1.0])
    proj = torch.ones(5, 4, 1, 1)
    proj[:, 3] = 0
    scores = hidden_channel_scores(gamma, proj)
    assert scores.tolist() == pytest.approx([5**0.5, 2 * 5**0.5, 0.0, 0.0])


def _trained_like(task: str = "age") -> torch.nn.Module:
    """A full network whose BatchNorm statistics and scales are not the initial ones (so the choice matters)."""
    torch.manual_seed(0)
    full = create_model("mobilenetv2", task, pretrained=False)
    with torch.no_grad():
        for m in full.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    return full.eval()


def test_the_slim_network_answers_as_the_full_one_with_the_dropped_channels_silenced() -> None:
    """The cut is exact: zero the projection weights of every channel not kept, and the full network's answer
    (which then ignores them) must equal the slim network's, to float rounding."""
    full = _trained_like()
    slim = create_model("mobilenetv2-slim", "age", pretrained=False).eval()
    slim.load_state_dict(slim_state_dict(full, slim))
    with torch.no_grad():
        for name, block in full.named_modules():
            if isinstance(block, InvertedResidual) and len(block.conv) == 4:
                k = slim.get_submodule(name).conv[1][0].out_channels
                assert k * 2 == block.conv[1][0].out_channels
                keep = channels_to_keep(hidden_channel_scores(block.conv[1][1].weight, block.conv[2].weight), k)
                dropped = torch.ones(block.conv[2].weight.shape[1], dtype=torch.bool)
                dropped[keep] = False
                block.conv[2].weight[:, dropped] = 0
        x = torch.rand(3, 3, 128, 128) * 255
        assert torch.allclose(slim(x), full(x), atol=1e-4)
    # and the slim network is about half the size in its hidden layers
    n_full = sum(p.numel() for p in full.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    assert 0.55 < n_slim / n_full < 0.7


def test_networks_of_other_shapes_are_refused() -> None:
    full = create_model("mobilenetv2", "age", pretrained=False)
    with pytest.raises(RuntimeError, match="size mismatch"):  # an eye head (1 output) into an age head (101)
        create_model("mobilenetv2-slim", "eyes", pretrained=False).load_state_dict(
            slim_state_dict(full, create_model("mobilenetv2-slim", "eyes", pretrained=False)))
    with pytest.raises(ValueError, match="same inverted residual blocks"):
        slim_state_dict(full, create_model("seed-cnn", "age", pretrained=False))
