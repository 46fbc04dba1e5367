"""``facelens train``: datasets -> hygiene -> split -> crops -> fit each arch -> calibrate -> test.

Every architecture asked for (``--arch mobilenetv2 --arch seed-cnn``) is trained on the *same*
split in the same run, so the comparison with the student baselines is like for like.
A run folder holds everything needed to audit or resume it:

    RUN_DIR/config.json      the exact request (``facelens train --config`` repeats the run)
    RUN_DIR/hygiene.json     what was dropped and why
    RUN_DIR/split.csv        every kept file and its split
    RUN_DIR/<arch>/          checkpoints/, model.pt, metrics.json
    RUN_DIR/comparison.json  test metrics of every arch side by side

Under torchrun (``train.distributed``, docs/distributed-training.md) every process runs this same
function: rank 0 prepares the data and shares it, builds the crop cache while the others wait,
writes the run folder and tests the model; the others only train their shards.

This module only orchestrates a run; the pieces live where the layering puts them (tests/test_layering.py):
the request and its defaults in ``train.config``, reading and splitting the data in ``data.prepare``,
the epochs in ``train.loop``, calibration and test metrics in ``evaluate.scoring``, the metric
groups in ``evaluate.groups``, the reproduce commands in ``train.commands``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from facelens import __version__, devices
from facelens.data.crops import PIPELINE_VERSION, CropSet
from facelens.data.prepare import PreparedData, prepare_records, resolve_strategy
from facelens.data.splits import EYE_BLOCK_SIZE
from facelens.errors import DatasetError
from facelens.evaluate.groups import record_groups
from facelens.evaluate.scoring import calibrate, compute_metrics, headline
from facelens.face.align import FACE_TEMPLATES, chip_insets, parse_eye_geometry
from facelens.fileio import atomic_write_with, write_bytes_atomic, write_json_atomic
from facelens.models.factory import check_frozen_blocks, create_model, default_input_size, head_of
from facelens.models.wrappers import FlipAverage
from facelens.tasks import task_spec
from facelens.train import distributed as ddp
from facelens.train.augment import AUGMENT_PRESETS, AugmentConfig
from facelens.train.config import AGE_FLATTEN, TrainRequest, eye_crop_input_size
from facelens.train.init_from import init_record, load_trained
from facelens.train.loop import FitConfig, fit, predict_outputs, resolve_precision
from facelens.train.sampling import balanced_weights


def resolve_device(name: str) -> torch.device:
    """The training device, by the rule inference uses too (``facelens.devices.resolve_device``)."""
    return torch.device(devices.resolve_device(name, "torch"))


def augment_config(req: TrainRequest) -> AugmentConfig:
    """The run's augmentation preset; chip fill, if the preset has it, gets the insets of the run's
    face template (where a UTKFace chip ends inside its crops; none for the tight template)."""
    preset = AUGMENT_PRESETS[req.augment]
    if preset.chip_fill and task_spec(req.task).crop_kind == "face":
        return replace(preset, chip_insets=chip_insets(FACE_TEMPLATES[req.face_crop]))
    return preset


def _limit(idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or len(idx) <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def run_training(req: TrainRequest, log=print) -> dict:
    """Train every architecture of ``req``; data-parallel when started by torchrun (RANK/WORLD_SIZE set).

    Returns the test metrics per architecture (empty on ranks other than 0, which test nothing).
    """
    req.check()
    for arch in req.archs:
        check_frozen_blocks(arch, req.task, req.frozen_blocks, req.pretrained)
    env = ddp.env_from(os.environ)
    if env is None:
        return _run_training(req, log, resolve_device(req.device), None)
    device = ddp.init_process_group(env, req.device)
    try:
        return _run_training(req, log if env.is_main else _quiet, device, env)
    finally:
        ddp.shutdown()


def _quiet(message: str) -> None:
    """The log of ranks other than 0: they train the same epochs rank 0 reports."""


def _run_training(req: TrainRequest, log, device: torch.device, env: ddp.DistEnv | None) -> dict:
    t_start = time.time()
    main = env is None or env.is_main
    precision, warning = resolve_precision(req.precision, device)
    if warning and main:
        log(f"warning: {warning}")
    out = Path(req.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(req.threads or ddp.threads_per_process(None, os.cpu_count(), env.local_world_size if env else 1))
    strategy = resolve_strategy(req.task, req.split)
    config = asdict(req) | {"split_resolved": strategy, "facelens": __version__, "torch": torch.__version__,
                            "device_resolved": str(device), "precision_resolved": precision}
    req = replace(req, precision=precision)  # what the steps run in; config.json keeps what was asked (``auto``)
    if env is not None:
        config["distributed"] = {"world_size": env.world_size, "backend": torch.distributed.get_backend(),
                                 "batch_size_per_process": req.batch_size,
                                 "global_batch_size": req.batch_size * env.world_size,
                                 "threads_per_process": torch.get_num_threads() if device.type == "cpu" else None}
    if main:
        write_json_atomic(out / "config.json", config)
        # Rank 0 reads, hashes and splits the data once; the others receive the result (identical by construction).
        prep = prepare_records(req.task, req.data, strategy, req.data_seed, req.fractions, req.conflict_policy,
                               req.female_class, req.male_class, log, eye_sides=parse_eye_geometry(req.eye_crop).sides)
    prep = ddp.broadcast_object(prep if main else None)
    if main:
        _write_split_files(out, prep)
    counts = {s: int((prep.splits == s).sum()) for s in ("train", "val", "test")}
    log(f"split ({strategy}, seed {req.data_seed}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for s, n in counts.items():
        if n == 0:
            raise DatasetError(f"the {s} split is empty ({len(prep.records)} images): add data or change --fractions")
    results = _train_archs(req, prep, strategy, out, device, env, log)
    if not main:
        return {}
    # Archs trained later into the same run folder (same split) join the comparison.
    previous = json.loads((out / "comparison.json").read_text()).get("models", {}) if (out / "comparison.json").exists() else {}
    write_json_atomic(out / "comparison.json", {"task": req.task, "seconds_last_invocation": round(time.time() - t_start, 1),
                                                "models": previous | results})
    return results


def _write_split_files(out: Path, prep: PreparedData) -> None:
    write_json_atomic(out / "hygiene.json", prep.hygiene)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split", "sha1"])
    for r, s, d in zip(prep.records, prep.splits, prep.digests, strict=True):
        w.writerow([r.path, r.label, s, d])
    write_bytes_atomic(out / "split.csv", buf.getvalue().encode())


def _shared_crops(prep: PreparedData, env: ddp.DistEnv | None, indices: np.ndarray, kind: str, size: int,
                  **options) -> tuple[CropSet, np.ndarray]:
    """``prep.crops(indices, kind, size, **options)``, built once per machine: under torchrun the first
    process of each machine (LOCAL_RANK 0) fills the crop cache while the others wait at a barrier,
    then they read it.

    Why: the cache writes are atomic but not coordinated; several processes building the same
    set would detect every face several times over on cores the others need.
    """
    first = env is None or env.local_rank == 0
    if first:
        built = prep.crops(indices, kind, size, **options)
    ddp.barrier()
    return built if first else prep.crops(indices, kind, size, **(options | {"workers": 1, "desc": None}))


def _train_archs(req: TrainRequest, prep: PreparedData, strategy: str, out: Path, device: torch.device,
                 env: ddp.DistEnv | None, log) -> dict:
    """Train, calibrate and test every architecture of ``req`` on the same split; test metrics per arch (rank 0)."""
    results = {}
    for arch in req.archs:
        metrics = _train_arch(req, arch, prep, strategy, out, device, env, log)
        if metrics is not None:
            results[arch] = metrics
    return results


@dataclass
class ArchData:
    """One architecture's crops of the run's split: the crops, their record positions, targets and sources."""

    crops: np.ndarray
    positions: np.ndarray
    idx: dict[str, np.ndarray]  # split -> rows of ``crops``
    y: np.ndarray
    sources: np.ndarray


def _arch_data(req: TrainRequest, arch: str, prep: PreparedData, out: Path, env: ddp.DistEnv | None, log,
               size: int) -> ArchData:
    """Crops at the architecture's input size (``--max-images`` applied first), failures written beside the model."""
    kind = task_spec(req.task).crop_kind
    # --max-images caps each split *before* cropping, so quick trials skip detection on the rest.
    use = np.sort(np.concatenate([_limit(np.flatnonzero(prep.splits == s), req.max_images, req.data_seed)
                                  for s in ("train", "val", "test")]))
    cs, pos = _shared_crops(prep, env, use, kind, size, workers=req.workers, desc=f"{kind} crops {size}px",
                            template=FACE_TEMPLATES[req.face_crop], eye_geometry=parse_eye_geometry(req.eye_crop))
    if cs.failures:
        log(f"{len(cs.failures)} images gave no crop (listed in {arch}/crop_failures.json), e.g. {cs.failures[:3]}")
    if env is None or env.is_main:
        (out / arch).mkdir(exist_ok=True)
        write_json_atomic(out / arch / "crop_failures.json", cs.failures)
    split_of = prep.splits[pos]
    idx = {s: np.flatnonzero(split_of == s) for s in ("train", "val", "test")}
    return ArchData(cs.crops, pos, idx, prep.targets[pos], np.asarray(prep.sources)[pos])


def _default_size(req: TrainRequest, arch: str) -> int:
    """The architecture's input size for the task and its eye crop (``train.config.eye_crop_input_size``)."""
    size = default_input_size(arch, req.task)
    return eye_crop_input_size(size, req.eye_crop) if task_spec(req.task).crop_kind == "eye" else size


def _train_arch(req: TrainRequest, arch: str, prep: PreparedData, strategy: str, out: Path, device: torch.device,
                env: ddp.DistEnv | None, log) -> dict | None:
    """Fit one architecture; on rank 0 also calibrate, test and save it. Its test metrics, or None on other ranks."""
    head = head_of(arch, req.task)
    size = req.input_size or _default_size(req, arch)
    # --init-from is checked before any crop is cut: a refused file should cost nothing
    trained = load_trained(req.init_from, task=req.task, arch=arch, wanted={"head": head, "input_size": size} |
                           _crop_meta(req), data=req.data, split=_split_meta(req, strategy)) if req.init_from else None
    d = _arch_data(req, arch, prep, out, env, log, size)
    idx = d.idx
    log(f"[{arch}] {head} head, {size}px input, train {len(idx['train'])} / val {len(idx['val'])} / "
        f"test {len(idx['test'])} on {device}"
        + (f" x {env.world_size} processes (global batch {req.batch_size * env.world_size})" if env else ""))
    torch.manual_seed(req.seed)
    model = create_model(arch, req.task, pretrained=req.pretrained, frozen_blocks=req.frozen_blocks)
    started_from = _start_from(req, arch, model, *trained, log) if trained else None
    if req.frozen_blocks:
        n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log(f"[{arch}] first {req.frozen_blocks} backbone blocks frozen ({n_frozen:,} parameters)")
    cfg = FitConfig(head=head, epochs=req.epochs, batch_size=req.batch_size, lr=req.lr, seed=req.seed,
                    patience=req.patience, max_steps_per_epoch=req.max_steps_per_epoch, ema_decay=req.ema_decay,
                    weight_decay=req.weight_decay, precision=req.precision, augment=augment_config(req),
                    age_l1=req.age_l1, label_sigma=req.label_sigma, label_sigma_per_year=req.label_sigma_per_year)
    many = len(set(d.sources.tolist())) > 1
    weights = None
    if (req.balance == "source" and many) or req.balance == "source+age":
        spec = task_spec(req.task)
        flatten = AGE_FLATTEN if req.balance == "source+age" else 0.0
        weights = balanced_weights(d.sources[idx["train"]], d.y[idx["train"]], bin_width=spec.balance_bin_width,
                                   flatten=flatten)
        log(f"[{arch}] sampling balanced by source within each {spec.balance_unit}"
            + (f", {spec.balance_unit}s flattened (share ~ count^{1 - flatten:g})" if flatten else "")
            + f" (weights {weights.min():.2f}-{weights.max():.2f})"
            + ("; validation: mean of the per-source scores" if many else ""))
    summary = fit(model, d.crops[idx["train"]], d.y[idx["train"]], d.crops[idx["val"]], d.y[idx["val"]], cfg,
                  out / arch, device, resume=req.resume, log=log, train_weights=weights,
                  val_groups=d.sources[idx["val"]] if many and req.balance != "none" else None)
    if env is not None and not env.is_main:  # rank 0 calibrates, tests and writes the model; this rank's part is done
        return None
    meta = _model_meta(req, arch, head, size, strategy, prep, d,
                       summary | ({"init_from": started_from} if started_from else {}), device, env)
    metrics = _calibrate_test_and_save(req, model, meta, prep, d, out / arch, device)
    log(f"[{arch}] test: " + headline(req.task, metrics))
    return metrics


def _start_from(req: TrainRequest, arch: str, model: torch.nn.Module, meta: dict, weights: dict,
                log) -> dict:
    """``--init-from``: put the trained network's weights into ``model``; its record for the new model's metadata."""
    model.load_state_dict(weights)
    log(f"[{arch}] starting from the weights of {req.init_from}")
    return init_record(req.init_from, meta)


def _crop_meta(req: TrainRequest) -> dict:
    """The crop a model of this run expects: a face template or an eye geometry (the other one None)."""
    kind = task_spec(req.task).crop_kind
    return {"crop": asdict(FACE_TEMPLATES[req.face_crop]) if kind == "face" else None,
            "eye_crop": parse_eye_geometry(req.eye_crop).meta() if kind == "eye" else None}


def _split_meta(req: TrainRequest, strategy: str) -> dict:
    return {"strategy": strategy, "seed": req.data_seed, "fractions": list(req.fractions),
            "block_size": EYE_BLOCK_SIZE if strategy == "blocks" else None}


def _model_meta(req: TrainRequest, arch: str, head: str, size: int, strategy: str, prep: PreparedData, d: ArchData,
                summary: dict, device: torch.device, env: ddp.DistEnv | None) -> dict:
    """The metadata a trained model carries: what it is, the crop it expects, its split and how it was trained.

    A plain dict, as stored in model.pt and meta.json (``facelens.models.meta.ModelMeta`` reads it)."""
    spec = task_spec(req.task)
    eye_sides = parse_eye_geometry(req.eye_crop).sides if spec.crop_kind == "eye" else ()
    return {
        "name": f"facelens-{req.task}{'-both' if eye_sides == ('both',) else ''}-{arch}",
        "facelens_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "task": req.task,
        "arch": arch,
        "head": head,
        "input_size": size,
        "pipeline": PIPELINE_VERSION,
        **_crop_meta(req),
        "positive_class": spec.positive_class,
        "class_map": prep.class_map,
        "tta": "flip-average",
        "split": _split_meta(req, strategy),
        "data": req.data,
        "layouts": prep.layouts,
        "counts": {k: len(v) for k, v in d.idx.items()},
        "training": summary | {"epochs_max": req.epochs, "batch_size": req.batch_size, "lr": req.lr,
                               "device": str(device), "cpu": platform.processor() or platform.machine(),
                               "threads": torch.get_num_threads(), "augment": req.augment,
                               "balance": req.balance, "age_l1": req.age_l1, "label_sigma": req.label_sigma,
                               "label_sigma_per_year": req.label_sigma_per_year}
                              | ({"world_size": env.world_size, "global_batch_size": req.batch_size * env.world_size}
                                 if env else {}),
    }


def _calibrate_test_and_save(req: TrainRequest, model: torch.nn.Module, meta: dict, prep: PreparedData, d: ArchData,
                             arch_dir: Path, device: torch.device) -> dict:
    """Calibrate on val, measure on test (both with the flip-average TTA the model ships with), write
    model.pt, metrics.json, meta.json and the test predictions; returns the test metrics."""
    idx = d.idx
    tta = FlipAverage(model).eval()
    val_out = predict_outputs(tta, d.crops[idx["val"]], device)
    meta |= calibrate(meta["head"], val_out, d.y[idx["val"]],
                      record_groups(req.task, prep, d.crops[idx["val"]], d.positions[idx["val"]], estimate_ages=False))
    test_out = predict_outputs(tta, d.crops[idx["test"]], device, desc="test")
    groups = record_groups(req.task, prep, d.crops[idx["test"]], d.positions[idx["test"]])
    metrics = compute_metrics(req.task, test_out, d.y[idx["test"]], meta, groups)
    meta["metrics"] = {"split": "test", **metrics}
    saved = {"meta": meta, "state_dict": model.state_dict()}
    atomic_write_with(arch_dir / "model.pt", lambda tmp: torch.save(saved, tmp))
    write_json_atomic(arch_dir / "metrics.json", meta["metrics"])
    write_json_atomic(arch_dir / "meta.json", meta)
    np.savez(arch_dir / "test_predictions.npz", outputs=test_out, y=d.y[idx["test"]],
             paths=np.array([str(prep.records[i].path) for i in d.positions[idx["test"]]]))
    return metrics
