"""The two student projects' networks, rebuilt in PyTorch as baselines on the same pipeline.

They exist to be *measured beside* facelens' models on the same split (``--arch seed-cnn``,
``--arch seed-xception``), not to be shipped.
"""

from __future__ import annotations

import torch
from torch import nn


class SeedCNN(nn.Module):
    """Age seed: two 3x3 convs (16, 32) with max-pooling, global average pooling, two dense
    layers of 64 and one linear output trained with MSE, at 120x120 (as in the Keras notebook)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _SeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False))


class SeedXception(nn.Module):
    """Eye seed: the Keras "image classification from scratch" Xception-like network
    (entry conv 128, residual separable blocks 256/512/728, separable 1024, GAP, dropout 0.5,
    one logit), as the second student project used it."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Sequential(nn.Conv2d(3, 128, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        blocks, residuals = [], []
        cin = 128
        for size in (256, 512, 728):
            blocks.append(nn.Sequential(
                nn.ReLU(), _SeparableConv(cin, size), nn.BatchNorm2d(size),
                nn.ReLU(), _SeparableConv(size, size), nn.BatchNorm2d(size),
                nn.MaxPool2d(3, stride=2, padding=1),
            ))
            residuals.append(nn.Conv2d(cin, size, 1, stride=2))
            cin = size
        self.blocks = nn.ModuleList(blocks)
        self.residuals = nn.ModuleList(residuals)
        self.exit = nn.Sequential(_SeparableConv(cin, 1024), nn.BatchNorm2d(1024), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        for block, res in zip(self.blocks, self.residuals, strict=True):
            x = block(x) + res(x)
        return self.exit(x)
