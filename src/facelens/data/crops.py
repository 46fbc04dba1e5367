"""Turn dataset records into model-ready crops with the *prediction* pipeline, cached on disk.

Training reads faces through exactly the code the predictor uses (``face_crop_from_image``:
detect -> pick the main face -> align to the age template), so a served model sees what it
learned. Crops are cached by the files' SHA-1, the pipeline version and the crop size, so
the second run (or ``evaluate`` on the same data) skips detection.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facelens.errors import ImageLoadError
from facelens.face.align import AGE_TEMPLATE, align_face
from facelens.face.detect import Detection, detect_faces
from facelens.images import load_image

#: Bump when detection, alignment or resizing changes: invalidates cached crops.
PIPELINE_VERSION = "yunet-umeyama3-v1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACELENS_CACHE", Path.home() / ".cache" / "facelens"))


def face_crop_from_image(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Detection] | None:
    """Main (largest) face of a photo, aligned to the age template; None when no face is found."""
    faces = detect_faces(rgb)
    if not faces:
        return None
    crop, _ = align_face(rgb, faces[0].anchor_points(), size, AGE_TEMPLATE)
    return crop, faces[0]


def eye_crop_from_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """A single-eye training crop (already cut around one eye) resized to the model's square input."""
    h, w = rgb.shape[:2]
    if h != w:  # centre-crop to a square: the crops of the eye set are square already
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        rgb = rgb[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def _crop_one(args: tuple[str, str, int, np.ndarray | None]) -> tuple[np.ndarray | None, str | None, np.ndarray | None]:
    """(crop, failure reason, anchor points) for one file; known anchors skip detection."""
    path, kind, size, known = args
    try:
        rgb = load_image(path)
    except ImageLoadError as exc:
        return None, exc.message, None
    if kind == "eye":
        return eye_crop_from_image(rgb, size), None, None
    if known is not None:
        return align_face(rgb, known, size, AGE_TEMPLATE)[0], None, known
    got = face_crop_from_image(rgb, size)
    if got is None:
        return None, "no face detected", None
    return got[0], None, got[1].anchor_points()


@dataclass
class CropSet:
    crops: np.ndarray  # (N, S, S, 3) uint8 for the records that worked
    index: np.ndarray  # positions (into the input records) of those crops
    failures: list[tuple[str, str]]  # (path, reason) for the rest


def _cache_key(digests: Sequence[str], kind: str, size: int) -> str:
    h = hashlib.sha256(f"{PIPELINE_VERSION}|{kind}|{size}|".encode())
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()[:24]


def build_crops(
    paths: Sequence[Path],
    digests: Sequence[str],
    kind: str,
    size: int,
    cache_dir: Path | None = None,
    workers: int | None = None,
    desc: str = "crops",
) -> CropSet:
    """Crops for ``paths`` ('face' or 'eye' kind), from the cache when this exact set was seen."""
    cache_dir = cache_dir or default_cache_dir()
    key = _cache_key(digests, kind, size)
    npz = cache_dir / "crops" / f"{kind}-{size}-{key}.npz"
    if npz.exists():
        with np.load(npz, allow_pickle=False) as z:
            failures = json.loads(str(z["failures"]))
            return CropSet(z["crops"], z["index"], [tuple(f) for f in failures])
    # Detections do not depend on the crop size: cache them separately so another size
    # (the seed baseline's 120 px, say) only re-warps.
    anchors_npz = cache_dir / "crops" / f"anchors-{_cache_key(digests, kind, 0)}.npz"
    known: np.ndarray | None = None
    known_reasons: list[str] = []
    if kind == "face" and anchors_npz.exists():
        with np.load(anchors_npz, allow_pickle=False) as z:
            known, known_reasons = z["anchors"], json.loads(str(z["reasons"]))
    workers = workers or max(1, os.cpu_count() or 1)
    jobs = [(str(p), kind, size, None if known is None or np.isnan(known[i]).any() else known[i])
            for i, p in enumerate(paths)]
    # Files where detection failed before fail again without re-detecting.
    failed_before = [] if known is None else [i for i in range(len(jobs)) if np.isnan(known[i]).any()]
    results_known = {i: (None, known_reasons[i], None) for i in failed_before}
    todo = [j for i, j in enumerate(jobs) if i not in results_known]
    if workers > 1 and len(todo) > 64:
        with ProcessPoolExecutor(workers) as pool:
            done = list(tqdm(pool.map(_crop_one, todo, chunksize=64), total=len(todo), desc=desc, unit="img"))
    else:
        done = [_crop_one(j) for j in tqdm(todo, desc=desc, unit="img")]
    it = iter(done)
    results = [results_known[i] if i in results_known else next(it) for i in range(len(jobs))]
    good = [i for i, r in enumerate(results) if r[0] is not None]
    crops = np.stack([results[i][0] for i in good]) if good else np.zeros((0, size, size, 3), np.uint8)
    failures = [(str(paths[i]), r[1] or "") for i, r in enumerate(results) if r[0] is None]
    out = CropSet(crops, np.asarray(good, dtype=np.int64), failures)
    if kind == "face" and known is None:
        anchors = np.full((len(results), 3, 2), np.nan)
        for i, r in enumerate(results):
            if r[2] is not None:
                anchors[i] = r[2]
        _save_npz(anchors_npz, anchors=anchors, reasons=np.asarray(json.dumps([r[1] or "" for r in results])))
    _save_npz(npz, crops=out.crops, index=out.index, failures=np.asarray(json.dumps(failures)))
    return out


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp.npz", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)
