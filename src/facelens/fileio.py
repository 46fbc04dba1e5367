"""Atomic file writes for evaluation artefacts.

A report or metrics file that is half-written when a run is killed looks valid but lies, so
every file is written to a temporary file in the same folder and moved into place with
``os.replace`` (atomic on POSIX and Windows when source and target share a file system).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling file and ``os.replace``.

    ``mode``: permission bits for the file (the temporary file is created 0600); set before the
    rename, so the file never appears with the wrong ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    """Let ``writer(tmp)`` write a temporary sibling of ``path``, then move it into place atomically.

    For files written by a library that wants a path rather than bytes (``torch.save``): a killed
    run leaves either the old file or the new one, never half of one, and the temporary file is
    removed when ``writer`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
