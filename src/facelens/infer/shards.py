"""A folder of result shards: the output of ``facelens predict --engine ray --out DIR``.

Layout (``DIR``)::

    part-00000.jsonl      facelens/1 records, one per input (or part-00000.parquet with --format parquet)
    part-00001.jsonl      ...
    _errors.csv           path,error of every failed input in the finished shards
    _SUCCESS              JSON manifest, written last: the run finished and every input has a record

The names of the two extra files start with ``_``, which Spark, pyarrow, pandas and Ray skip
when reading a folder, so ``pandas.read_parquet(DIR)`` or ``ray.data.read_json(DIR)`` read the
records alone.

Why shards and not one appended file (as the local engine writes): many workers finish batches
in any order, and a shard that is written to a temporary sibling and renamed into place is
either complete or absent, on any file system that has an atomic rename. So a killed run never
leaves a torn record, ``--resume`` only has to read the finished shards, and a reader can trust
every ``part-*`` file it sees. The price is that a kill loses the records of the shard being
filled (at most ``shard_size`` records or ``flush_seconds`` of work).

Only the driver process writes here (workers send their records back to it), so the folder
does not have to be visible from the workers and two writers never race inside one run.
Nothing in this module imports Ray; Parquet needs pyarrow, imported only when asked for.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelens.errors import FacelensError
from facelens.fileio import write_bytes_atomic, write_text_atomic
from facelens.schema import SCHEMA_VERSION, EyeEstimate, Face, ImageResult, SexEstimate

FORMATS = ("jsonl", "parquet")
SUCCESS_FILE = "_SUCCESS"
ERRORS_FILE = "_errors.csv"
_SHARD_RE = re.compile(r"^part-(\d{5,})\.(jsonl|parquet)$")
#: Face landmarks in the order ``Detection.landmarks()`` gives them (a fixed set: the Parquet schema names them).
LANDMARK_KEYS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")


def parquet_schema():
    """The ``facelens/1`` record as an explicit Arrow schema, derived from the result models (``facelens.schema``).

    Why explicit: inferring it from each shard's records gives a different schema per shard
    (a shard with no faces has ``faces: list<null>``, one without errors ``error: null``),
    which readers then refuse to concatenate. Why derived: field names and nesting are those of
    ``ImageResult.to_dict()`` by construction, so a row read back with ``to_pylist()`` equals the
    JSON record, and a field added to the contract reaches the Parquet shards without a second list.
    """
    import pyarrow as pa

    return pa.schema(_arrow_fields(ImageResult))


#: The order of a struct's fields where it is not the JSON form's (fields, then computed fields): the
#: first Parquet shards put a computed field beside the one it is computed from. Kept, since old and new
#: shards with differently ordered structs could not be read as one table. Fields missing here go last.
_ARROW_ORDER: dict[type, tuple[str, ...]] = {
    EyeEstimate: ("side", "p_female", "p_male", "box"),
    SexEstimate: ("p_female", "p_male", "eyes", "eyes_disagree", "caution"),
}

#: Dict-valued fields stored as a struct of these fixed keys (a Parquet column needs its keys up front).
_ARROW_KEYS: dict[tuple[type, str], tuple[str, ...]] = {(Face, "landmarks"): LANDMARK_KEYS}
_ARROW_SCALARS: dict[Any, str] = {bool: "bool_", int: "int64", float: "float64", str: "string"}


def _arrow_fields(model: type) -> list:
    """``(name, Arrow type)`` of every serialised field of a pydantic ``model``, aliases applied."""
    import pyarrow as pa

    hints: dict[str, tuple[tuple[type, str], Any]] = {}  # JSON name -> ((model, field), type hint)
    for name, info in model.model_fields.items():
        if not info.exclude:
            hints[info.serialization_alias or info.alias or name] = ((model, name), info.annotation)
    for name, info in model.model_computed_fields.items():
        hints[info.alias or name] = ((model, name), info.return_type)
    order = _ARROW_ORDER.get(model, ())
    unknown = [n for n in order if n not in hints]
    if unknown:
        raise TypeError(f"{model.__name__}: _ARROW_ORDER names {', '.join(unknown)}, which it does not serialise")
    names = [*order, *(n for n in hints if n not in order)]
    return [pa.field(n, _arrow_type(*hints[n])) for n in names]


def _arrow_type(where: tuple[type, str], hint: Any):
    """The Arrow type of the type ``hint`` of field ``where`` (model, name): refused, naming it, when no rule fits."""
    import pyarrow as pa
    from pydantic import BaseModel

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: nullable X (every Arrow field here is nullable)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _arrow_type(where, inner[0])
    elif origin is typing.Literal:
        if all(isinstance(a, str) for a in args):
            return pa.string()
    elif origin in (list, tuple):
        items = {a for a in args if a is not Ellipsis}
        if len(items) == 1:  # list[X], tuple[X, ...] and tuple[X, X, ...] alike: a list of X
            return pa.list_(_arrow_type(where, items.pop()))
    elif origin is dict:
        if where in _ARROW_KEYS and args[:1] == (str,):
            item = _arrow_type(where, args[1])
            return pa.struct([(k, item) for k in _ARROW_KEYS[where]])
    elif isinstance(hint, type) and issubclass(hint, BaseModel):
        return pa.struct(_arrow_fields(hint))
    elif hint in _ARROW_SCALARS:
        return getattr(pa, _ARROW_SCALARS[hint])()
    raise TypeError(f"{where[0].__name__}.{where[1]}: no Parquet type for {hint!r}; "
                    "give it one in facelens.infer.shards._arrow_type")



def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise FacelensError("--format parquet needs pyarrow: pip install 'facelens[ray]'") from exc


def finished_shards(out: Path) -> list[Path]:
    """The complete shards in ``out``, in shard order (temporary files start with a dot and are not listed)."""
    if not out.is_dir():
        return []
    return sorted((p for p in out.iterdir() if _SHARD_RE.match(p.name)), key=lambda p: int(_SHARD_RE.match(p.name)[1]))


def read_shard(path: Path) -> list[dict[str, Any]]:
    """All records of one finished shard, as ``facelens/1`` dicts."""
    try:
        if path.suffix == ".parquet":
            _require_pyarrow()
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and pyarrow's ArrowInvalid
        raise FacelensError(f"{path}: cannot read this result shard ({exc}); move it away and run again with --resume") from exc


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every record in the finished shards of ``out`` (for readers and tests; a real reader may use pyarrow or pandas)."""
    return [r for shard in finished_shards(out) for r in read_shard(shard)]


def _csv_line(row: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


@dataclass
class ShardStats:
    """What the finished shards hold (counted once per distinct input path)."""

    records: int = 0
    ok: int = 0
    no_face: int = 0
    failed: int = 0
    faces: int = 0

    def add(self, rec: dict[str, Any]) -> None:
        self.records += 1
        if rec.get("error"):
            self.failed += 1
        else:
            self.ok += 1
            self.no_face += not rec.get("faces")
        self.faces += len(rec.get("faces") or [])


@dataclass
class ShardWriter:
    """Collects records and commits them as numbered shards, each written atomically.

    ``add`` drops a record whose path is already in a finished shard or in the shard being
    filled: that is what keeps every input exactly once when Ray re-runs a batch after a worker
    died (the retry sends the same paths again) and when ``--resume`` lists inputs already done.
    """

    out: Path
    fmt: str = "jsonl"
    shard_size: int = 1000
    #: Commit the shard being filled after this long, even if not full, so a kill loses little work.
    flush_seconds: float = 60.0
    done: set[str] = field(default_factory=set)
    errors: list[tuple[str, str]] = field(default_factory=list)
    stats: ShardStats = field(default_factory=ShardStats)
    shards: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)
    _next_index: int = 0

    @classmethod
    def open(cls, out: Path, fmt: str = "jsonl", resume: bool = False, shard_size: int = 1000,
             flush_seconds: float = 60.0) -> ShardWriter:
        """Prepare ``out`` for writing: a new folder, or (``resume``) the finished shards of an earlier run.

        A folder that already holds anything needs ``resume``, so an earlier run's results are
        never mixed with or overwritten by a different run by accident.
        """
        if fmt not in FORMATS:
            raise FacelensError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if shard_size < 1:
            raise FacelensError(f"--shard-size must be >= 1, got {shard_size}")
        if fmt == "parquet":
            _require_pyarrow()
        if out.exists() and not out.is_dir():
            raise FacelensError(f"{out}: is a file; --engine ray writes a folder of shards, so choose a folder for --out")
        if out.is_dir() and any(out.iterdir()) and not resume:
            raise FacelensError(f"{out}: already exists and is not empty; pass --resume to continue it or choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / SUCCESS_FILE).unlink(missing_ok=True)  # from now on the folder is not a finished run
            for stale in out.glob(".part-*.tmp"):  # a shard being written when an earlier run was killed
                stale.unlink()
        except OSError as exc:
            raise FacelensError(f"{exc.filename or out}: cannot write the results ({exc.strerror or exc}); "
                                "choose another --out") from exc
        w = cls(out=out, fmt=fmt, shard_size=shard_size, flush_seconds=flush_seconds)
        for shard in finished_shards(out):
            if shard.suffix != f".{fmt}":
                raise FacelensError(f"{shard}: this folder holds {shard.suffix[1:]} shards; resume it with "
                                    f"--format {shard.suffix[1:]}")
            for rec in read_shard(shard):
                w._account(rec)
            w.shards.append(shard.name)
            w._next_index = int(_SHARD_RE.match(shard.name)[1]) + 1
        return w

    def _account(self, rec: dict[str, Any]) -> bool:
        path = rec.get("path")
        if path in self.done:
            self.duplicates_dropped += 1
            return False
        self.done.add(path)
        self.stats.add(rec)
        if rec.get("error"):
            self.errors.append((path, " ".join(str(rec["error"]).split())))
        return True

    def add(self, rec: dict[str, Any]) -> bool:
        """Queue one record; False (and dropped) when its path already has one. Commits a full shard."""
        if not self._account(rec):
            return False
        if not self._pending:
            self._started = time.monotonic()
        self._pending.append(rec)
        if len(self._pending) >= self.shard_size or time.monotonic() - self._started >= self.flush_seconds:
            self.commit()
        return True

    def commit(self) -> Path | None:
        """Write the queued records as the next shard (temporary file, then rename), then the errors file."""
        if not self._pending:
            return None
        path = self.out / f"part-{self._next_index:05d}.{self.fmt}"
        try:
            if self.fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                buf = pa.BufferOutputStream()
                pq.write_table(pa.Table.from_pylist(self._pending, schema=parquet_schema()), buf)
                write_bytes_atomic(path, buf.getvalue().to_pybytes())
            else:
                write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self._pending))
            if self.errors:  # the failures of the finished shards, rewritten whole: never ahead of or behind them
                write_text_atomic(self.out / ERRORS_FILE,
                                  "".join([_csv_line(["path", "error"]), *(_csv_line([p, e]) for p, e in self.errors)]))
        except OSError as exc:
            raise FacelensError(f"{exc.filename or path}: cannot write the results ({exc.strerror or exc}); "
                                "choose another --out") from exc
        self.shards.append(path.name)
        self._next_index += 1
        self._pending = []
        return path

    def finish(self, inputs: int, extra: dict[str, Any] | None = None) -> Path:
        """Commit the last shard, then write ``_SUCCESS`` (the manifest): only a completed run has one."""
        self.commit()
        manifest = {"schema": SCHEMA_VERSION, "format": self.fmt, "inputs": inputs, "records": self.stats.records,
                    "ok": self.stats.ok, "no_face": self.stats.no_face, "failed": self.stats.failed,
                    "faces": self.stats.faces, "shards": self.shards, "errors_file": ERRORS_FILE if self.errors else None,
                    **(extra or {})}
        if not self.errors:
            (self.out / ERRORS_FILE).unlink(missing_ok=True)
        return write_text_atomic(self.out / SUCCESS_FILE, json.dumps(manifest, indent=2) + "\n")
