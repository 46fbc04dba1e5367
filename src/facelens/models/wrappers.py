"""What every caller of a network shares: the uint8-crops-to-tensor step and the flip-average TTA.

Why here, below inference and training: the predictor, the ONNX export and the training loop all
feed crops to a model the same way, and a served model must see exactly what it was validated on.
Kept out of ``train.loop`` so loading a model for prediction does not import the training loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FlipAverage(nn.Module):
    """Test-time augmentation baked into the model: mean of the outputs for x and mirrored x.

    Wrapping (rather than doing it in the caller) keeps PyTorch, ONNX and evaluation identical.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = self.model(torch.cat([x, torch.flip(x, dims=[3])], 0))
        return (out[:n] + out[n:]) / 2


def to_input(batch_u8: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> float NCHW 0..255 in channels-last memory (faster convs on CPU)."""
    t = torch.as_tensor(batch_u8).to(device)
    return t.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
