"""Data hygiene before training: unreadable files, byte duplicates, conflicting labels, ranges.

Real datasets are dirty (see ../shared/data/README.md): UTKFace has ~390 byte-identical
copies, some carrying different ages; "20-50" has copies under two age folders. Training on
them silently would leak copies across the split and teach contradictions, so every
problem is counted, listed in the report, and resolved by an explicit policy.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from facelens.data.noise import duplicate_label_noise
from facelens.data.readers import Record
from facelens.tasks import AGE_RANGE

CONFLICT_POLICIES = ("drop", "keep-first", "keep-all")


@dataclass
class HygieneReport:
    kept: list[Record]
    digests: dict[Path, str]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    exact_duplicates: int = 0  # extra copies removed that agreed on the label
    conflict_groups: list[list[Record]] = field(default_factory=list)
    conflicts_dropped: int = 0
    out_of_range: list[tuple[Path, float]] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    label_range: tuple[float, float] | None = None
    copy_label_noise: dict | None = None  # age: label spread among copies of one photo (label noise)

    def summary(self) -> dict:
        return {
            "kept": len(self.kept),
            "unreadable": len(self.unreadable),
            "exact_duplicates_removed": self.exact_duplicates,
            "conflicting_duplicate_groups": len(self.conflict_groups),
            "conflicting_records_dropped": self.conflicts_dropped,
            "out_of_range": len(self.out_of_range),
            "label_range": list(self.label_range) if self.label_range else None,
            "label_counts": self.label_counts,
            "copy_label_noise": self.copy_label_noise,
        }

    def lines(self) -> list[str]:
        s = self.summary()
        out = [
            f"kept {s['kept']} images",
            f"unreadable: {s['unreadable']} (skipped)" + "".join(f"\n  - {p}: {why}" for p, why in self.unreadable[:20]),
            f"exact byte duplicates removed (same label): {s['exact_duplicates_removed']}",
            f"duplicate groups with conflicting labels: {s['conflicting_duplicate_groups']} "
            f"({s['conflicting_records_dropped']} images dropped)",
            f"labels out of range: {s['out_of_range']}" + "".join(f"\n  - {p}: {v}" for p, v in self.out_of_range[:20]),
        ]
        noise = self.copy_label_noise
        if noise and noise["noise_std"] is not None:
            out.append(f"label spread among copies of one photo: std {noise['noise_std']:.1f} years "
                       f"[90%: {noise['low']:.1f}, {noise['high']:.1f}] over {noise['groups']} groups "
                       "(copies of one photo should agree: a sign of label noise, see benchmarks/label_noise.py)")
        if self.label_range:
            out.append(f"label range: {self.label_range[0]:g} .. {self.label_range[1]:g}")
        if self.label_counts:
            out.append("classes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.label_counts.items())))
        return out


def content_digest(data: bytes) -> str:
    """The identity of an image's bytes: duplicates, splits and the crop cache are keyed on it."""
    return hashlib.sha1(data).hexdigest()


def file_digest(path: Path) -> str:
    return content_digest(path.read_bytes())


def _read(path: Path) -> tuple[bytes | None, str | None]:
    """(bytes, None) for a usable image, else (None, reason): one read serves the check and the digest."""
    if not path.exists():
        return None, "file does not exist"
    try:
        data = path.read_bytes()
    except OSError as exc:  # a folder named like an image, no permission...
        return None, f"cannot be read ({exc.strerror or exc})"
    problem = _quick_check(data)
    return (None, problem) if problem else (data, None)


def _quick_check(data: bytes) -> str | None:
    """Cheap header check; full decoding happens when crops are built.

    PIL's ``verify`` reads a JPEG's headers only, so a file cut short passes it; the missing
    end-of-image marker gives it away without decoding (all 37,357 JPEGs in ../shared/data end with one).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if not data:
            return "file is empty (0 bytes)"
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG" and b"\xff\xd9" not in data[-64:].rstrip(b"\x00\r\n "):
            return "truncated JPEG (no end-of-image marker: the file was cut short)"
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Exception as exc:  # noqa: BLE001 - any decoder complaint means unusable
        return f"damaged image data ({exc})"
    return None


def check_hygiene(
    records: list[Record], policy: str = "drop", age_range: tuple[float, float] | None = AGE_RANGE
) -> HygieneReport:
    """Apply the hygiene rules and return what is kept plus a report of the rest.

    ``age_range`` is None for classification tasks. ``policy`` decides duplicate groups whose
    copies disagree on the label: drop them all (default: we cannot know which is right),
    keep the first, or keep all.
    """
    if policy not in CONFLICT_POLICIES:
        raise ValueError(f"conflict policy must be one of {CONFLICT_POLICIES}, got {policy!r}")
    report = HygieneReport(kept=[], digests={})
    readable: list[Record] = []
    for r in records:
        data, problem = _read(r.path)
        if problem:
            report.unreadable.append((r.path, problem))
            continue
        if age_range is not None:
            age = float(r.label)
            if not (age_range[0] <= age <= age_range[1]):
                report.out_of_range.append((r.path, age))
                continue
        report.digests[r.path] = content_digest(data)
        readable.append(r)
    by_digest: dict[str, list[Record]] = defaultdict(list)
    for r in readable:
        by_digest[report.digests[r.path]].append(r)
    for group in by_digest.values():
        labels = {(r.label, r.meta) for r in group}
        if len(labels) == 1:
            report.kept.append(group[0])
            report.exact_duplicates += len(group) - 1
            continue
        report.conflict_groups.append(group)
        if policy == "keep-first":
            report.kept.append(group[0])
            report.conflicts_dropped += len(group) - 1
        elif policy == "keep-all":
            report.kept.extend(group)
        else:
            report.conflicts_dropped += len(group)
    report.kept.sort(key=lambda r: str(r.path))
    if age_range is not None:
        report.copy_label_noise = duplicate_label_noise([float(r.label) for r in g] for g in by_digest.values())
    if age_range is not None and report.kept:
        ages = [float(r.label) for r in report.kept]
        report.label_range = (min(ages), max(ages))
    elif report.kept:
        counts: dict[str, int] = defaultdict(int)
        for r in report.kept:
            counts[str(r.label)] += 1
        report.label_counts = dict(counts)
    return report
