"""Export a trained PyTorch model to ONNX with a parity check, optionally as a faster variant.

Two speed knobs, both measured rather than assumed:

* ``tta=False`` drops the flip-average test-time augmentation (half the compute);
* ``int8=True`` quantises weights and activations to 8 bits (ONNX Runtime static QDQ
  quantisation, per-channel weights), calibrated on crops of the model's own *training*
  split; the stem and the head stay in float32, and an age model's answers are mapped back
  onto its float network's (``fit_answer_map``): int8 alone pulls them towards the middle.

Either knob changes the outputs, so when ``data`` is given the exported file is re-fitted
on the model's validation split (age interval scale / eye temperature) and re-measured on its
test split, and those numbers replace the PyTorch model's in the file's metadata: a shipped
variant never carries metrics it did not earn itself.

Why in ``train/`` (it was ``infer/export.py``): exporting rebuilds the model's data split,
re-calibrates and re-measures, which is the end of training, not a part of inference; the
predictor that reads the exported file stays in ``infer/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelens.data.prepare import PreparedData, prepare_as_model
from facelens.evaluate.groups import record_groups
from facelens.evaluate.scoring import calibrate, compute_metrics, headline
from facelens.fileio import atomic_path, atomic_write_with, write_json_atomic
from facelens.infer.postprocess import age_from_bins
from facelens.infer.predictor import META_KEY, OnnxPredictor, TorchPredictor
from facelens.models.meta import CALIBRATION_KEYS
from facelens.models.wrappers import FlipAverage, to_input

#: Training-split crops used to calibrate int8 activation ranges.
QUANT_CALIBRATION_CROPS = 512
#: How int8 activation ranges are read from those crops (``facelens export --int8-calibration``).
INT8_CALIBRATION_METHODS = ("minmax", "percentile")


@dataclass
class SplitCrops:
    """Aligned crops and labels of one split of the model's own data split."""

    crops: np.ndarray
    y: np.ndarray
    positions: np.ndarray  # record indices, for group labels


def _write_onnx_meta(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = META_KEY
    entry.value = json.dumps(meta)
    model.producer_name = "facelens"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def float_end_nodes(model) -> list[str]:
    """Names of the nodes int8 export keeps in float32: the first convolution and every Gemm / MatMul.

    Why these two ends: the stem reads raw pixels, the widest activation range in the network, and the
    head's logits feed a softmax (an age is the expectation over 101 bins), so their int8 rounding
    moves every answer; together they are about 4% of the compute. (Keeping the last 13 convolutions
    in float too changed nothing measurable: docs/experiments.md.)
    """
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads


def write_onnx(module, size: int, path: Path, opset: int = 17) -> None:
    """``module`` as ONNX at ``path``: input "crops" (N, 3, size, size) float 0..255, output "outputs", any batch."""
    import torch

    torch.onnx.export(module, torch.rand(2, 3, size, size) * 255, os.fspath(path), input_names=["crops"],
                      output_names=["outputs"], dynamic_axes={"crops": {0: "batch"}, "outputs": {0: "batch"}},
                      opset_version=opset, dynamo=False)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, *, method: str = "minmax",
                   batch_size: int = 32) -> dict:
    """Static QDQ int8 quantisation of ``fp32`` into ``out``; returns how (for the file's metadata).

    Activation ranges come from ``calibration`` by ``method`` (``minmax`` or ``percentile``: the
    99.999th percentile, which ignores a few outlying activations).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        """Batches of ``calibration``; ORT asks for them a slice at a time (``set_range``, see the stride below)."""

        def __init__(self) -> None:
            self._starts = list(range(0, len(calibration), batch_size))
            self._batches = iter(self._starts)

        def __len__(self) -> int:
            return len(self._starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._batches = iter(self._starts[start_index:end_index])

        def get_next(self) -> dict | None:
            s = next(self._batches, None)
            if s is None:
                return None
            x = calibration[s : s + batch_size].transpose(0, 3, 1, 2)
            return {"crops": np.ascontiguousarray(x, dtype=np.float32)}

    pre = out.with_name(f".{out.name}.pre")
    try:
        quant_pre_process(str(fp32), str(pre))
        keep_float = float_end_nodes(onnx.load(str(pre)))
        # reduce_range: 7-bit weights avoid the u8s8 saturation of AVX2 CPUs without VNNI.
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        # One batch at a time: ORT otherwise holds every activation of every calibration crop
                        # (~20 GB for the 128 px age model with TTA) before it reads their ranges.
                        extra_options={"CalibPercentile": 99.999, "CalibStridedMinMax": 1})
    finally:
        pre.unlink(missing_ok=True)
    return {"format": "QDQ, per-channel 7-bit weights, uint8 activations", "calibration": method,
            "calibration_crops": len(calibration), "float32_nodes": keep_float}


def fit_answer_map(int8_logits: np.ndarray, float_logits: np.ndarray) -> list[float]:
    """(offset, slope) of the least-squares line from an int8 file's age answers to its float network's on the same crops.

    Why: int8 rounding and clipped activation ranges shrink the network's largest responses, which pulls the
    answers towards the middle (measured: people over 60 0.6 years younger, children older). Mapping the
    answers back onto the float network's is post-training bias correction; it uses no labels.
    """
    x, y = age_from_bins(int8_logits)[0], age_from_bins(float_logits)[0]
    slope, offset = np.polyfit(x, y, 1)
    return [float(offset), float(slope)]


def load_split_crops(meta: dict, data: list[str], log: Callable[[str], None] = print) -> tuple[PreparedData, dict[str, SplitCrops]]:
    """The model's own train/val/test split of ``data``, as crops (the training run's crop cache is reused)."""
    prep = prepare_as_model(meta, data, log=log)
    # All records, as training cropped them: the same digest set hits the run's crop cache.
    cs, pos = prep.model_crops(np.arange(len(prep.records)), meta)
    out = {}
    for s in ("train", "val", "test"):
        keep = np.flatnonzero(prep.splits[pos] == s)
        out[s] = SplitCrops(cs.crops[keep], prep.targets[pos[keep]], pos[keep])
    return prep, out


def export_onnx(model_path: Path, out: Path, *, tta: bool = True, int8: bool = False, data: list[str] | None = None,
                int8_calibration: str = "minmax", int8_answer_map: bool = True, opset: int = 17, parity_samples: int = 16, seed: int = 0,
                log: Callable[[str], None] = print) -> dict:
    """Write ``out`` atomically (+ a readable ``.json`` of its metadata) and return the parity report.

    An existing ``out`` is kept until the new file has passed export, metadata and the parity run.
    """
    import torch

    if int8 and not data:
        raise ValueError("int8 quantisation needs --data: activation ranges are calibrated on the model's training split")
    if int8_calibration not in INT8_CALIBRATION_METHODS:
        raise ValueError(f"int8 calibration {int8_calibration!r}: choose one of {', '.join(INT8_CALIBRATION_METHODS)}")
    tp = TorchPredictor(model_path)
    net = tp.model.model if isinstance(tp.model, FlipAverage) else tp.model
    module = (FlipAverage(net) if tta else net).eval()
    meta = dict(tp.meta) | {"tta": "flip-average" if tta else "none", "precision": "int8" if int8 else "fp32"}
    size = meta["input_size"]
    # ``out`` is replaced only when export, metadata and the parity check all succeeded.
    with atomic_path(out) as tmp:
        fp32 = out.with_name(f".{out.name}.fp32") if int8 else tmp
        try:
            write_onnx(module, size, fp32, opset)
            prep, splits = load_split_crops(meta, data, log) if data else (None, None)
            if int8:
                rng = np.random.default_rng(seed)
                train = splits["train"].crops
                pick = np.sort(rng.choice(len(train), size=min(QUANT_CALIBRATION_CROPS, len(train)), replace=False))
                log(f"quantising to int8, activation ranges ({int8_calibration}) from {len(pick)} training-split crops")
                meta["quantization"] = quantize_int8(fp32, tmp, train[pick], method=int8_calibration)
            _write_onnx_meta(tmp, meta)
            onnx_pred = OnnxPredictor(tmp)
            if int8 and int8_answer_map and meta["head"] == "age-bins":
                calib = train[pick]
                with torch.inference_mode():
                    float_out = np.concatenate([module(to_input(calib[i : i + 64], torch.device("cpu"))).numpy()
                                                for i in range(0, len(calib), 64)])
                meta["age_answer_map"] = fit_answer_map(onnx_pred(calib), float_out)
                log(f"int8 answers mapped onto the float network's: age = {meta['age_answer_map'][0]:+.3f} "
                    f"+ {meta['age_answer_map'][1]:.4f} x int8 age ({len(calib)} calibration crops)")
            rng = np.random.default_rng(seed)
            crops = rng.integers(0, 256, size=(parity_samples, size, size, 3), dtype=np.uint8)
            with torch.inference_mode():
                reference = module(to_input(crops, torch.device("cpu"))).numpy()
            export_info = {"opset": opset, "parity_max_abs_diff": float(np.abs(reference - onnx_pred(crops)).max())}
            if splits is not None:
                meta = _refit_and_measure(meta, onnx_pred, prep, splits, log)
                export_info |= {"recalibrated_on": "val", "data": list(data)}
            meta["export"] = export_info
            _write_onnx_meta(tmp, meta)
        finally:
            if int8:
                fp32.unlink(missing_ok=True)
    write_json_atomic(out.with_suffix(".json"), meta)
    return {"max_abs_diff": export_info["parity_max_abs_diff"], "samples": parity_samples, "out": str(out),
            "metrics": meta.get("metrics") if splits is not None else None}


def recalibrate_checkpoint(model_path: Path, out: Path, data: list[str], log: Callable[[str], None] = print) -> dict:
    """Write ``out``: the checkpoint ``model_path`` with calibration re-fitted on val and metrics re-measured on test.

    Why: the ``.pt`` twin beside a shipped ONNX file serves ``--backend torch``; when the calibration method
    changes (e.g. per-age-band eye calibration) the twin must decode the way the ONNX file does, from
    parameters fitted on its own float32 outputs. Written atomically; ``out`` may be ``model_path``.
    """
    import torch

    from facelens.models.checkpoint import load_checkpoint

    ck = load_checkpoint(model_path)
    pred = TorchPredictor(model_path)
    prep, splits = load_split_crops(pred.meta, data, log)
    meta = _refit_and_measure(dict(pred.meta), pred, prep, splits, log)
    meta["recalibration"] = {"on": "val", "data": list(data)}
    atomic_write_with(out, lambda tmp: torch.save({**ck, "meta": meta}, tmp))
    return {"out": str(out), "metrics": meta["metrics"]}


def _refit_and_measure(meta: dict, pred: OnnxPredictor | TorchPredictor, prep: PreparedData, splits: dict[str, SplitCrops],
                       log: Callable[[str], None]) -> dict:
    """Calibration re-fitted on val and metrics re-measured on test, for exactly this exported file."""
    val, test = splits["val"], splits["test"]
    val_groups = record_groups(meta["task"], prep, val.crops, val.positions, estimate_ages=False)
    fitted = calibrate(meta["head"], pred(val.crops), val.y, val_groups, age_answer_map=meta.get("age_answer_map"))
    meta = {k: v for k, v in meta.items() if k not in CALIBRATION_KEYS}
    meta |= fitted
    groups = record_groups(meta["task"], prep, test.crops, test.positions)
    metrics = compute_metrics(meta["task"], pred(test.crops), test.y, meta, groups)
    meta["metrics"] = {"split": "test", **metrics}
    log(f"{type(pred).__name__.removesuffix('Predictor')} model (tta {meta['tta']}) on the test split: "
        f"{headline(meta['task'], metrics)}")
    return meta
