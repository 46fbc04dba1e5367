"""``facelens train``: datasets -> hygiene -> split -> crops -> fit each arch -> calibrate -> test.

Every architecture asked for (``--arch mobilenetv2 --arch seed-cnn``) is trained on the *same*
split in the same run, so the comparison with the student baselines is like for like.
A run folder holds everything needed to audit or resume it:

    RUN_DIR/config.json      the exact request
    RUN_DIR/hygiene.json     what was dropped and why
    RUN_DIR/split.csv        every kept file and its split
    RUN_DIR/<arch>/          checkpoints/, model.pt, metrics.json
    RUN_DIR/comparison.json  test metrics of every arch side by side

Under torchrun (``train.distributed``, docs/distributed-training.md) every process runs this same
function: rank 0 prepares the data and shares it, builds the crop cache while the others wait,
writes the run folder and tests the model; the others only train their shards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from facelens import __version__, devices
from facelens.data.crops import PIPELINE_VERSION, CropSet, build_crops
from facelens.data.hygiene import check_hygiene
from facelens.data.readers import AGE_RANGE, Dataset, Record, read_dataset
from facelens.data.splits import DEFAULT_FRACTIONS, EYE_BLOCK_SIZE, assign_split, block_group, random_group
from facelens.errors import DatasetError
from facelens.face.align import (
    AGE_TEMPLATE,
    DEFAULT_EYE_GEOMETRY,
    FACE_TEMPLATES,
    EyeCropGeometry,
    FaceTemplate,
    parse_eye_geometry,
)
from facelens.fileio import write_bytes_atomic, write_json_atomic
from facelens.models.factory import check_frozen_blocks, create_model, default_input_size, head_of
from facelens.train import distributed as ddp
from facelens.train.augment import AUGMENT_PRESETS
from facelens.train.loop import FitConfig, FlipAverage, check_precision, fit, predict_outputs
from facelens.train.sampling import balanced_weights


@dataclass
class TrainRequest:
    task: str  # "age" | "eyes"
    data: list[str]
    out: str
    archs: list[str] = field(default_factory=lambda: ["mobilenetv2"])
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4  # AdamW's decoupled decay
    precision: str = "fp32"  # training step: fp32 or bf16 autocast (train.loop.autocast_context)
    seed: int = 0
    split: str = "auto"  # auto | content | blocks | random
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    conflict_policy: str = "drop"
    device: str = "auto"
    resume: bool = False
    pretrained: bool = True
    female_class: str | None = None
    male_class: str | None = None
    input_size: int | None = None
    max_images: int | None = None  # cap per split, for smoke tests
    max_steps_per_epoch: int | None = None
    patience: int = 3
    ema_decay: float = 0.0  # >0: keep a moving average of the weights (see train.loop.make_ema)
    frozen_blocks: int = 0  # first backbone blocks kept at their pretrained weights (models.factory.freeze_early_blocks)
    workers: int | None = None
    threads: int | None = None  # CPU threads for torch (default: all cores)
    face_crop: str = "tight"  # age: face template (face.align.FACE_TEMPLATES)
    eye_crop: str = "tight"  # eyes: how eyes are cut from faces (face.align.parse_eye_geometry)
    augment: str = "basic"  # train.augment.AUGMENT_PRESETS; "photo" adds source-style degradations
    balance: str = "none"  # "source": sample so every source has an equal share of each label bin

    def check(self) -> None:
        """Refuse options that cannot work, before any data is read or the run folder is written.

        Why up front: ``--batch-size 0`` ended in a ZeroDivisionError and ``--epochs 0`` failed only
        after the crops of every image had been built.
        """
        for name in ("epochs", "batch_size", "patience", "max_images", "max_steps_per_epoch", "threads", "input_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.face_crop not in FACE_TEMPLATES:
            raise ValueError(f"--face-crop must be one of {', '.join(FACE_TEMPLATES)}, got {self.face_crop!r}")
        parse_eye_geometry(self.eye_crop)
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}")
        if self.balance not in BALANCE_CHOICES:
            raise ValueError(f"--balance must be one of {', '.join(BALANCE_CHOICES)}, got {self.balance!r}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        devices.check_device_name(self.device)


BALANCE_CHOICES = ("none", "source")


def resolve_device(name: str) -> torch.device:
    """The training device, by the rule inference uses too (``facelens.devices.resolve_device``)."""
    return torch.device(devices.resolve_device(name, "torch"))


FEMALE_WORDS = ("female", "woman", "women", "girl", "f")
MALE_WORDS = ("male", "man", "men", "boy", "m")


def map_sex_classes(names: set[str], female: str | None, male: str | None) -> dict[str, int]:
    """Class folder names -> 1 (female) / 0 (male), by flags or by a name rule that is reported."""
    if len(names) != 2:
        raise DatasetError(f"the eye task needs exactly two classes, found {len(names)}: {sorted(names)}")
    if female or male:
        female = female or next(n for n in names if n != male)
        male = male or next(n for n in names if n != female)
        if {female, male} != names:
            raise DatasetError(f"--female-class/--male-class {female!r}/{male!r} do not match the classes {sorted(names)}")
        return {female: 1, male: 0}

    def kind(n: str) -> str | None:
        low = n.lower()
        for w in FEMALE_WORDS:  # female first: "female" contains "male"
            if low.startswith(w) or low.endswith(w) or low == w:
                return "female"
        for w in MALE_WORDS:
            if low.startswith(w) or low.endswith(w) or low == w:
                return "male"
        return None

    kinds = {n: kind(n) for n in names}
    if sorted(k or "" for k in kinds.values()) != ["female", "male"]:
        raise DatasetError(
            f"cannot tell which class is female from the names {sorted(names)}: pass --female-class NAME --male-class NAME"
        )
    return {n: int(k == "female") for n, k in kinds.items()}


def split_key(task: str, strategy: str, record: Record, digest: str) -> str:
    if any(k == "eye_side" for k, _ in record.meta):  # an eye cut from a face: the face decides (see expand_faces_to_eyes)
        return f"sha1:{digest}"
    if record.group:
        return f"group:{record.group}"
    if strategy == "blocks":
        return block_group(record.path, EYE_BLOCK_SIZE) or f"sha1:{digest}"
    if strategy == "random":
        return random_group(record.path)
    return f"sha1:{digest}"


def resolve_strategy(task: str, strategy: str) -> str:
    if strategy == "auto":
        return "blocks" if task == "eyes" else "content"
    if strategy not in ("content", "blocks", "random"):
        raise ValueError(f"--split must be auto, content, blocks or random, got {strategy!r}")
    return strategy


@dataclass
class PreparedData:
    records: list[Record]
    digests: list[str]
    sources: list[str]
    splits: np.ndarray  # "train"/"val"/"test" per record
    targets: np.ndarray
    class_map: dict[str, int] | None
    hygiene: dict
    layouts: list[str]

    def crops(self, indices: np.ndarray, kind: str, size: int, workers: int | None = None,
              desc: str | None = None, template: FaceTemplate = AGE_TEMPLATE,
              eye_geometry: EyeCropGeometry = DEFAULT_EYE_GEOMETRY) -> tuple[CropSet, np.ndarray]:
        """Aligned crops of the records at ``indices`` (cached by content digest) and the record
        position of each crop; images that gave none are missing and listed in ``failures``."""
        indices = np.asarray(indices)
        sides = [self.records[i].meta_dict().get("eye_side") for i in indices] if kind == "eye" else None
        cs = build_crops([self.records[i].path for i in indices], [self.digests[i] for i in indices], kind, size,
                         workers=workers, desc=desc or f"{kind} crops", template=template, sides=sides,
                         eye_geometry=eye_geometry)
        return cs, indices[cs.index]

    def model_crops(self, indices: np.ndarray, meta: dict, desc: str | None = None) -> tuple[CropSet, np.ndarray]:
        """``crops`` as the model described by ``meta`` sees them (its crop kind, size, face template, eye geometry)."""
        kind = "face" if meta["task"] == "age" else "eye"
        return self.crops(indices, kind, meta["input_size"], desc=desc, template=FaceTemplate.from_meta(meta.get("crop")),
                          eye_geometry=EyeCropGeometry.from_meta(meta.get("eye_crop")))


def source_name(data: str | Path) -> str:
    """The name a dataset goes by in per-source metrics: its folder (or CSV) name, or the parent's
    for a ``train``/``test`` split folder (``faces-20-50/train`` -> ``faces-20-50``)."""
    p = Path(data)
    if p.suffix.lower() == ".csv":
        p = p.with_suffix("")
    return p.parent.name if p.name in ("train", "test") else p.name


def prepare_records(task: str, data: list[str], strategy: str, seed: int, fractions, policy: str = "drop",
                    female: str | None = None, male: str | None = None, log=print) -> PreparedData:
    """Read, clean and split datasets exactly as training does (``evaluate`` reuses this)."""
    datasets: list[Dataset] = [read_dataset(d, task) for d in data]
    records, sources = [], {}
    face_files = {r.path for ds in datasets if ds.faces for r in ds.records}
    for d, ds in zip(data, datasets, strict=True):
        log(f"{d}: {ds.layout} layout, {len(ds)} labelled images" + (f", {len(ds.skipped)} skipped" if ds.skipped else ""))
        for path, why in ds.skipped[:10]:
            log(f"  skipped {path}: {why}")
        for r in ds.records:
            sources[r.path] = source_name(d)
        records.extend(ds.records)
    if not records:
        raise DatasetError(f"no labelled images in {', '.join(data)}")
    report = check_hygiene(records, policy, AGE_RANGE if task == "age" else None)
    log("data hygiene:\n  " + "\n  ".join(report.lines()))
    kept = report.kept
    if not kept:
        raise DatasetError("no usable images left after the hygiene checks")
    class_map = None
    digests = [report.digests[r.path] for r in kept]
    if task == "eyes":
        crops_only = {str(r.label) for r in kept if r.path not in face_files}
        class_map = map_sex_classes(crops_only, female, male) if crops_only else None
        if class_map:
            log("classes: " + ", ".join(f"{n} -> {'female' if v else 'male'}" for n, v in sorted(class_map.items())))
        kept, digests = expand_faces_to_eyes(kept, digests, face_files)
        targets = np.array([sex_of_face(r) if r.path in face_files else class_map[str(r.label)] for r in kept],
                           dtype=np.float32)
    else:
        targets = np.array([float(r.label) for r in kept], dtype=np.float32)
    splits = np.array([assign_split(split_key(task, strategy, r, dg), seed, fractions) for r, dg in zip(kept, digests, strict=True)])
    hygiene = report.summary() | {
        "unreadable_files": [[str(p), w] for p, w in report.unreadable],
        "out_of_range_files": [[str(p), v] for p, v in report.out_of_range],
        "conflicting_groups": [[str(r.path) for r in g] for g in report.conflict_groups],
    }
    return PreparedData(kept, digests, [sources[r.path] for r in kept], splits, targets, class_map, hygiene,
                        [ds.layout for ds in datasets])


EYE_SIDES = ("left", "right")


def expand_faces_to_eyes(records: list[Record], digests: list[str], face_files: set[Path]) -> tuple[list[Record], list[str]]:
    """Each whole-face record becomes two eye records (``eye_side`` left / right), with the face's digest:
    the split key of both is the face's content (``split_key``), so the two eyes of a face and every
    byte copy of it stay on one side of the split, the same side as in the age task."""
    out_r, out_d = [], []
    for r, d in zip(records, digests, strict=True):
        if r.path not in face_files:
            out_r.append(r)
            out_d.append(d)
            continue
        for side in EYE_SIDES:
            out_r.append(Record(r.path, r.label, r.group, (*r.meta, ("eye_side", side))))
            out_d.append(d)
    return out_r, out_d


def sex_of_face(record: Record) -> int:
    """1 (female) / 0 (male) from a face's gender label ('female', 'male', 'F', 'M', 'woman', ...)."""
    low = str(record.label).strip().lower()
    if low in FEMALE_WORDS or low == "w":
        return 1
    if low in MALE_WORDS:
        return 0
    raise DatasetError(f"{record.path}: gender {record.label!r} is neither female nor male (use female/male or F/M)")


def _limit(idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or len(idx) <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def record_groups(task: str, prep: PreparedData, crops: np.ndarray, positions: np.ndarray) -> dict[str, list[str]]:
    """Per-record group labels used for bias breakdowns in the metrics."""
    from facelens.images import is_grayscale

    recs = [prep.records[i] for i in positions]
    groups: dict[str, list[str]] = {"source": [prep.sources[i] for i in positions]}
    if task == "age":
        for key in ("gender", "race"):
            vals = [r.meta_dict().get(key) for r in recs]
            if any(vals):
                groups[key] = [v or "unknown" for v in vals]
    else:
        from PIL import Image

        from facelens.evaluate.metrics import EYE_AGE_BANDS, age_band_label

        groups["colour"] = ["grayscale" if is_grayscale(c) else "colour" for c in crops]
        sizes, bands, under_13, faces = [], [], [], []
        for r, i in zip(recs, positions, strict=True):
            meta = r.meta_dict()
            if "eye_side" in meta:  # cut from a face: its size is the face's, its age the face's label
                sizes.append(None)
                age = float(meta["age"]) if meta.get("age") else None
                bands.append(age_band_label(age, EYE_AGE_BANDS) if age is not None else None)
                under_13.append(None if age is None else "0-12" if age < 13 else "13+")
                faces.append(prep.digests[i])
                continue
            with Image.open(r.path) as im:
                s = min(im.size)
            sizes.append("<48px" if s < 48 else "48-63px" if s < 64 else ">=64px")
            bands.append(None)
            under_13.append(None)
            faces.append(None)
        if any(sizes):
            groups["size"] = sizes
        if any(bands):
            groups["age_band"] = bands
            groups["child_or_not"] = under_13  # the targets' split: 0-12 (eyes weak evidence) vs 13+
        if any(faces):
            groups[FACE_ID] = faces
    return groups


#: ``record_groups`` key of the face an eye crop was cut from (an id for pairing, not a breakdown).
FACE_ID = "face"


def per_face(outputs: np.ndarray, y: np.ndarray, face_ids: list[str | None], groups: dict[str, list] | None = None
             ) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    """Eye-crop logits averaged per face (as ``Analyzer`` combines a face's two eyes), with the face's
    label and groups; crops not cut from a face are left out."""
    order: dict[str, list[int]] = {}
    for k, f in enumerate(face_ids):
        if f is not None:
            order.setdefault(f, []).append(k)
    idx = list(order.values())
    logits = np.array([outputs.reshape(-1)[ks].mean() for ks in idx])
    labels = np.array([y[ks[0]] for ks in idx])
    face_groups = {key: [vals[ks[0]] for ks in idx] for key, vals in (groups or {}).items() if key != FACE_ID}
    face_groups = {key: vals for key, vals in face_groups.items() if any(v is not None for v in vals)}
    return logits, labels, face_groups


def calibrate(head: str, val_out: np.ndarray, val_y: np.ndarray, face_ids: list[str | None] | None = None) -> dict:
    """Calibration parameters fitted on the validation split only.

    Eyes: one temperature for single crops and, when crops were cut from faces (``face_ids``), a second
    for the face's two eyes combined (their mean logit), which is the probability ``predict`` reports.
    """
    from facelens.evaluate.calibration import fit_interval_scale, fit_temperature
    from facelens.infer.postprocess import age_from_bins

    if head == "age-bins":
        value, low, high = age_from_bins(val_out)
        return {"interval": 0.8, "interval_scale": float(fit_interval_scale(val_y, value, low, high, target=0.8))}
    if head == "regression":
        resid = val_y - val_out.reshape(-1)
        return {"interval": 0.8, "residual_q": [float(np.quantile(resid, 0.1)), float(np.quantile(resid, 0.9))]}
    out = {"temperature": float(fit_temperature(val_out.reshape(-1), val_y))}
    if face_ids is not None and sum(f is not None for f in face_ids) >= 20:
        logits, labels, _ = per_face(val_out, val_y, face_ids)
        out["face_temperature"] = float(fit_temperature(logits, labels))
    return out


def compute_metrics(task: str, outputs: np.ndarray, y: np.ndarray, meta: dict, groups: dict[str, list[str]]) -> dict:
    from facelens.evaluate.metrics import age_metrics, binary_metrics
    from facelens.infer.postprocess import decode_age, decode_eyes, decode_face_logits

    if task == "age":
        value, low, high = decode_age(outputs, meta)
        out = age_metrics(y, value, low, high, groups=groups)
        src = np.asarray(groups.get("source", []))
        if len(set(src)) > 1:
            out["by_source"] = {s: age_metrics(y[src == s], value[src == s], low[src == s], high[src == s])
                                for s in sorted(set(src))}
        return out
    face_ids = groups.get(FACE_ID)
    crop_groups = {k: v for k, v in groups.items() if k != FACE_ID}
    p_crop = decode_eyes(outputs, meta)
    out = binary_metrics(y, p_crop, groups=crop_groups) | _by_source(y, p_crop, crop_groups)
    if face_ids and any(f is not None for f in face_ids):
        logits, labels, face_groups = per_face(outputs, y, face_ids, crop_groups)
        p = decode_face_logits(logits, meta)
        out["faces"] = binary_metrics(labels, p, groups=face_groups) | _by_source(labels, p, face_groups)
    return out


def _by_source(y: np.ndarray, p: np.ndarray, groups: dict[str, list]) -> dict:
    """``{"by_source": {source: binary_metrics with the other groups}}``, or {} for a single source."""
    from facelens.evaluate.metrics import binary_metrics

    src = np.asarray(groups.get("source", []))
    if len(set(src.tolist())) < 2:
        return {}
    out = {}
    for s in sorted(set(src.tolist())):
        keep = np.flatnonzero(src == s)
        sub = {k: [vals[i] for i in keep] for k, vals in groups.items() if k != "source"}
        out[s] = binary_metrics(y[keep], p[keep], groups=sub)
    return {"by_source": out}


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
    check_precision(req.precision, device)
    out = Path(req.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(req.threads or ddp.threads_per_process(None, os.cpu_count(), env.local_world_size if env else 1))
    strategy = resolve_strategy(req.task, req.split)
    config = asdict(req) | {"split_resolved": strategy, "facelens": __version__, "torch": torch.__version__,
                            "device_resolved": str(device)}
    if env is not None:
        config["distributed"] = {"world_size": env.world_size, "backend": torch.distributed.get_backend(),
                                 "batch_size_per_process": req.batch_size,
                                 "global_batch_size": req.batch_size * env.world_size,
                                 "threads_per_process": torch.get_num_threads() if device.type == "cpu" else None}
    if main:
        write_json_atomic(out / "config.json", config)
        # Rank 0 reads, hashes and splits the data once; the others receive the result (identical by construction).
        prep = prepare_records(req.task, req.data, strategy, req.seed, req.fractions, req.conflict_policy,
                               req.female_class, req.male_class, log)
    prep = ddp.broadcast_object(prep if main else None)
    if main:
        _write_split_files(out, prep)
    counts = {s: int((prep.splits == s).sum()) for s in ("train", "val", "test")}
    log(f"split ({strategy}, seed {req.seed}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
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
    main = env is None or env.is_main
    kind = "face" if req.task == "age" else "eye"
    results = {}
    for arch in req.archs:
        head = head_of(arch, req.task)
        size = req.input_size or default_input_size(arch, req.task)
        # --max-images caps each split *before* cropping, so quick trials skip detection on the rest.
        use = np.sort(np.concatenate([_limit(np.flatnonzero(prep.splits == s), req.max_images, req.seed)
                                      for s in ("train", "val", "test")]))
        template = FACE_TEMPLATES[req.face_crop]
        eye_geometry = parse_eye_geometry(req.eye_crop)
        cs, pos = _shared_crops(prep, env, use, kind, size, workers=req.workers, desc=f"{kind} crops {size}px",
                                template=template, eye_geometry=eye_geometry)
        if cs.failures:
            log(f"{len(cs.failures)} images gave no crop (listed in {arch}/crop_failures.json), e.g. {cs.failures[:3]}")
        split_of = prep.splits[pos]
        idx = {s: np.flatnonzero(split_of == s) for s in ("train", "val", "test")}
        arch_dir = out / arch
        if main:
            arch_dir.mkdir(exist_ok=True)
            write_json_atomic(arch_dir / "crop_failures.json", cs.failures)
        log(f"[{arch}] {head} head, {size}px input, train {len(idx['train'])} / val {len(idx['val'])} / "
            f"test {len(idx['test'])} on {device}"
            + (f" x {env.world_size} processes (global batch {req.batch_size * env.world_size})" if env else ""))
        torch.manual_seed(req.seed)
        model = create_model(arch, req.task, pretrained=req.pretrained, frozen_blocks=req.frozen_blocks)
        if req.frozen_blocks:
            n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
            log(f"[{arch}] first {req.frozen_blocks} backbone blocks frozen ({n_frozen:,} parameters)")
        cfg = FitConfig(head=head, epochs=req.epochs, batch_size=req.batch_size, lr=req.lr, seed=req.seed,
                        patience=req.patience, max_steps_per_epoch=req.max_steps_per_epoch, ema_decay=req.ema_decay,
                        weight_decay=req.weight_decay, precision=req.precision, augment=AUGMENT_PRESETS[req.augment])
        y = prep.targets[pos]
        src = np.asarray(prep.sources)[pos]
        many = len(set(src.tolist())) > 1
        weights = None
        if req.balance == "source" and many:
            weights = balanced_weights(src[idx["train"]], y[idx["train"]], bin_width=5.0 if req.task == "age" else 0.0)
            log(f"[{arch}] sampling balanced by source within each {'5-year age bin' if req.task == 'age' else 'class'} "
                f"(weights {weights.min():.2f}-{weights.max():.2f}); validation: mean of the per-source scores")
        summary = fit(model, cs.crops[idx["train"]], y[idx["train"]], cs.crops[idx["val"]], y[idx["val"]], cfg,
                      arch_dir, device, resume=req.resume, log=log, train_weights=weights,
                      val_groups=src[idx["val"]] if many and req.balance == "source" else None)
        if not main:  # rank 0 calibrates, tests and writes the model; this rank's part is done
            continue
        tta = FlipAverage(model).eval()
        val_out = predict_outputs(tta, cs.crops[idx["val"]], device)
        meta = {
            "name": f"facelens-{req.task}-{arch}",
            "facelens_version": __version__,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "task": req.task,
            "arch": arch,
            "head": head,
            "input_size": size,
            "pipeline": PIPELINE_VERSION,
            "crop": asdict(template) if req.task == "age" else None,
            "eye_crop": asdict(eye_geometry) if req.task == "eyes" else None,
            "positive_class": "female" if req.task == "eyes" else None,
            "class_map": prep.class_map,
            "tta": "flip-average",
            "split": {"strategy": strategy, "seed": req.seed, "fractions": list(req.fractions),
                      "block_size": EYE_BLOCK_SIZE if strategy == "blocks" else None},
            "data": req.data,
            "layouts": prep.layouts,
            "counts": {k: len(v) for k, v in idx.items()},
            "training": summary | {"epochs_max": req.epochs, "batch_size": req.batch_size, "lr": req.lr,
                                   "device": str(device), "cpu": platform.processor() or platform.machine(),
                                   "threads": torch.get_num_threads(), "augment": req.augment,
                                   "balance": req.balance}
                                  | ({"world_size": env.world_size, "global_batch_size": req.batch_size * env.world_size}
                                     if env else {}),
        } | calibrate(head, val_out, y[idx["val"]], record_groups(req.task, prep, cs.crops[idx["val"]], pos[idx["val"]]).get(FACE_ID))
        test_out = predict_outputs(tta, cs.crops[idx["test"]], device, desc="test")
        groups = record_groups(req.task, prep, cs.crops[idx["test"]], pos[idx["test"]])
        metrics = compute_metrics(req.task, test_out, y[idx["test"]], meta, groups)
        meta["metrics"] = {"split": "test", **metrics}
        torch.save({"meta": meta, "state_dict": model.state_dict()}, arch_dir / "model.pt.tmp")
        os.replace(arch_dir / "model.pt.tmp", arch_dir / "model.pt")
        write_json_atomic(arch_dir / "metrics.json", meta["metrics"])
        write_json_atomic(arch_dir / "meta.json", meta)
        np.savez(arch_dir / "test_predictions.npz", outputs=test_out, y=y[idx["test"]],
                 paths=np.array([str(prep.records[i].path) for i in pos[idx["test"]]]))
        results[arch] = metrics
        log(f"[{arch}] test: " + headline(req.task, metrics))
    return results


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def headline(task: str, m: dict) -> str:
    """One line of the key test numbers (undefined metrics, e.g. R² of constant ages, show as n/a)."""
    if task == "age":
        s = f"MAE {_fmt(m['mae'], '.2f')}, RMSE {_fmt(m['rmse'], '.2f')}, R² {_fmt(m['r2'], '.3f')}, CS@5 {_fmt(m['cs5'], '.3f')}"
        if m.get("coverage") is not None:
            s += f", 80% interval coverage {m['coverage']:.3f}"
        for src, sm in m.get("by_source", {}).items():
            s += f" | {src}: MAE {_fmt(sm['mae'], '.2f')} RMSE {_fmt(sm['rmse'], '.2f')} R² {_fmt(sm['r2'], '.3f')}"
        return s
    return (f"accuracy {_fmt(m['accuracy'], '.4f')}, balanced {_fmt(m['balanced_accuracy'], '.4f')}, "
            f"ROC-AUC {_fmt(m['roc_auc'], '.4f')}, ECE {_fmt(m['ece'], '.4f')}")


def export_flags(meta: dict) -> list[str]:
    """``facelens export`` options that rebuild an exported variant described by its metadata."""
    flags = []
    if meta.get("tta") == "none":
        flags.append("--no-tta")
    if meta.get("precision") == "int8":
        flags.append("--int8")
    return flags


def reproduce_commands(cfg: dict, arch: str, shipped_as: str | None = None, shipped_meta: dict | None = None) -> list[str]:
    """The commands that rebuild a run's model (and its shipped export) from its saved config (for model cards).

    ``shipped_meta`` is the metadata of the model the card describes (its input size, export flags).
    """
    def rel(p: str) -> str:  # paths as a user in the repository root would type them
        return os.path.relpath(p) if os.path.isabs(p) else p

    data = " ".join(f"--data {rel(d)}" for d in cfg["data"])
    archs = " ".join(f"--arch {a}" for a in cfg["archs"])
    cmd = (f"facelens train {cfg['task']} {data} --out {rel(cfg['out'])} {archs} --epochs {cfg['epochs']} "
           f"--batch-size {cfg['batch_size']} --lr {cfg['lr']} --seed {cfg['seed']} --split {cfg['split_resolved']}")
    if cfg.get("patience") is not None:
        cmd += f" --patience {cfg['patience']}"
    # The model's own size, not the run's option: a run that left --input-size unset used the
    # default of its day, and the default may have changed since.
    size = (shipped_meta or {}).get("input_size") or cfg.get("input_size")
    if size:
        cmd += f" --input-size {size}"
    cmd += f" --ema-decay {cfg.get('ema_decay', 0.0)}"  # explicit: the default differs by task
    cmd += f" --frozen-blocks {cfg.get('frozen_blocks', 0)}"
    cmd += f" --weight-decay {cfg.get('weight_decay', 1e-4)} --precision {cfg.get('precision', 'fp32')}"
    if cfg["task"] == "age":
        cmd += f" --face-crop {cfg.get('face_crop', 'loose')}"
    else:
        cmd += f" --eye-crop {cfg.get('eye_crop', 'tight')}"
    cmd += f" --augment {cfg.get('augment', 'basic')} --balance {cfg.get('balance', 'none')}"
    world = (cfg.get("distributed") or {}).get("world_size", 1)
    if world > 1:  # the same global batch and shards on one machine (a multi-machine run included)
        cmd += f" --nproc-per-node {world}"
    cmds = [cmd]
    model = f"{rel(cfg['out'])}/{arch}/model.pt"
    if shipped_as:
        flags = export_flags(shipped_meta or {})
        flags += [f"--data {rel(d)}" for d in (shipped_meta or {}).get("export", {}).get("data", [])]
        cmds.append(" ".join([f"facelens export --model {model} --out models/{shipped_as}", *flags]))
        cmds.append(f"facelens evaluate {cfg['task']} --model models/{shipped_as} {data} --split test")
    else:
        cmds.append(f"facelens evaluate {cfg['task']} --model {model} {data} --split test")
    return cmds
