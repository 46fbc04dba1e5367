"""Does an evaluation score a model on the images it was trained on? Warn when it does.

Why: ``facelens evaluate --split train`` (or ``--split all``) on the model's own data is
in-sample: the model has fitted those images, so the metrics come out optimistic, and a
newcomer reading them would believe the model better than it is. The model's metadata
records its training ``data`` (paths as given at training time, usually relative to the
repository root) and its split, so the overlap can be told without reading any image.
Content-addressed splits mean the same images under another folder name land in the same
split too; that case is not detected here (it would need every file hashed first).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

IN_SAMPLE_SPLITS = ("train", "all")


def _real(p: str | Path, base: Path) -> Path:
    q = Path(p).expanduser()
    return Path(os.path.realpath(q if q.is_absolute() else base / q))


def _related(a: Path, b: Path) -> bool:
    """Same folder, or one inside the other."""
    return a == b or a in b.parents or b in a.parents


def overlapping_data(model_data: Sequence[str], data: Sequence[str], bases: Iterable[Path]) -> list[str]:
    """The entries of ``data`` that are, contain or lie inside one of ``model_data``'s folders.

    ``model_data`` paths may be relative to where training ran: each is tried against every
    folder in ``bases`` (e.g. the current folder and the repository the model file sits in).
    """
    bases = list(bases)
    trained = {_real(m, b) for m in model_data for b in bases}
    cwd = Path.cwd()
    return [d for d in data if any(_related(_real(d, cwd), t) for t in trained)]


def in_sample_warning(model_path: Path, meta: dict, data: Sequence[str], split: str) -> str | None:
    """One line warning that ``split`` of ``data`` holds the model's own training images, or None."""
    if split not in IN_SAMPLE_SPLITS:
        return None
    bases = [Path.cwd(), Path(model_path).resolve().parent, Path(model_path).resolve().parent.parent]
    hits = overlapping_data(meta.get("data") or [], data, bases)
    if not hits:
        return None
    what = ("is the model's own training split" if split == "train"
            else "includes the model's own training split")
    return (f"{model_path}: --split {split} of {', '.join(hits)} {what} (the model was trained on "
            f"{', '.join(meta.get('data') or [])}): those images were fitted, so these metrics are optimistic; "
            "use --split test for an honest estimate")
