"""Seeded, content-addressed splits.

Each record goes to train/val/test by hashing its *split key* with the seed. The key is the
record's group when it has one (a person, or a block of consecutive eye-crop numbers) and
the SHA-1 of its bytes otherwise. Consequences, all wanted:
- the split of a file never depends on which other files are present, so ``evaluate`` can
  recompute a run's test split from the dataset folder and the seed alone;
- byte-identical copies always land on the same side (no copy leaks into the test split);
- a group is never on both sides.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.75, 0.10, 0.15)
#: Eye crops: consecutive file numbers are often the two eyes of one person, so blocks of
#: this many numbers form one group. 50 keeps boundary straddlers (the only possible
#: leak) to about 1 pair in 50.
EYE_BLOCK_SIZE = 50


def unit_hash(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) from a key and a seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """'train', 'val' or 'test' for one split key."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    u = unit_hash(key, seed)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


_NUMBER = re.compile(r"(\d+)")


def block_group(path: Path, block_size: int = EYE_BLOCK_SIZE) -> str | None:
    """Group key for a numbered file: '<folder>/<number // block_size>', None if unnumbered."""
    m = _NUMBER.search(Path(path).stem)
    if not m:
        return None
    return f"{Path(path).parent.name}/{int(m.group(1)) // block_size}"


def random_group(path: Path) -> str:
    """Group key for an ungrouped random split: the file itself.

    This is the per-file split the seed projects (the student baselines) used; it is kept so
    their leak (crops of one person, such as their two eyes, on both sides of the split) can be measured.
    """
    return f"file:{Path(path).parent.name}/{Path(path).name}"
