"""Batch augmentation on tensors, vectorised over the batch where it can be.

On a 2-core CPU a per-sample PIL pipeline would cost as much as the training step itself;
the whole-batch ops here cost a few percent of it, and the few per-image ones (blur, low
resolution, JPEG) run on a random fraction of the batch only. Inputs and outputs are float
NCHW in 0..255.

Two presets: ``AugmentConfig()`` (geometry and colour jitter) and ``PHOTO_AUGMENT``, which adds
what separates one photo *source* from another (scans, old prints, phone JPEGs, small faces,
frames that end next to the face), so a model cannot learn the source instead of the face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
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
    # The rest are probabilities per image (0 = off): source-style degradations.
    sepia: float = 0.0
    fade: float = 0.0  # washed-out old print: lifted blacks, warm tint, lower contrast
    blur: float = 0.0  # Gaussian, sigma 0.5-1.8 px at the crop's size
    low_res: float = 0.0  # down to 20-50% of the side and back up (a small face in a big photo)
    noise: float = 0.0  # Gaussian grain, sigma 2-10 grey levels
    jpeg: float = 0.0  # re-encoded at quality 20-80
    border: float = 0.0  # the frame ends 0-20% inside the crop on some sides, filled by edge replication
    # Probability that a crop is made to look cut from a tight chip: beyond ``chip_insets`` (left, top,
    # right, bottom, fractions of the side, +/-20%) edge pixels repeat, before the geometry jitter, as in
    # every crop of a UTKFace chip. Only templates wider than the chip need it (``face.align.chip_insets``);
    # the runner fills the insets from the run's template.
    chip_fill: float = 0.0
    chip_insets: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


#: The training default for face crops from mixed sources (``--augment photo``).
PHOTO_AUGMENT = AugmentConfig(scale=(0.85, 1.15), max_shift=0.08, grayscale=0.15, sepia=0.1, fade=0.15, blur=0.25,
                              low_res=0.2, noise=0.25, jpeg=0.3, border=0.15)
#: ``photo`` plus chip fill on half the crops, so that with a template wider than a UTKFace chip the fill
#: beyond the chip's edge is not a sign of the source (``--augment photo+chip``).
PHOTO_CHIP_AUGMENT = replace(PHOTO_AUGMENT, chip_fill=0.5)
AUGMENT_PRESETS = {"basic": AugmentConfig(), "photo": PHOTO_AUGMENT, "photo+chip": PHOTO_CHIP_AUGMENT}

_SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    n = x.shape[0]

    def u(lo: float, hi: float, k: int = n) -> torch.Tensor:
        return torch.rand(k, generator=generator, device=x.device) * (hi - lo) + lo

    def pick(p: float) -> torch.Tensor:
        """Indices of the images that get an augmentation of probability ``p``."""
        if p <= 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(torch.rand(n, generator=generator, device=x.device) < p).view(-1).cpu()

    if any(cfg.chip_insets):
        for i in pick(cfg.chip_fill):
            x[i] = _frame_ends(x[i], torch.tensor(cfg.chip_insets) * u(0.8, 1.2, 4).cpu(), torch.ones(4, dtype=torch.bool))
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
    for i in pick(cfg.border):
        x[i] = _frame_ends(x[i], u(0.0, 0.2, 4), torch.rand(4, generator=generator) < 0.5)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    sat = u(1 - cfg.saturation, 1 + cfg.saturation).view(n, 1, 1, 1)
    to_gray = (torch.rand(n, generator=generator, device=x.device) < cfg.grayscale).view(n, 1, 1, 1)
    sat = torch.where(to_gray, torch.zeros_like(sat), sat)
    x = gray + (x - gray) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    x = x * u(1 - cfg.brightness, 1 + cfg.brightness).view(n, 1, 1, 1)
    idx = pick(cfg.sepia)
    if len(idx):
        x[idx] = torch.einsum("cd,ndhw->nchw", _SEPIA.to(x.device), x[idx])
    idx = pick(cfg.fade)
    if len(idx):
        k = len(idx)
        keep = u(0.55, 0.85, k).view(k, 1, 1, 1)
        tone = torch.stack([u(215, 245, k), u(205, 235, k), u(175, 215, k)], 1).view(k, 3, 1, 1)
        x[idx] = x[idx] * keep + tone * (1 - keep)
    for i in pick(cfg.blur):
        x[i] = _gaussian_blur(x[i], float(u(0.5, 1.8, 1)))
    for i in pick(cfg.low_res):
        x[i] = _down_up(x[i], float(u(0.2, 0.5, 1)))
    idx = pick(cfg.noise)
    if len(idx):
        k = len(idx)
        sigma = u(2.0, 10.0, k).view(k, 1, 1, 1)
        x[idx] = x[idx] + sigma * torch.randn(x[idx].shape, generator=generator, device=x.device)
    x = x.clamp_(0, 255)
    for i in pick(cfg.jpeg):
        x[i] = _jpeg(x[i], int(u(20, 80, 1)))
    return x


def _frame_ends(img: torch.Tensor, insets: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """The photo's frame ends inside the crop (left, top, right, bottom insets as fractions of the
    side, on the ``active`` sides); beyond it, edge pixels repeat, as when a crop runs past a photo's
    border. On every source alike, so a tight chip's border fill says nothing about where it came from."""
    _, h, w = img.shape
    ins = (insets * active).tolist()
    left, top, right, bottom = int(ins[0] * w), int(ins[1] * h), int(ins[2] * w), int(ins[3] * h)
    ys = torch.arange(h, device=img.device).clamp(top, h - 1 - bottom)
    xs = torch.arange(w, device=img.device).clamp(left, w - 1 - right)
    return img[:, ys][:, :, xs]


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    y = F.conv2d(F.pad(img[None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def _down_up(img: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = img.shape[1:]
    small = F.interpolate(img[None], size=(max(8, int(h * factor)), max(8, int(w * factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    arr = np.ascontiguousarray(img.permute(1, 2, 0).round().byte().cpu().numpy()[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        return img
    back = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    return torch.from_numpy(back).to(img.device, img.dtype).permute(2, 0, 1)
