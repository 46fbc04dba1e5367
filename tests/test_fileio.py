"""Atomic writes (``facelens.fileio.atomic_path``) and every writer built on it.

What they promise: a writer that fails leaves neither a half-written target nor a temporary file
behind, and a target that existed before is kept as it was.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from facelens.data import crops
from facelens.fileio import atomic_path, atomic_write_with, new_file_mode, write_bytes_atomic
from facelens.models.checkpoint import load_checkpoint
from facelens.train.checkpoint import save_checkpoint


class Boom(Exception):
    pass


def test_atomic_path_moves_the_file_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing visible before the block succeeds
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_a_failing_writer_leaves_no_target_and_no_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_a_failing_writer_keeps_the_existing_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_mode_is_set_before_the_file_appears(tmp_path):
    target = write_bytes_atomic(tmp_path / "shared.txt", b"x", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_checkpoint_save_failure_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint(path, {"step": torch.tensor(2), "bad": lambda: None})
    assert int(load_checkpoint(path)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_crop_cache_save_failure_keeps_the_previous_cache(tmp_path, monkeypatch):
    path = tmp_path / "crops.npz"
    crops._save_npz(path, a=np.arange(3))
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["crops.npz"]  # no ".npz" added twice

    def broken_savez(fh, **arrays):
        fh.write(b"PK half an archive")
        raise Boom

    monkeypatch.setattr(crops.np, "savez", broken_savez)
    with pytest.raises(Boom):
        crops._save_npz(path, a=np.arange(5))
    with np.load(path) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["crops.npz"]


def test_crop_cache_round_trip_through_the_atomic_writer(tmp_path, write_jpeg):
    """Ready-cut eye crops (no detection): the cache is written once, under its own name, and read back."""
    paths = [write_jpeg(tmp_path / "eyes" / f"{i}.jpg", seed=i, size=40) for i in range(3)]
    first = crops.build_crops(paths, ["a", "b", "c"], "eye", 32, cache_dir=tmp_path / "cache", workers=1)
    written = sorted((tmp_path / "cache" / "crops").iterdir())
    assert len(written) == 1 and written[0].suffix == ".npz" and not written[0].name.startswith(".")
    again = crops.build_crops(paths, ["a", "b", "c"], "eye", 32, cache_dir=tmp_path / "cache", workers=1)
    assert np.array_equal(first.crops, again.crops) and first.crops.shape == (3, 32, 32, 3)



def test_atomic_write_with_moves_the_written_file_into_place(tmp_path) -> None:
    path = tmp_path / "sub" / "model.pt"
    assert atomic_write_with(path, lambda tmp: torch.save({"meta": {"a": 1}, "w": torch.ones(2)}, tmp)) == path
    assert load_checkpoint(path)["meta"] == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def half_then_fail(tmp) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_with(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    """Not the temporary file's 0600: a report or model written by facelens is as readable as any file the user
    writes, and replacing a file keeps the permissions someone gave it."""
    fresh = write_bytes_atomic(tmp_path / "report.json", b"{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == new_file_mode()
    kept = tmp_path / "model.json"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o640)
    write_bytes_atomic(kept, b"new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_bytes() == b"new"
