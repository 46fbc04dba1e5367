"""Dataset readers: folder-per-label, UTKFace file names, CSV manifests -> one list of Records.

The layout is detected, not configured, and reported (``Dataset.layout``), because users
point facelens at whatever folder they downloaded. Files a reader cannot label are listed
in ``Dataset.skipped`` with the reason instead of silently disappearing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from facelens.errors import DatasetError
from facelens.images import IMAGE_SUFFIXES
from facelens.tasks import AGE_RANGE as AGE_RANGE  # re-exported: the range is the age task's (facelens.tasks)
from facelens.tasks import TaskSpec, task_spec

#: UTKFace: <age>_<gender>_<race>_<date>.jpg.chip.jpg; race and the '.' before jpg are
#: sometimes missing (see ../shared/data/README.md), so both are optional here. The race is a
#: single digit: without ``(?!\d)`` a missing race would be read from the date's first digit.
UTKFACE_NAME = re.compile(r"^(?P<age>\d{1,3})_(?P<gender>[01])(?!\d)(?:_(?P<race>[0-4])(?!\d))?(?:_(?P<date>\d+))?")
UTK_GENDER = {"0": "male", "1": "female"}
UTK_RACE = {"0": "white", "1": "black", "2": "asian", "3": "indian", "4": "other"}


@dataclass(frozen=True)
class Record:
    """One labelled image. ``label`` is an age (float) or a class name; ``group`` keeps
    images of one person (or one block of consecutive files) on the same side of a split."""

    path: Path
    label: float | str
    group: str | None = None
    meta: tuple[tuple[str, str], ...] = ()

    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)


@dataclass
class Dataset:
    records: list[Record]
    layout: str
    root: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: Whole faces labelled with sex, read for the eye task: each face gives two eye crops, cut by the
    #: prediction pipeline (``facelens.data.crops``), so the eye model learns the crops ``predict`` makes.
    faces: bool = False

    def __len__(self) -> int:
        return len(self.records)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if _is_image(p) or p.name.lower().endswith(".jpg.chip.jpg"))


def parse_utkface_name(name: str) -> dict[str, str] | None:
    """Parse a UTKFace file name into age/gender/race strings, or None if it is not one."""
    m = UTKFACE_NAME.match(name)
    if not m:
        return None
    out = {"age": m["age"], "gender": UTK_GENDER[m["gender"]]}
    if m["race"] is not None:
        out["race"] = UTK_RACE[m["race"]]
    return out


def _parse_age(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_utkface(root: Path, label: str = "age") -> Dataset:
    """UTKFace file names; ``label`` 'age' (a number) or 'gender' (for the eye task: faces labelled by sex)."""
    records, skipped = [], []
    for p in _image_files(root):
        info = parse_utkface_name(p.name)
        if info is None:
            skipped.append((p, "file name does not follow <age>_<gender>_<race>_<date>.jpg"))
            continue
        meta = tuple(sorted((k, v) for k, v in info.items() if k != label))
        records.append(Record(p, float(info["age"]) if label == "age" else info[label], None, meta))
    if label == "age":
        return Dataset(records, "utkface-names", root, skipped)
    return Dataset(records, "utkface-names (faces; both eyes cut from each)", root, skipped, faces=True)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and any(_is_image(f) for f in d.iterdir()))


def _split_dirs(root: Path) -> list[Path]:
    """``train/``, ``val/``, ``test/`` style subfolders (as faces-20-50, the age seed project's data, ships)."""
    names = {"train", "training", "val", "valid", "validation", "test", "testing"}
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in names)


def read_folder_per_label(root: Path, numeric: bool) -> Dataset:
    """``<root>/<label>/*.jpg`` (also ``<root>/{train,test}/<label>/*.jpg``)."""
    parents = _split_dirs(root) or [root]
    records, skipped = [], []
    for parent in parents:
        for d in _class_dirs(parent):
            label: float | str | None = _parse_age(d.name) if numeric else d.name
            for p in sorted(f for f in d.iterdir() if f.is_file()):
                if not _is_image(p):
                    skipped.append((p, "not an image file name"))
                    continue
                if label is None:
                    skipped.append((p, f"folder name {d.name!r} is not an age"))
                    continue
                records.append(Record(p, label, None, (("split_dir", parent.name),) if parent != root else ()))
    layout = "folder-per-age" if numeric else "folder-per-class"
    if parents != [root]:
        layout += f" (nested: {', '.join(d.name for d in parents)})"
    return Dataset(records, layout, root, skipped)


def read_csv_manifest(csv_path: Path, label_column: str) -> Dataset:
    """CSV with a header: ``path,<label_column>[,group][,any other columns kept as meta]``.

    Relative paths are resolved against the CSV's folder.
    """
    base = csv_path.parent
    records, skipped = [], []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or label_column not in cols:
            raise DatasetError(f"{csv_path}: a manifest needs the columns 'path' and '{label_column}', found {cols}")
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            p = Path(row["path"])
            p = p if p.is_absolute() else base / p
            raw = row[label_column]
            label: float | str | None = _parse_age(raw) if label_column == "age" else (raw or None)
            if label is None:
                skipped.append((p, f"line {i}: label {raw!r} is not usable"))
                continue
            meta = tuple(sorted((k, v) for k, v in row.items() if k not in ("path", label_column, "group") and v))
            records.append(Record(p, label, row.get("group") or None, meta))
    return Dataset(records, "csv-manifest", csv_path, skipped)


def _is_manifest(csv_path: Path, label_column: str) -> bool:
    """True when the CSV's header has the manifest columns ``path`` and ``label_column``."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return False
    cols = {c.strip() for c in header}
    return "path" in cols and label_column in cols


def broken_links(root: Path) -> list[tuple[Path, str]]:
    """Image-named symbolic links under ``root`` that lead nowhere (dangling) or in a circle (loop)."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_symlink() and not p.exists():
            try:
                p.resolve(strict=True)
                why = "symbolic link cannot be followed"
            except RuntimeError:
                why = "symbolic link loop"
            except OSError as exc:
                why = "symbolic link loop" if "loop" in str(exc).lower() else "broken symbolic link (its target is missing)"
            out.append((p, why))
    return out


def read_dataset(source: str | Path, task: str) -> Dataset:
    """Read ``source`` for ``task`` ('age' or 'eyes'), detecting the layout.

    Detection order: a ``.csv`` file is a manifest; a folder whose image names parse as
    UTKFace is UTKFace; a folder of label folders is folder-per-label. Broken symbolic links
    and link loops under a folder are listed in ``skipped`` (they used to vanish unreported).
    """
    ds = _read_dataset(source, task)
    if Path(source).is_dir():
        ds.skipped.extend(broken_links(Path(source)))
    return ds


def _read_dataset(source: str | Path, task: str) -> Dataset:
    spec = task_spec(task)
    root = Path(source)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    label_column = spec.label_column
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: a dataset is a folder or a .csv manifest")
        return _faces_to_cut_or(read_csv_manifest, root, spec)
    manifests = sorted(root.glob("*.csv"))
    direct = [p for p in root.iterdir() if _is_image(p)]
    if direct:
        utk = sum(parse_utkface_name(p.name) is not None for p in direct[:200])
        if utk >= 0.5 * min(len(direct), 200):
            return read_utkface(root, spec.face_label_column)
    # A manifest next to an image subfolder (``labels.csv`` + ``images/``) must win over
    # folder-per-label, which would take "images" for a label; a stray CSV without the
    # manifest columns does not count.
    if len(manifests) == 1 and _is_manifest(manifests[0], label_column):
        return read_csv_manifest(manifests[0], label_column)
    if spec.crops_from_faces and len(manifests) == 1 and _is_manifest(manifests[0], spec.face_label_column):
        return _faces_to_cut_or(read_csv_manifest, manifests[0], spec)
    if _class_dirs(root) or any(_class_dirs(d) for d in _split_dirs(root)):
        return read_folder_per_label(root, numeric=spec.numeric_labels)
    if len(manifests) == 1:
        return read_csv_manifest(manifests[0], label_column)
    if not _image_files(root):
        raise DatasetError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    raise DatasetError(
        f"{root}: cannot tell the layout. Use <root>/<label>/*.jpg folders, UTKFace names "
        f"(<age>_<gender>_<race>_<date>.jpg), or a CSV manifest with 'path,{label_column}' columns"
    )


def _faces_to_cut_or(reader, csv_path: Path, spec: TaskSpec) -> Dataset:
    """A CSV manifest: for a task cutting its crops from faces (eyes), one with the face label column
    (``gender``) and not the task's own (``label``) is a face set."""
    if (spec.crops_from_faces and not _is_manifest(csv_path, spec.label_column)
            and _is_manifest(csv_path, spec.face_label_column)):
        ds = reader(csv_path, spec.face_label_column)
        ds.layout, ds.faces = "csv-manifest (faces; both eyes cut from each)", True
        return ds
    return reader(csv_path, spec.label_column)


def concat(datasets: Iterable[Dataset]) -> Dataset:
    ds = list(datasets)
    records = [r for d in ds for r in d.records]
    skipped = [s for d in ds for s in d.skipped]
    return Dataset(records, " + ".join(d.layout for d in ds), ds[0].root if ds else Path("."), skipped)
