"""Atomic file writes: every file facelens writes for later reading (reports, metrics, checkpoints,
crop caches, ONNX exports, shards).

A file that is half-written when a run is killed looks valid but lies, so every file is written
to a temporary file in the same folder and moved into place with ``os.replace`` (atomic on POSIX
and Windows when source and target share a file system). ``atomic_path`` is the one place that
does this; the ``write_*_atomic`` helpers are shorthands for data already in memory, and writers
that want a path of their own (``torch.save``, ``torch.onnx.export``, ``np.savez``) take the
temporary path from ``atomic_path`` directly.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def new_file_mode() -> int:
    """0666 less the process's umask: the permission bits ``open()`` gives a new file."""
    mask = os.umask(0o22)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is fsynced and renamed onto ``path``.

    When the block raises (or is interrupted), the temporary file is removed and an existing
    ``path`` is left as it was: readers see the old file or the new one, never a part of it.
    The temporary name starts with ``.{path.name}.`` and ends with ``.tmp``, so leftovers of a
    killed process are hidden and easy to recognise. ``mode``: permission bits for the file (the
    temporary file is created 0600); by default those of the file being replaced, else what ``open()``
    would give a new file (``new_file_mode``), so a report or model file is as readable as any other
    the user writes. Set before the rename, so the file never appears with the wrong ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else new_file_mode()
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:  # the bytes reach the disk before the name points at them
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (``atomic_path``); ``mode``: the file's permission bits."""
    path = Path(path)
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), mode)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, paths, tuples and sets.

    NaN and infinities become ``None``: they are not valid JSON and break strict readers.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (see module docstring)."""
    text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """``writer(tmp)`` writes a temporary sibling of ``path`` that then replaces it (``atomic_path``).

    For files written by a library that wants a path rather than bytes (``torch.save``).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        writer(tmp)
    return path
