"""Batch augmentation on tensors, vectorised over the batch (no per-image Python loop).

On a 2-core CPU a per-sample PIL pipeline would cost as much as the training step itself;
these few tensor ops cost ~5% of it. Inputs and outputs are float NCHW in 0..255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5
    max_rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.06  # fraction of the side
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    grayscale: float = 0.1


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=x.device) * (hi - lo) + lo

    angle = u(-cfg.max_rotate_deg, cfg.max_rotate_deg) * math.pi / 180
    scale = u(*cfg.scale)
    flip = torch.where(torch.rand(n, generator=generator, device=x.device) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, u(-cfg.max_shift, cfg.max_shift) * 2], 1),
            torch.stack([sin * flip, cos, u(-cfg.max_shift, cfg.max_shift) * 2], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    sat = u(1 - cfg.saturation, 1 + cfg.saturation).view(n, 1, 1, 1)
    to_gray = (torch.rand(n, generator=generator, device=x.device) < cfg.grayscale).view(n, 1, 1, 1)
    sat = torch.where(to_gray, torch.zeros_like(sat), sat)
    x = gray + (x - gray) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    x = x * u(1 - cfg.brightness, 1 + cfg.brightness).view(n, 1, 1, 1)
    return x.clamp_(0, 255)
