"""Export a trained PyTorch model to ONNX (flip-average TTA included) with a parity check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from facelens.fileio import write_json_atomic
from facelens.infer.predictor import META_KEY, OnnxPredictor, TorchPredictor


def export_onnx(model_path: Path, out: Path, opset: int = 17, parity_samples: int = 16, seed: int = 0) -> dict:
    """Write ``out`` atomically and return {'max_abs_diff': ..., 'outputs': ...} from a parity run."""
    import onnx
    import torch

    tp = TorchPredictor(model_path)
    size = tp.meta["input_size"]
    dummy = torch.rand(2, 3, size, size) * 255
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.onnx.export(
        tp.model, dummy, str(tmp), input_names=["crops"], output_names=["outputs"],
        dynamic_axes={"crops": {0: "batch"}, "outputs": {0: "batch"}}, opset_version=opset, dynamo=False,
    )
    model = onnx.load(str(tmp))
    entry = model.metadata_props.add()
    entry.key = META_KEY
    entry.value = json.dumps(tp.meta)
    model.producer_name = "facelens"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, size=(parity_samples, size, size, 3), dtype=np.uint8)
    diff = float(np.abs(tp(crops) - OnnxPredictor(tmp)(crops)).max())
    os.replace(tmp, out)
    # A readable copy of the metadata beside the model (task, calibration, test metrics...).
    write_json_atomic(out.with_suffix(".json"), tp.meta | {"export": {"opset": opset, "parity_max_abs_diff": diff}})
    return {"max_abs_diff": diff, "samples": parity_samples, "out": str(out)}
