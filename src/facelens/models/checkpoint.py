"""Loading a checkpoint without running code from it (saving lives in ``facelens.train.checkpoint``).

A ``.pt`` file is a pickle, and ``torch.load(weights_only=False)`` runs whatever callables the
pickle names, so ``--age-model evil.pt`` could execute code before facelens even looked at the
contents. Every checkpoint facelens writes is a dict of tensors and plain values, so it loads
with ``weights_only=True`` (torch's restricted unpickler) plus the numpy scalar types older model
metadata contains; anything else is refused with a ``ModelLoadError`` naming the file.

Why in ``models/``: the predictor loads models and must not import training code to do it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelens.errors import ModelLoadError

#: Data-only numpy globals allowed in checkpoints: shipped age metadata holds numpy float and str scalars.
#: They rebuild a number or string from a dtype and raw bytes; none of them can call arbitrary code.
SAFE_NUMPY_GLOBALS: list[Any] = [np._core.multiarray.scalar, np.dtype] + [
    getattr(np.dtypes, name) for name in ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType",
                                          "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType",
                                          "Float32DType", "Float64DType", "StrDType", "BytesDType")
]


def _refusal(path: Path, exc: Exception) -> ModelLoadError:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    what = f" (it references {found.group(1)})" if found else ""
    return ModelLoadError(f"{path}: refused: not a facelens checkpoint of tensors and plain values{what}; "
                          "facelens never runs code from model files")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it; ModelLoadError names the file otherwise."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: file not found") from exc
    except Exception as exc:  # noqa: BLE001 - pickle, zip and runtime errors of many kinds
        if "weights only" in str(exc).lower() or "Unsupported global" in str(exc):
            raise _refusal(path, exc) from exc
        raise ModelLoadError(f"{path}: not a loadable PyTorch checkpoint ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(ck, dict):
        raise ModelLoadError(f"{path}: not a facelens checkpoint (holds a {type(ck).__name__}, not a dict)")
    return ck


def load_network(path: str | Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """(metadata as stored, network in eval mode) of a facelens ``.pt`` model, without its TTA wrapper.

    Loads weights only (``load_checkpoint``); a file whose metadata or weights do not build a facelens
    network (missing keys, wrong shapes, unknown architecture) is a ModelLoadError naming the file.
    """
    from facelens.models.factory import create_model
    from facelens.models.meta import ModelMeta

    ck = load_checkpoint(path)
    try:
        meta = ck["meta"]
        m = ModelMeta.from_dict(meta)
        net = create_model(m.arch, m.task, pretrained=False)
        net.load_state_dict(ck["state_dict"])
    except Exception as exc:  # noqa: BLE001 - missing keys, wrong shapes, unknown architectures, invalid metadata
        raise ModelLoadError(f"{path}: not a facelens PyTorch model ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]})") from exc
    return meta, net.eval()
