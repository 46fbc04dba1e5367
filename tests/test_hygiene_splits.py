"""Hygiene (unreadable files, duplicates, conflicting labels, ranges) and seeded content-addressed splits."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from facelens.data.hygiene import check_hygiene, file_digest
from facelens.data.readers import Record
from facelens.data.splits import (
    EYE_BLOCK_SIZE,
    SPLITS,
    assign_split,
    block_group,
    random_group,
    unit_hash,
)

# ---------------------------------------------------------------- hygiene


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def test_duplicates_with_equal_labels_collapse(tmp_path, write_jpeg):
    a = write_jpeg(tmp_path / "30" / "a.jpg", seed=1)
    a_copy = _copy(a, tmp_path / "30" / "a_copy.jpg")
    b = write_jpeg(tmp_path / "30" / "b.jpg", seed=2)
    report = check_hygiene([Record(a, 30.0), Record(a_copy, 30.0), Record(b, 30.0)])
    assert report.exact_duplicates == 1
    assert len(report.kept) == 2
    assert b in {r.path for r in report.kept}
    assert len({r.path for r in report.kept} & {a, a_copy}) == 1
    assert report.conflict_groups == [] and report.conflicts_dropped == 0
    assert report.digests[a] == report.digests[a_copy] != report.digests[b]
    assert report.summary()["exact_duplicates_removed"] == 1
    assert report.copy_label_noise["noise_std"] == 0.0  # copies that agree: no label noise seen


def _conflict_records(tmp_path, write_jpeg) -> tuple[list[Record], Record]:
    img = write_jpeg(tmp_path / "20" / "x.jpg", seed=5)
    copy = _copy(img, tmp_path / "41" / "x.jpg")
    other = Record(write_jpeg(tmp_path / "33" / "y.jpg", seed=6), 33.0)
    return [Record(img, 20.0), Record(copy, 41.0), other], other


def test_conflicting_labels_dropped_by_default(tmp_path, write_jpeg):
    records, other = _conflict_records(tmp_path, write_jpeg)
    report = check_hygiene(records)
    assert report.kept == [other]
    assert report.conflicts_dropped == 2
    assert len(report.conflict_groups) == 1
    assert {r.label for r in report.conflict_groups[0]} == {20.0, 41.0}
    assert report.exact_duplicates == 0
    assert any("conflicting" in line and "2 images dropped" in line for line in report.lines())
    # one photo filed as 20 and as 41: a label spread of std sqrt(2 * 10.5^2) = 14.85 years
    assert report.copy_label_noise["noise_std"] == pytest.approx(14.849, abs=1e-3)
    assert report.summary()["copy_label_noise"]["groups"] == 1
    assert any("label spread among copies" in line and "14.8" in line for line in report.lines())


def test_conflicting_labels_keep_first(tmp_path, write_jpeg):
    records, other = _conflict_records(tmp_path, write_jpeg)
    report = check_hygiene(records, policy="keep-first")
    assert report.kept == sorted([records[0], other], key=lambda r: str(r.path))
    assert report.conflicts_dropped == 1
    assert len(report.conflict_groups) == 1


def test_conflicting_labels_keep_all(tmp_path, write_jpeg):
    records, _ = _conflict_records(tmp_path, write_jpeg)
    report = check_hygiene(records, policy="keep-all")
    assert len(report.kept) == 3 and report.conflicts_dropped == 0 and len(report.conflict_groups) == 1


def test_same_age_different_gender_is_a_conflict(tmp_path, write_jpeg):
    img = write_jpeg(tmp_path / "a.jpg", seed=7)
    copy = _copy(img, tmp_path / "b.jpg")
    report = check_hygiene([Record(img, 30.0, meta=(("gender", "male"),)), Record(copy, 30.0, meta=(("gender", "female"),))])
    assert report.kept == [] and len(report.conflict_groups) == 1


def test_unknown_policy_rejected():
    with pytest.raises(ValueError, match="policy"):
        check_hygiene([], policy="keep-best")


def test_unreadable_files_reported_and_skipped(tmp_path, write_jpeg):
    good = write_jpeg(tmp_path / "good.jpg", seed=1)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("hello, I am not a JPEG")
    missing = tmp_path / "missing.jpg"
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])  # headers intact, scan cut short
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(write_jpeg(tmp_path / "p.jpg", seed=2).read_bytes() + b"\x00" * 16)  # legal trailing padding
    report = check_hygiene([Record(p, 25.0) for p in (good, empty, text, missing, truncated, padded)])
    assert [r.path for r in report.kept] == [good, padded]
    reasons = dict(report.unreadable)
    assert set(reasons) == {empty, text, missing, truncated}
    assert "empty" in reasons[empty]
    assert "not a recognised image" in reasons[text]
    assert "does not exist" in reasons[missing]
    assert "truncated JPEG" in reasons[truncated]
    text_report = "\n".join(report.lines())
    assert "unreadable: 4" in text_report and "text.jpg" in text_report


def test_ages_out_of_range(tmp_path, write_jpeg):
    records = [Record(write_jpeg(tmp_path / f"{i}.jpg", seed=i), age) for i, age in enumerate([-1.0, 0.0, 45.0, 120.0, 130.0])]
    report = check_hygiene(records)
    assert sorted(age for _, age in report.out_of_range) == [-1.0, 130.0]
    assert sorted(r.label for r in report.kept) == [0.0, 45.0, 120.0]
    assert report.label_range == (0.0, 120.0)
    narrow = check_hygiene(records, age_range=(20.0, 50.0))
    assert [r.label for r in narrow.kept] == [45.0]


def test_class_labels_counted(tmp_path, write_jpeg):
    records = [Record(write_jpeg(tmp_path / f"{i}.jpg", seed=i), lab) for i, lab in enumerate(["f", "f", "m"])]
    report = check_hygiene(records, age_range=None)
    assert report.label_counts == {"f": 2, "m": 1}
    assert report.label_range is None
    assert any(line == "classes: f=2, m=1" for line in report.lines())


# ---------------------------------------------------------------- splits


def test_unit_hash_range_and_determinism():
    values = [unit_hash(f"k{i}", 3) for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [unit_hash(f"k{i}", 3) for i in range(1000)]


def test_assign_split_deterministic_and_seed_dependent():
    keys = [f"key-{i}" for i in range(1000)]
    first = [assign_split(k, 7) for k in keys]
    assert first == [assign_split(k, 7) for k in keys]
    other_seed = [assign_split(k, 8) for k in keys]
    changed = sum(a != b for a, b in zip(first, other_seed, strict=True))
    # Two independent 75/10/15 draws disagree with probability 1 - (.75^2 + .1^2 + .15^2) = 0.4075.
    assert 300 < changed < 520


@pytest.mark.parametrize("fractions", [(0.75, 0.10, 0.15), (0.6, 0.2, 0.2), (0.5, 0.0, 0.5)])
def test_assign_split_fractions(fractions):
    counts = Counter(assign_split(f"file-{i}.jpg", 42, fractions) for i in range(10_000))
    for name, frac in zip(SPLITS, fractions, strict=True):
        assert abs(counts[name] / 10_000 - frac) < 0.015, (name, counts)


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5, 0.5, -0.5)])
def test_assign_split_invalid_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        assign_split("a", 0, fractions)


def test_identical_content_lands_together(tmp_path, write_jpeg):
    """Content-addressed keys: byte copies under any name or folder share a split for every seed."""
    a = write_jpeg(tmp_path / "20" / "a.jpg", seed=3)
    b = _copy(a, tmp_path / "45" / "renamed.jpg")
    assert file_digest(a) == file_digest(b)
    for seed in range(50):
        assert assign_split(file_digest(a), seed) == assign_split(file_digest(b), seed)


def test_block_group_consecutive_numbers():
    assert block_group(Path("eyes/femaleeyes/0.jpg")) == "femaleeyes/0"
    assert block_group(Path("eyes/femaleeyes/49.jpg")) == "femaleeyes/0"
    assert block_group(Path("eyes/femaleeyes/50.jpg")) == "femaleeyes/1"
    assert block_group(Path("eyes/maleeyes/49.jpg")) == "maleeyes/0"  # folders never share a block
    assert block_group(Path("eyes/femaleeyes/img_0123.jpg"), block_size=10) == "femaleeyes/12"
    assert block_group(Path("eyes/femaleeyes/left.jpg")) is None


def test_eye_blocks_never_straddle_a_split():
    """2000 numbered eye files per folder: every block sits on one side, and neighbours rarely part."""
    paths = [Path("eyes") / folder / f"{n}.jpg" for folder in ("femaleeyes", "maleeyes") for n in range(1, 2001)]
    side_of: dict[Path, str] = {}
    sides_per_block: dict[str, set[str]] = defaultdict(set)
    members: Counter[str] = Counter()
    for p in paths:
        group = block_group(p)
        side_of[p] = assign_split(group, seed=11)
        sides_per_block[group].add(side_of[p])
        members[group] += 1
    assert all(len(s) == 1 for s in sides_per_block.values())
    assert max(members.values()) == EYE_BLOCK_SIZE
    assert len({side for s in sides_per_block.values() for side in s}) == 3  # all three splits used

    def neighbours_apart(side: dict[Path, str]) -> float:
        pairs = [(p, p.with_name(f"{int(p.stem) + 1}.jpg")) for p in paths if int(p.stem) < 2000]
        return sum(side[a] != side[b] for a, b in pairs) / len(pairs)

    # Only pairs across a block boundary can part: at most 1 in EYE_BLOCK_SIZE.
    assert neighbours_apart(side_of) <= 1 / EYE_BLOCK_SIZE
    # A per-file random split (the leaky baseline) parts ~40% of neighbouring files.
    random_side = {p: assign_split(random_group(p), seed=11) for p in paths}
    assert neighbours_apart(random_side) > 0.3
