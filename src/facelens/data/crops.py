"""Turn dataset records into model-ready crops with the *prediction* pipeline, cached on disk.

Training reads faces through exactly the code the predictor uses (``face_crop_from_image``:
detect -> pick the main face -> align to the age template), so a served model sees what it
learned. Detections are cached per file content (``AnchorStore``); crops by the files' SHA-1, the
pipeline version, the crop size and the face template, so the second run (or ``evaluate``
on the same data) skips both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facelens.errors import ImageLoadError
from facelens.face.align import (
    AGE_TEMPLATE,
    DEFAULT_EYE_GEOMETRY,
    LOOSE_AGE_TEMPLATE,
    EyeGeometry,
    FaceTemplate,
    align_face,
    cut_eye_region,
)
from facelens.face.detect import Detection, detect_faces
from facelens.fileio import atomic_path
from facelens.images import load_image

#: Bump when detection or the anchor points change: invalidates cached detections and crops.
PIPELINE_VERSION = "yunet-umeyama3-v1"
#: Bump when the cutting of crops from known anchors changes (``face.align.warp_crop``): invalidates cached
#: crops only (detections are kept). v2: crops that shrink their source past 2x are area-averaged first.
CROP_VERSION = "warp-v2"


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACELENS_CACHE", Path.home() / ".cache" / "facelens"))


def face_crop_from_image(rgb: np.ndarray, size: int, template: FaceTemplate = AGE_TEMPLATE
                         ) -> tuple[np.ndarray, Detection] | None:
    """Main (largest) face of a photo, aligned to ``template``; None when no face is found."""
    faces = detect_faces(rgb)
    if not faces:
        return None
    crop, _ = align_face(rgb, faces[0].anchor_points(), size, template)
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


def _detect_one(path: str) -> tuple[np.ndarray | None, str]:
    """Anchor points (eyes, mouth) of a file's main face, or None and the reason."""
    try:
        rgb = load_image(path)
    except ImageLoadError as exc:
        return None, exc.message
    faces = detect_faces(rgb)
    if not faces:
        return None, "no face detected"
    return faces[0].anchor_points(), ""


def eye_from_face(rgb: np.ndarray, anchor_points: np.ndarray, side: str, size: int,
                  geometry: EyeGeometry = DEFAULT_EYE_GEOMETRY) -> np.ndarray:
    """Eye crop ``side`` of a face ('left' / 'right': the person's own eye; 'both': the crop of both eyes),
    cut exactly as ``Analyzer`` cuts it."""
    return cut_eye_region(rgb, anchor_points, side, size, geometry)[0]


def _crop_one(args: tuple[str, str, int, np.ndarray | None, FaceTemplate, str | None, EyeGeometry]
              ) -> tuple[np.ndarray | None, str | None]:
    """(crop, failure reason) for one file; crops from faces warp known anchors (no detection here)."""
    path, kind, size, known, template, side, geometry = args
    try:
        rgb = load_image(path)
    except ImageLoadError as exc:
        return None, exc.message
    if kind == "eye":
        return (eye_crop_from_image(rgb, size) if side is None else eye_from_face(rgb, known, side, size, geometry)), None
    return align_face(rgb, known, size, template)[0], None


@dataclass
class CropSet:
    crops: np.ndarray  # (N, S, S, 3) uint8 for the records that worked
    index: np.ndarray  # positions (into the input records) of those crops
    failures: list[tuple[str, str]]  # (path, reason) for the rest


def _cache_key(digests: Sequence[str], kind: str, size: int, template: FaceTemplate | None = None,
               sides: Sequence[str | None] | None = None, geometry: EyeGeometry = DEFAULT_EYE_GEOMETRY) -> str:
    h = hashlib.sha256(f"{PIPELINE_VERSION}|{kind}|{size}|".encode())
    if kind == "face" or (sides is not None and any(sides)):  # crops cut from faces; ready-cut eye crops only resize
        h.update(CROP_VERSION.encode())
    if kind == "face" and template is not None and template != LOOSE_AGE_TEMPLATE:  # loose keeps old cache keys
        h.update(repr(astuple(template)).encode())
    if kind == "eye" and sides is not None and any(sides):  # eye-crop sets keep their old keys
        h.update(f"eyes-from-faces|{astuple(geometry)}|{'|'.join(s or '' for s in sides)}".encode())
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()[:24]


class AnchorStore:
    """Face anchors (or the reason there is none) per file content digest, in one file per cache.

    Why per digest: detection is the slow part of cropping (YuNet on every image), and it does
    not depend on the crop size, the template or which subset of a dataset a run uses; a
    leave-one-source-out run or a new template only re-warps.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.anchors: dict[str, np.ndarray | None] = {}
        self.reasons: dict[str, str] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                reasons = json.loads(str(z["reasons"]))
                for d, a, r in zip(z["digests"].tolist(), z["anchors"], reasons, strict=True):
                    self.anchors[d] = None if np.isnan(a).any() else a
                    self.reasons[d] = r

    def missing(self, digests: Sequence[str]) -> list[int]:
        return [i for i, d in enumerate(digests) if d not in self.anchors]

    def add(self, digest: str, anchors: np.ndarray | None, reason: str) -> None:
        self.anchors[digest], self.reasons[digest] = anchors, reason

    def save(self) -> None:
        digests = list(self.anchors)
        arr = np.full((len(digests), 3, 2), np.nan)
        for i, d in enumerate(digests):
            if self.anchors[d] is not None:
                arr[i] = self.anchors[d]
        _save_npz(self.path, digests=np.asarray(digests), anchors=arr,
                  reasons=np.asarray(json.dumps([self.reasons[d] for d in digests])))


def _pool_map(fn, jobs: list, workers: int, desc: str) -> list:
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(fn, jobs, chunksize=64), total=len(jobs), desc=desc, unit="img"))
    return [fn(j) for j in tqdm(jobs, desc=desc, unit="img")]


def build_crops(
    paths: Sequence[Path],
    digests: Sequence[str],
    kind: str,
    size: int,
    cache_dir: Path | None = None,
    workers: int | None = None,
    desc: str = "crops",
    template: FaceTemplate = AGE_TEMPLATE,
    sides: Sequence[str | None] | None = None,
    eye_geometry: EyeGeometry = DEFAULT_EYE_GEOMETRY,
) -> CropSet:
    """Crops for ``paths`` ('face' or 'eye' kind), from the cache when this exact set was seen.

    Face crops are aligned to ``template`` from anchors detected once per file content. Eye crops
    are the files themselves (ready-cut crops) or, where ``sides[i]`` is 'left' / 'right' / 'both', that eye
    (or both) of the file's main face, cut as prediction cuts it with ``eye_geometry``.
    """
    cache_dir = cache_dir or default_cache_dir()
    sides = list(sides) if sides is not None else [None] * len(paths)
    key = _cache_key(digests, kind, size, template, sides, eye_geometry)
    npz = cache_dir / "crops" / f"{kind}-{size}-{key}.npz"
    if npz.exists():
        with np.load(npz, allow_pickle=False) as z:
            failures = json.loads(str(z["failures"]))
            return CropSet(z["crops"], z["index"], [tuple(f) for f in failures])
    workers = workers or max(1, os.cpu_count() or 1)
    known: list[np.ndarray | None] = [None] * len(paths)
    reasons: dict[int, str] = {}
    on_faces = [i for i in range(len(paths)) if kind == "face" or sides[i] is not None]
    if on_faces:
        store = AnchorStore(cache_dir / "crops" / f"anchors-{PIPELINE_VERSION}.npz")
        todo = sorted({digests[i]: i for i in on_faces if digests[i] not in store.anchors}.values())
        if todo:
            found = _pool_map(_detect_one, [str(paths[i]) for i in todo], workers, f"{desc}: detect")
            for i, (a, why) in zip(todo, found, strict=True):
                store.add(digests[i], a, why)
            store.save()
        for i in on_faces:
            known[i] = store.anchors[digests[i]]
            if known[i] is None:
                reasons[i] = store.reasons[digests[i]]
    jobs = [(str(p), kind, size, known[i], template, sides[i], eye_geometry) for i, p in enumerate(paths) if i not in reasons]
    done = iter(_pool_map(_crop_one, jobs, workers, desc))
    results = [(None, reasons[i]) if i in reasons else next(done) for i in range(len(paths))]
    good = [i for i, r in enumerate(results) if r[0] is not None]
    crops = np.stack([results[i][0] for i in good]) if good else np.zeros((0, size, size, 3), np.uint8)
    failures = [(str(paths[i]), r[1] or "") for i, r in enumerate(results) if r[0] is None]
    out = CropSet(crops, np.asarray(good, dtype=np.int64), failures)
    _save_npz(npz, crops=out.crops, index=out.index, failures=np.asarray(json.dumps(failures)))
    return out


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write a crop cache atomically: a run killed mid-write must not leave a cache that later loads as truncated."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a path
        np.savez(fh, **arrays)
