"""``fileio.atomic_write_with``: files written by a library that wants a path (``torch.save``) appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facelens.fileio import atomic_write_with
from facelens.models.checkpoint import load_checkpoint


def test_atomic_write_with_moves_the_written_file_into_place(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"
    assert atomic_write_with(path, lambda tmp: torch.save({"meta": {"a": 1}, "w": torch.ones(2)}, tmp)) == path
    assert load_checkpoint(path)["meta"] == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_with(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
