"""Which device a model runs on: one resolution rule for training and for both inference backends.

Why a module of its own: ``--device`` used to mean three different things. Training asked
torch, the PyTorch predictor passed the name on unchecked (``cuda`` without a GPU ended in a
40-line traceback), and the ONNX predictor ignored it (``--device cuda`` quietly ran on the
CPU and exited 0). Here every name is checked once, ``auto`` means the same everywhere (a GPU
when one is usable, else the CPU), and asking for a GPU that cannot be used is one clear error.

The ONNX backend needs the ``onnxruntime-gpu`` build for CUDA (``pip install 'facelens[gpu]'``
after ``pip uninstall onnxruntime``: the two builds provide the same module); the PyTorch
backend needs a CUDA build of torch. Neither is checked by importing torch for ONNX models,
so CPU inference stays light.
"""

from __future__ import annotations

import re

from facelens.errors import DeviceError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_INSTALL_HINT = ("pip uninstall -y onnxruntime && pip install 'facelens[gpu]' (onnxruntime-gpu), "
                    "or use --device cpu")


def check_device_name(name: str) -> str:
    """Return ``name`` normalised (``cuda`` -> ``cuda:0``) or raise DeviceError naming the choices.

    Why before anything loads: a typo such as ``--device gpu`` must not be accepted silently
    (it used to be) nor fail deep inside a library.
    """
    m = _DEVICE_RE.match(str(name).strip().lower())
    if not m:
        raise DeviceError(f"--device must be {DEVICE_CHOICES}, got {name!r}")
    dev = m.group(1)
    return "cuda:0" if dev == "cuda" else dev


def _cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1])


def _torch_cuda_count() -> int:
    """Number of CUDA devices torch can use (0 without a GPU or with a CPU-only torch build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def onnx_cuda_built() -> bool:
    """True when the installed ONNX Runtime has the CUDA provider (the ``onnxruntime-gpu`` build)."""
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def resolve_device(name: str, backend: str = "torch") -> str:
    """``cpu`` or ``cuda:N`` for ``backend`` ('torch' or 'onnx'); DeviceError when the GPU asked for is not usable.

    ``auto``: torch takes ``cuda:0`` when torch sees a GPU; ONNX takes ``cuda:0`` when the
    ``onnxruntime-gpu`` build is installed (``onnx_providers`` then falls back to the CPU if the
    session cannot use the GPU). An explicit ``cuda`` never falls back: it is refused here, or
    after the session is built (``check_session_device``).
    """
    dev = check_device_name(name)
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be torch or onnx, got {backend!r}")
    if backend == "onnx":
        if dev == "auto":
            return "cuda:0" if onnx_cuda_built() else "cpu"
        if dev.startswith("cuda") and not onnx_cuda_built():
            raise DeviceError(f"--device {name}: this ONNX Runtime has no CUDA provider; {GPU_INSTALL_HINT}")
        return dev
    count = _torch_cuda_count() if dev != "cpu" else 0
    if dev == "auto":
        return "cuda:0" if count else "cpu"
    if dev.startswith("cuda"):
        if count == 0:
            raise DeviceError(f"--device {name}: no CUDA GPU is usable by PyTorch on this machine; use --device cpu")
        if _cuda_index(dev) >= count:
            raise DeviceError(f"--device {name}: only {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    return dev


def onnx_providers(device: str) -> list:
    """ONNX Runtime providers for a resolved device: the CPU alone, or CUDA first with the CPU for unsupported ops."""
    if device == "cpu":
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": _cuda_index(device)}), CPU_PROVIDER]


def check_session_device(session_providers: list[str], asked: str, resolved: str, path: str) -> str:
    """The device an ONNX session really uses; DeviceError if ``cuda`` was asked for explicitly and not obtained.

    Why: ONNX Runtime falls back to the CPU with only a log warning when the CUDA provider
    cannot start (no GPU, missing CUDA/cuDNN libraries), which would run ``--device cuda``
    on the CPU unannounced. ``auto`` accepts the fallback.
    """
    if resolved == "cpu" or (session_providers and session_providers[0] == CUDA_PROVIDER):
        return resolved
    if check_device_name(asked) == "auto":
        return "cpu"
    raise DeviceError(f"{path}: --device {asked}: ONNX Runtime could not start its CUDA provider (no usable GPU, or "
                      "CUDA/cuDNN libraries missing); use --device cpu")
