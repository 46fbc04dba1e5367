"""Load a trained model (PyTorch ``.pt`` or ``.onnx``) and run it on uint8 crops in batches.

Both backends return the same raw outputs (the flip-average TTA, when the model's metadata
asks for it, is inside the exported graph and added around the PyTorch model), and both carry the model's metadata (task, head, input
size, calibration), so decoding is shared (``facelens.infer.postprocess``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from facelens.devices import check_device_name, check_session_device, onnx_providers, resolve_device
from facelens.errors import DeviceError, ModelLoadError
from facelens.models.meta import ModelMeta

META_KEY = "facelens_meta"


class Predictor:
    """Raw outputs for (N, S, S, 3) uint8 crops.

    ``meta`` is the model's metadata dict exactly as its file stores it (callers that write it back,
    such as export and the model cards, need every key); ``model_meta`` is the same, typed and with
    the defaults of missing keys (``facelens.models.meta.ModelMeta``): read fields from there.
    """

    meta: dict
    backend: str
    device: str = "cpu"  # resolved: "cpu" or "cuda:N" (facelens.devices)

    def __call__(self, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.num_outputs), np.float32)
        size = self.model_meta.input_size
        if crops.shape[1:] != (size, size, 3):
            raise ValueError(f"{self.model_meta.name} expects {size}x{size}x3 crops, got {crops.shape[1:]}")
        return np.concatenate([self._run(crops[s : s + batch_size]) for s in range(0, len(crops), batch_size)])

    @property
    def model_meta(self) -> ModelMeta:
        """``meta`` typed; parsed once per ``meta`` object (a predictor given a new dict parses that, but a
        change made inside the same dict is not seen: copy it, as export does, instead of editing it)."""
        cached = self.__dict__.get("_model_meta")
        if cached is None or cached[0] is not self.meta:
            cached = (self.meta, ModelMeta.from_dict(self.meta))
            self.__dict__["_model_meta"] = cached
        return cached[1]

    @property
    def num_outputs(self) -> int:
        return self.model_meta.num_outputs

    def _run(self, crops: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch

        from facelens.models.checkpoint import load_network
        from facelens.models.wrappers import FlipAverage

        self.device = resolve_device(device, "torch")  # refused before the (slow) load
        self.meta, model = load_network(path)  # weights only: a model file cannot run code (ModelLoadError names it)
        if self.model_meta.tta == "flip-average":
            model = FlipAverage(model)
        self.model = model.to(torch.device(self.device)).eval()
        self._torch = torch

    def _run(self, crops: np.ndarray) -> np.ndarray:
        from facelens.models.wrappers import to_input

        with self._torch.inference_mode():
            return self.model(to_input(crops, self._torch.device(self.device))).float().cpu().numpy()


class OnnxPredictor(Predictor):
    backend = "onnx"

    def __init__(self, path: Path, threads: int | None = None, spin: bool = True, device: str = "cpu") -> None:
        """``device``: cpu, cuda[:N] or auto (``facelens.devices``; CUDA needs the onnxruntime-gpu build).

        ``spin``: let ONNX Runtime's threads busy-wait between runs (its default).

        That is fastest when the model has the cores to itself (age model, batch 32: 531 faces/s
        against 371 without), but the spinning threads steal the cores from face detection when
        the two interleave: in the service a lone request took 71 ms at p50 with spinning and
        40-48 ms without, and a batch run went from 68 to 78 photos/s (benchmarks/README.md).
        """
        import onnxruntime as ort

        self.path = Path(path)
        resolved = resolve_device(device, "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=onnx_providers(resolved))
        except Exception as exc:  # onnxruntime raises its own exception types
            if resolved == "cpu" or not path_is_onnx_model(path):
                raise ModelLoadError(f"{path}: not a loadable ONNX model ({exc})") from exc
            if check_device_name(device) != "auto":
                raise DeviceError(f"{path}: --device {device}: ONNX Runtime could not use the GPU ({exc})") from exc
            resolved = "cpu"  # auto: a GPU build without a usable GPU runs on the CPU, as auto promises
            self.session = ort.InferenceSession(str(path), opts, providers=onnx_providers(resolved))
        self.device = check_session_device(self.session.get_providers(), device, resolved, str(path))
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ModelLoadError(f"{path}: ONNX file has no facelens metadata; export it with `facelens export`")
        self.meta = json.loads(props[META_KEY])
        try:
            self.model_meta  # noqa: B018 - validated now, so a broken file is named at load time
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ModelLoadError(f"{path}: the facelens metadata of this ONNX file is incomplete ({exc})") from exc
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, crops: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


def path_is_onnx_model(path: Path) -> bool:
    """True when ``path`` parses as an ONNX model, so a failed GPU session is blamed on the GPU, not the file."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure means "not a model"
        return False
    return True


def load_predictor(path: str | Path, backend: str = "auto", device: str = "cpu", spin: bool = True) -> Predictor:
    """Open a model file; ``backend`` 'auto' follows the file type (.onnx -> ONNX Runtime).

    ``device``: auto, cpu, cuda or cuda:N, checked for either backend (``facelens.devices``):
    an unknown name or an unusable GPU raises DeviceError. ``spin=False`` keeps ONNX Runtime's
    idle threads from busy-waiting (see ``OnnxPredictor``): use it when other CPU work, such as face detection, runs between model calls.
    """
    check_device_name(device)  # a typo such as "gpu" is refused before anything else
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: model file not found")
    if backend == "auto":
        backend = "onnx" if p.suffix == ".onnx" else "torch"
    if backend == "onnx":
        if p.suffix != ".onnx":
            raise ModelLoadError(f"{p}: --backend onnx needs an .onnx file (export it with `facelens export`)")
        return OnnxPredictor(p, spin=spin, device=device)
    if backend == "torch":
        if p.suffix == ".onnx":
            torch_twin = p.with_suffix(".pt")
            if not torch_twin.is_file():
                raise ModelLoadError(f"{p}: --backend torch needs the PyTorch checkpoint {torch_twin.name} beside it")
            p = torch_twin
        return TorchPredictor(p, device)
    raise ValueError(f"backend must be auto, onnx or torch, got {backend!r}")
