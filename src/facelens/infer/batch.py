"""Prediction over whole photo collections: expand inputs, stream results, resume, list failures.

Results are appended as they come (JSON Lines: one line per photo; CSV: one row per face),
each photo's record in a single ``write`` on an unbuffered append-only file, so a crash or a
kill loses nothing already written and can at worst leave one torn record at the end.
``--resume`` cuts that torn tail off, reads the output back and skips inputs already in it.
Broken files go to ``<out>.errors.csv`` (written *before* their record, so the errors file
never misses a failure the output counts as done) and the run carries on.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from facelens.errors import FacelensError
from facelens.images import IMAGE_SUFFIXES
from facelens.schema import flat_header, flat_rows, one_line

#: The CSV header, derived from the schema (``facelens.schema.FLAT_COLUMNS``).
CSV_FIELDS = flat_header()
OUTPUT_SUFFIXES = (".jsonl", ".csv")


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _file_or_link(p: Path) -> bool:
    """Files, and symbolic links that do not lead to a folder: a broken link or a link loop is kept,
    so it gets a result saying so instead of silently vanishing from the run."""
    return p.is_file() or (p.is_symlink() and not p.is_dir())


def _identity(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symlink loop cannot be resolved
        return p.absolute()


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, folders walked recursively for images, glob patterns expanded (sorted).

    A file given explicitly is kept whatever its name (so a broken one is reported, not
    ignored); so are broken symbolic links and link loops met in folders and globs (each
    gets an error result naming the problem); a folder or glob that yields nothing is an
    error naming it. A file reached twice (a folder and a glob over it) is kept once, at its
    first place, so that every input gets exactly one result.
    """
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if _file_or_link(f) and _is_image_name(f))
            if not found:
                raise FacelensError(f"{raw}: folder contains no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.exists() or p.is_symlink():
            out.append(p)
        elif any(ch in raw for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(raw, recursive=True) if _file_or_link(Path(f)))
            if not found:
                raise FacelensError(f"{raw}: the pattern matches no files")
            out.extend(found)
        else:
            raise FacelensError(f"{raw}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = _identity(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


@dataclass
class BatchSummary:
    """What a run did; ``text()`` is the summary printed at the end of ``facelens predict --out``."""

    total: int = 0
    processed: int = 0
    ok: int = 0
    no_face: int = 0
    failed: int = 0
    skipped: int = 0
    faces: int = 0
    seconds: float = 0.0
    out: str = ""
    errors_file: str | None = None
    #: Stopped by Ctrl-C: every record written so far is complete, and ``--resume`` continues.
    interrupted: bool = False

    def text(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        face_rate = self.faces / self.seconds if self.seconds > 0 else 0.0
        s = (f"{self.processed} of {self.total} files processed in {self.seconds:.1f} s ({rate:.1f} photos/s, "
             f"{face_rate:.1f} faces/s): {self.ok} ok ({self.no_face} without a face), {self.failed} failed, "
             f"{self.faces} faces; {self.skipped} skipped as already in {self.out}")
        if self.failed:
            s += f"\nfailures listed in {self.errors_file}"
        if self.interrupted:
            left = self.total - self.skipped - self.processed
            s = f"interrupted: {left} of {self.total} files not done yet\n" + s
        return s


def csv_rows(result: dict) -> list[dict]:
    """Flatten one result (schema dict) into CSV rows, one per face (one row if no face): ``schema.flat_rows``."""
    return flat_rows(result)


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fields, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def done_paths(out: Path) -> set[str]:
    """Paths already present in an output file (a torn last line from a crash is ignored)."""
    if not out.exists():
        return set()
    done = set()
    if out.suffix == ".csv":
        with out.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("path"):
                    done.add(row["path"])
        return done
    with out.open() as fh:
        for line in fh:
            try:
                done.add(json.loads(line)["path"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _truncate_torn_tail(out: Path) -> bool:
    """Drop a partial last line left by a kill, so appending continues on a clean line; True if torn."""
    if not out.exists() or out.stat().st_size == 0:
        return False
    with out.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return False
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)
    return True


def _first_cell(line: bytes) -> str:
    return next(csv.reader([line.decode()]), [""])[0]


def _drop_last_csv_record(out: Path) -> None:
    """Remove the rows of the last photo in a CSV output, so resume redoes that photo.

    Why: a photo with several faces is several rows; when a crash tore its record, the rows
    before the tear would make the photo look done with faces missing. Called only when the
    file ended in a torn line (a clean end means the last one-``write`` record completed).
    """
    if not out.exists():
        return
    lines = out.read_bytes().splitlines(keepends=True)
    if len(lines) <= 1:  # header only, or nothing
        return
    last_path = _first_cell(lines[-1])
    keep = len(lines)
    while keep > 1 and _first_cell(lines[keep - 1]) == last_path:
        keep -= 1
    with out.open("rb+") as fh:
        fh.truncate(sum(len(x) for x in lines[:keep]))


def _append(fd: int, text: str) -> None:
    """Append a whole record with one ``write`` on an O_APPEND descriptor (no user-space buffer to lose)."""
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]


def _error_paths(errors_path: Path) -> set[str]:
    if not errors_path.exists():
        return set()
    with errors_path.open(newline="") as fh:
        return {row["path"] for row in csv.DictReader(fh) if row.get("path")}


@contextmanager
def _ctrl_c_flag() -> Iterator[threading.Event]:
    """A flag Ctrl-C sets (it still raises KeyboardInterrupt, as Python's default handler does).

    Why: Python drops an exception raised inside a finaliser (``__del__``, a generator closed by the garbage
    collector), so a Ctrl-C that lands there was lost and the run went on to the end; the loop checks the flag
    after every record too. Installed from the main thread only (where signal handlers live); elsewhere the
    flag is never set and KeyboardInterrupt alone ends the run.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_sigint(signum, frame):
        flag.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def run_batch(analyzer, paths: list[Path], out: Path, resume: bool = False, batch_size: int = 32,
              progress: bool = True) -> BatchSummary:
    """Analyse ``paths`` into ``out`` (.jsonl or .csv), streaming; see the module docstring.

    Ctrl-C (KeyboardInterrupt) ends the run early with ``summary.interrupted`` set instead of
    raising, so the caller can still print the summary and the ``--resume`` command.
    ``analyzer`` is a ``facelens.Analyzer`` (anything with its ``analyze_many``). The progress
    bar (stderr) shows photos/s and the time left; ``batch_size`` is the number of faces the
    models see at once, gathered across photos.
    """
    if out.suffix not in OUTPUT_SUFFIXES:
        raise FacelensError(f"{out}: output must end in .jsonl or .csv")
    if out.exists() and not resume:
        raise FacelensError(f"{out}: already exists; pass --resume to continue it or choose another --out")
    errors_path = out.with_name(out.name + ".errors.csv")
    try:
        return _run_batch(analyzer, paths, out, errors_path, resume, batch_size, progress)
    except OSError as exc:  # an unwritable folder, a read-only file system, a full disk...
        where = exc.filename or out
        raise FacelensError(f"{where}: cannot write the results ({exc.strerror or exc}); choose another --out") from exc


def _run_batch(analyzer, paths: list[Path], out: Path, errors_path: Path, resume: bool, batch_size: int,
               progress: bool) -> BatchSummary:
    out.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        if _truncate_torn_tail(out) and out.suffix == ".csv":
            _drop_last_csv_record(out)
        _truncate_torn_tail(errors_path)
    elif errors_path.exists():
        errors_path.unlink()  # a fresh output: failures listed by an older run do not belong to it
    done = done_paths(out) if resume else set()
    listed_errors = _error_paths(errors_path) if resume else set()
    todo = [p for p in paths if str(p) not in done]
    summary = BatchSummary(total=len(paths), skipped=len(paths) - len(todo), out=str(out),
                           errors_file=str(errors_path))
    is_csv = out.suffix == ".csv"
    t0 = time.perf_counter()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    err_fd: int | None = None
    try:
        if is_csv and os.fstat(fd).st_size == 0:
            _append(fd, ",".join(CSV_FIELDS) + "\n")
        with _ctrl_c_flag() as ctrl_c, tqdm(total=len(todo), unit="photo", desc="predict", disable=not progress,
                                            smoothing=0.1) as bar:
            for r in analyzer.analyze_many(todo, names=[str(p) for p in todo], batch_size=batch_size):
                if r.error:
                    summary.failed += 1
                    if r.path not in listed_errors:
                        if err_fd is None:
                            err_fd = os.open(errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                            if os.fstat(err_fd).st_size == 0:
                                _append(err_fd, "path,error\n")
                        _append(err_fd, _csv_text([{"path": r.path, "error": one_line(r.error)}], ["path", "error"]))
                else:
                    summary.ok += 1
                    summary.no_face += not r.faces
                d = r.to_dict()
                _append(fd, _csv_text(csv_rows(d), CSV_FIELDS) if is_csv else json.dumps(d) + "\n")
                summary.processed += 1
                summary.faces += len(r.faces)
                bar.update(1)
                if summary.processed % 16 == 0 or summary.processed == len(todo):
                    bar.set_postfix(faces=summary.faces, failed=summary.failed, refresh=False)
                if ctrl_c.is_set():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:  # Ctrl-C: what is written stays complete; the caller reports it and how to resume
        summary.interrupted = True
    finally:
        os.close(fd)
        if err_fd is not None:
            os.close(err_fd)
        summary.seconds = time.perf_counter() - t0
    return summary
