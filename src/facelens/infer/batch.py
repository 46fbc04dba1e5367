"""Prediction over whole photo collections: expand inputs, stream results, resume, list failures.

Results are appended line by line (JSON Lines or CSV) and flushed as they come, so a crash or
a kill loses nothing already written; ``--resume`` reads the output back and skips inputs
already in it. Broken files go to ``<out>.errors.csv`` and the run carries on.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from facelens.errors import FacelensError
from facelens.images import IMAGE_SUFFIXES

CSV_FIELDS = ["path", "face", "x", "y", "w", "h", "score", "age", "age_low", "age_high", "p_female", "p_male",
              "p_female_left_eye", "p_female_right_eye", "error"]


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, folders walked recursively for images, glob patterns expanded (sorted).

    A file given explicitly is kept whatever its name (so a broken one is reported, not
    ignored); a folder or glob that yields nothing is an error naming it.
    """
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _is_image_name(f))
            if not found:
                raise FacelensError(f"{raw}: folder contains no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif any(ch in raw for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(raw, recursive=True) if Path(f).is_file())
            if not found:
                raise FacelensError(f"{raw}: the pattern matches no files")
            out.extend(found)
        else:
            raise FacelensError(f"{raw}: no such file or folder")
    return out


@dataclass
class BatchSummary:
    processed: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    faces: int = 0
    seconds: float = 0.0
    out: str = ""
    errors_file: str | None = None

    def text(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        s = (f"{self.processed} files processed ({self.ok} ok, {self.failed} failed), {self.faces} faces, "
             f"{self.skipped} skipped as already done; {self.seconds:.1f} s, {rate:.1f} photos/s -> {self.out}")
        if self.failed:
            s += f"\nfailures listed in {self.errors_file}"
        return s


def csv_rows(result: dict) -> list[dict]:
    """Flatten one result (schema dict) into CSV rows, one per face (one row if no face)."""
    if result.get("error") or not result.get("faces"):
        return [{"path": result["path"], "face": "", "error": result.get("error") or result.get("message") or ""}]
    rows = []
    for i, f in enumerate(result["faces"]):
        x, y, w, h = f["box"]
        row = {"path": result["path"], "face": i, "x": x, "y": y, "w": w, "h": h, "score": f["score"], "error": ""}
        if f.get("age"):
            row |= {"age": f["age"]["value"], "age_low": f["age"]["low"], "age_high": f["age"]["high"]}
        if f.get("sex"):
            row |= {"p_female": f["sex"]["p_female"], "p_male": f["sex"]["p_male"]}
            for e in f["sex"]["eyes"]:
                row[f"p_female_{e['side']}_eye"] = e["p_female"]
        rows.append(row)
    return rows


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


def _truncate_torn_tail(out: Path) -> None:
    """Drop a partial last line left by a kill, so appending continues on a clean line."""
    if not out.exists() or out.stat().st_size == 0:
        return
    with out.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = fh.seek(0) or fh.read()
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


def run_batch(analyzer, paths: list[Path], out: Path, resume: bool = False) -> BatchSummary:
    """Analyse ``paths`` into ``out`` (.jsonl or .csv), streaming; see module docstring."""
    if out.suffix not in (".jsonl", ".csv", ".json"):
        raise FacelensError(f"{out}: output must end in .jsonl or .csv")
    if out.exists() and not resume:
        raise FacelensError(f"{out}: already exists; pass --resume to continue it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    _truncate_torn_tail(out)
    done = done_paths(out) if resume else set()
    todo = [p for p in paths if str(p) not in done]
    summary = BatchSummary(skipped=len(paths) - len(todo), out=str(out))
    errors_path = out.with_name(out.name + ".errors.csv")
    summary.errors_file = str(errors_path)
    t0 = time.perf_counter()
    new_csv = out.suffix == ".csv" and (not out.exists() or out.stat().st_size == 0)
    with out.open("a", newline="") as fh, tqdm(total=len(todo), unit="photo", desc="predict") as bar:
        writer = csv.DictWriter(fh, CSV_FIELDS) if out.suffix == ".csv" else None
        if writer and new_csv:
            writer.writeheader()
        err_fh = None
        for r in analyzer.analyze_many(todo, names=[str(p) for p in todo]):
            d = r.to_dict()
            if writer:
                writer.writerows(csv_rows(d))
            else:
                fh.write(json.dumps(d) + "\n")
            fh.flush()
            summary.processed += 1
            summary.faces += len(r.faces)
            if r.error:
                summary.failed += 1
                if err_fh is None:
                    new = not errors_path.exists()
                    err_fh = errors_path.open("a", newline="")
                    if new:
                        err_fh.write("path,error\n")
                csv.writer(err_fh).writerow([r.path, r.error])
                err_fh.flush()
            else:
                summary.ok += 1
            bar.update(1)
        if err_fh:
            err_fh.close()
    summary.seconds = time.perf_counter() - t0
    return summary
