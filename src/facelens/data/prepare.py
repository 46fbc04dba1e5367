"""Read, clean and split datasets the one way training and evaluation share.

``prepare_records`` turns dataset folders or manifests into labelled records, runs the hygiene
checks, maps class names (eyes), cuts whole faces into two eye records, and assigns each record its
content-addressed split. Why here, in ``data/``, and not in the training runner: evaluation and
export rebuild a model's split with the very same code, and must not import training to do so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelens.data.crops import CropSet, build_crops
from facelens.data.hygiene import check_hygiene
from facelens.data.readers import Dataset, Record, read_dataset
from facelens.data.splits import EYE_BLOCK_SIZE, assign_split, block_group, random_group
from facelens.errors import DatasetError
from facelens.face.align import AGE_TEMPLATE, DEFAULT_EYE_GEOMETRY, EyeGeometry, FaceTemplate, eye_geometry_from_meta
from facelens.models.meta import ModelMeta
from facelens.tasks import task_spec

#: The crops a whole face gives an eye task by default: the person's own left and right eye.
EYE_SIDES = ("left", "right")

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
        return task_spec(task).default_split
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
              eye_geometry: EyeGeometry = DEFAULT_EYE_GEOMETRY) -> tuple[CropSet, np.ndarray]:
        """Aligned crops of the records at ``indices`` (cached by content digest) and the record
        position of each crop; images that gave none are missing and listed in ``failures``."""
        indices = np.asarray(indices)
        sides = [self.records[i].meta_dict().get("eye_side") for i in indices] if kind == "eye" else None
        cs = build_crops([self.records[i].path for i in indices], [self.digests[i] for i in indices], kind, size,
                         workers=workers, desc=desc or f"{kind} crops", template=template, sides=sides,
                         eye_geometry=eye_geometry)
        return cs, indices[cs.index]

    def model_crops(self, indices: np.ndarray, meta: ModelMeta | dict, desc: str | None = None
                    ) -> tuple[CropSet, np.ndarray]:
        """``crops`` as the model described by ``meta`` sees them (its crop kind, size, face template, eye geometry)."""
        m = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
        return self.crops(indices, m.spec.crop_kind, m.input_size, desc=desc, template=FaceTemplate.from_meta(m.crop),
                          eye_geometry=eye_geometry_from_meta(m.eye_crop))


def model_eye_sides(meta: ModelMeta) -> tuple[str, ...]:
    """The crops each whole face gives the model described by ``meta``: its two eyes, or one of both eyes."""
    return eye_geometry_from_meta(meta.eye_crop).sides if meta.spec.crops_from_faces else EYE_SIDES


def prepare_as_model(meta: ModelMeta | dict, data: list[str], log=print) -> PreparedData:
    """``prepare_records`` with the split, class names and eye crops the model described by ``meta`` was trained
    with: evaluation, export and the benchmarks rebuild its very split from this."""
    m = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
    if not m.split:
        raise ValueError(f"model {m.name!r} records no split (meta['split']): cannot rebuild its test split")
    classes = {v: k for k, v in (m.class_map or {}).items()}
    return prepare_records(m.task, data, m.split["strategy"], m.split["seed"], tuple(m.split["fractions"]), log=log,
                           female=classes.get(1), male=classes.get(0), eye_sides=model_eye_sides(m))


def source_name(data: str | Path) -> str:
    """The name a dataset goes by in per-source metrics: its folder (or CSV) name, or the parent's
    for a ``train``/``test`` split folder (``faces-20-50/train`` -> ``faces-20-50``)."""
    p = Path(data)
    if p.suffix.lower() == ".csv":
        p = p.with_suffix("")
    return p.parent.name if p.name in ("train", "test") else p.name


def prepare_records(task: str, data: list[str], strategy: str, seed: int, fractions, policy: str = "drop",
                    female: str | None = None, male: str | None = None, log=print,
                    eye_sides: tuple[str, ...] = EYE_SIDES) -> PreparedData:
    """Read, clean and split datasets exactly as training does (``evaluate`` reuses this).

    ``eye_sides``: the crops each whole face of an eye task gives (``EyeGeometry.sides``): its two eyes, or
    ``("both",)`` for a model of both eyes, which cannot read ready-cut single-eye crops (refused, naming the set).
    """
    spec = task_spec(task)
    datasets: list[Dataset] = [read_dataset(d, task) for d in data]
    records, sources = [], {}
    face_files = {r.path for ds in datasets if ds.faces for r in ds.records}
    for d, ds in zip(data, datasets, strict=True):
        if spec.crops_from_faces and tuple(eye_sides) == ("both",) and not ds.faces:
            raise DatasetError(f"{d}: holds ready-cut single-eye crops ({ds.layout}); a model of both eyes "
                               "(--eye-crop both) is trained and evaluated on whole faces (UTKFace names, a CSV of faces)")
        log(f"{d}: {ds.layout} layout, {len(ds)} labelled images" + (f", {len(ds.skipped)} skipped" if ds.skipped else ""))
        for path, why in ds.skipped[:10]:
            log(f"  skipped {path}: {why}")
        for r in ds.records:
            sources[r.path] = source_name(d)
        records.extend(ds.records)
    if not records:
        raise DatasetError(f"no labelled images in {', '.join(data)}")
    report = check_hygiene(records, policy, spec.label_range)
    log("data hygiene:\n  " + "\n  ".join(report.lines()))
    kept = report.kept
    if not kept:
        raise DatasetError("no usable images left after the hygiene checks")
    class_map = None
    digests = [report.digests[r.path] for r in kept]
    if not spec.numeric_labels:
        crops_only = {str(r.label) for r in kept if r.path not in face_files}
        class_map = map_sex_classes(crops_only, female, male) if crops_only else None
        if class_map:
            log("classes: " + ", ".join(f"{n} -> {'female' if v else 'male'}" for n, v in sorted(class_map.items())))
    if spec.crops_from_faces:
        kept, digests = expand_faces_to_eyes(kept, digests, face_files, eye_sides)
    if spec.numeric_labels:
        targets = np.array([float(r.label) for r in kept], dtype=np.float32)
    else:
        targets = _class_targets(kept, face_files, class_map)
    splits = np.array([assign_split(split_key(task, strategy, r, dg), seed, fractions) for r, dg in zip(kept, digests, strict=True)])
    hygiene = report.summary() | {
        "unreadable_files": [[str(p), w] for p, w in report.unreadable],
        "out_of_range_files": [[str(p), v] for p, v in report.out_of_range],
        "conflicting_groups": [[str(r.path) for r in g] for g in report.conflict_groups],
    }
    return PreparedData(kept, digests, [sources[r.path] for r in kept], splits, targets, class_map, hygiene,
                        [ds.layout for ds in datasets])


def _class_targets(records: list[Record], face_files: set[Path], class_map: dict[str, int] | None) -> np.ndarray:
    """1 (female) / 0 (male) per record: whole faces by their gender label, crops by their class folder.

    The one label mapping a classification task has today (sex); a task with other classes needs its own.
    """
    return np.array([sex_of_face(r) if r.path in face_files else class_map[str(r.label)] for r in records],
                    dtype=np.float32)



def expand_faces_to_eyes(records: list[Record], digests: list[str], face_files: set[Path],
                         sides: tuple[str, ...] = EYE_SIDES) -> tuple[list[Record], list[str]]:
    """Each whole-face record becomes one eye record per side (``eye_side`` left / right, or both), with the
    face's digest: the split key of each is the face's content (``split_key``), so the two eyes of a face and
    every byte copy of it stay on one side of the split, the same side as in the age task."""
    out_r, out_d = [], []
    for r, d in zip(records, digests, strict=True):
        if r.path not in face_files:
            out_r.append(r)
            out_d.append(d)
            continue
        for side in sides:
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
