"""Public Python API: ``Analyzer().analyze(path_or_array)`` -> ImageResult.

    >>> from facelens import Analyzer
    >>> result = Analyzer().analyze("group.jpg")
    >>> [(f.age.value, f.sex.p_female) for f in result.faces]

One Analyzer loads its models once and is safe to share between threads (the service
does). Every face goes through the same crop code the models were trained on.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facelens.data.crops import eye_crop_from_image
from facelens.devices import check_device_name
from facelens.errors import ImageLoadError, ModelLoadError
from facelens.face.align import (
    EyeCropGeometry,
    FaceTemplate,
    align_face,
    crop_footprint,
    crop_scale,
    cut_eye,
    eye_crop_transform,
    similarity_transform,
)
from facelens.face.detect import DEFAULT_MIN_SCORE, DETECT_MAX_SIDE, Detection, check_detect_max_side, detect_faces
from facelens.face.eyecheck import FACE_PHOTO_WARNING, looks_like_face_photo
from facelens.face.order import reading_order
from facelens.images import ImageInput, MemoryBudget, load_image, load_reduced
from facelens.infer.postprocess import decode_age, decode_eyes, decode_face_logits
from facelens.infer.predictor import Predictor, load_predictor
from facelens.reduced import ReducedImage, coarsest_factor
from facelens.schema import AgeEstimate, EyeCropResult, EyeEstimate, Face, ImageResult, SexEstimate
from facelens.tasks import AGE, EYES, task_spec

AGE_MODEL_FILE = AGE.model_file
EYE_MODEL_FILE = EYES.model_file
NO_FACE_MESSAGE = "no face found"
#: Longest side a JPEG is first decoded at (DCT draft, issue #22): detection needs 512 px, and this
#: much more lets the crops of larger faces come from the same decode; smaller faces get a finer
#: decode of their region only (``Analyzer._crop_sources``). 24 MP -> 1/4 (1500 px), 12 MP -> 1/2.
FIRST_DECODE_SIDE = 1280
#: Decode memory one Analyzer's photos may hold at once (``facelens.images.MemoryBudget``): one 24 MP
#: JPEG decoded in full needs ~170 MB (Pillow's 4-byte buffer plus the RGB result), so two prefetch
#: threads each falling back to full size for a small face queue instead of doubling the peak;
#: reduced decodes (~10 MB) pass freely. A photo needing more than the budget still runs, alone.
DECODE_MEMORY_BYTES = 200_000_000


def models_dir() -> Path:
    """Where the shipped default models live: $FACELENS_MODELS, else the package's ``shipped_models``.

    ``shipped_models`` is the repository's ``models/`` (a link in a source checkout, copied into the
    wheel), so a pip-installed facelens finds its defaults without a clone.
    """
    env = os.environ.get("FACELENS_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent / "shipped_models"


def default_model_path(task: str) -> Path:
    """The shipped default model of ``task`` (its ``TaskSpec.model_file`` in ``models_dir()``)."""
    return models_dir() / task_spec(task).model_file


@dataclass
class FaceCrops:
    """What the models saw for one face (for the web page and reports)."""

    face: np.ndarray | None = None
    eyes: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Prepared:
    """One photo after decoding, detection and cropping, waiting for the models."""

    result: ImageResult
    dets: list[Detection] = field(default_factory=list)
    face_crops: np.ndarray | None = None  # (F, S, S, 3) uint8 for the age model
    eye_crops: np.ndarray | None = None  # (2F, S, S, 3): left, right eye of each face
    eye_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    crop_seconds: tuple[float, float] = (0.0, 0.0)


def _default_label(src: ImageInput) -> str:
    if isinstance(src, (str, Path)):
        return str(src)
    file_name = getattr(src, "name", None)  # open file objects
    return file_name if isinstance(file_name, str) and file_name else "<image>"


#: Below this estimated age the eyes say little about sex (puberty changes the brow and eye region):
#: the answer carries ``CHILD_CAUTION`` (shown by the text output and the web page).
CHILD_AGE = 13
CHILD_CAUTION = "a child by the age estimate: the eyes tell sex poorly before puberty; treat this as a guess"


COLOR_ORDERS = ("rgb", "bgr")


def as_rgb_input(src: ImageInput, color: str) -> ImageInput:
    """``src`` with an array's channels put in RGB order; ValueError for an unknown ``color`` or a non-array with 'bgr'.

    Why explicit: nothing in a uint8 array tells RGB from BGR, and OpenCV's BGR arrays were
    silently taken as RGB, which changes the estimates.
    """
    color = str(color).lower()
    if color not in COLOR_ORDERS:
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if color == "rgb":
        return src
    if not isinstance(src, np.ndarray):
        raise ValueError(f"color='bgr' applies to numpy arrays (OpenCV images), not to {type(src).__name__}: "
                         "files, bytes and PIL images carry their own channel order")
    if src.ndim == 3 and src.shape[2] in (3, 4):
        order = [2, 1, 0] + ([3] if src.shape[2] == 4 else [])
        return np.ascontiguousarray(src[:, :, order])
    return src  # grayscale: nothing to swap


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _prefetch(pool: ThreadPoolExecutor, fn, items: Iterator[tuple], window: int) -> Iterator[tuple[bool, object]]:
    """``fn(*item)`` for each item in ``pool``, at most ``window`` ahead, in order, as (was_ready, value)."""
    queue: deque[Future] = deque()
    for item in items:
        queue.append(pool.submit(fn, *item))
        while len(queue) >= window:
            fut = queue.popleft()
            yield fut.done(), fut.result()
    while queue:
        fut = queue.popleft()
        yield fut.done(), fut.result()


def _open(model: str | Path | Predictor | None | bool, task: str, backend: str, device: str) -> Predictor | None:
    if model is False:
        return None
    if isinstance(model, Predictor):
        return model
    path = Path(model) if model else default_model_path(task)
    if model is None and not path.is_file():
        return None  # no shipped default yet: the analyzer runs without this task
    # Detection runs between the model calls here, so ONNX Runtime must not spin (OnnxPredictor).
    pred = load_predictor(path, backend=backend, device=device, spin=False)
    if pred.model_meta.task != task:
        raise ModelLoadError(f"{path}: is a {pred.model_meta.task!r} model, expected a {task!r} model")
    return pred


class Analyzer:
    """Detects faces and estimates age (whole face) and sex (each eye region) for every face.

    ``age_model`` / ``eye_model``: a path, a loaded Predictor, None for the shipped default,
    or False to skip that task. ``backend``: 'auto' (ONNX Runtime for .onnx files), 'onnx' or 'torch'.
    ``device``: 'cpu' (default), 'cuda', 'cuda:N' or 'auto' (a GPU when usable); asking for a GPU that
    cannot be used raises DeviceError (``facelens.devices``) instead of running on the CPU unannounced.
    ``detect_max_side``: photos are scaled down to this longest side for detection only (crops
    are cut from pixels fine enough to keep their detail); None means 512 (``DETECT_MAX_SIDE``). Raise it to
    find small faces in large photos.
    ``full_decode``: decode every photo in full, as before issue #22 (for comparisons); by default a
    JPEG is decoded at a reduced DCT scale and each face's crops at the coarsest scale that keeps
    their detail (``FIRST_DECODE_SIDE``, ``facelens.reduced``); the answers then differ from full
    decoding about as much as for a re-saved copy of the photo (``benchmarks/README.md``, issue #22).
    """

    def __init__(
        self,
        age_model: str | Path | Predictor | None | bool = None,
        eye_model: str | Path | Predictor | None | bool = None,
        backend: str = "auto",
        device: str = "cpu",
        min_face_score: float = DEFAULT_MIN_SCORE,
        max_faces: int = 50,
        eye_geometry: EyeCropGeometry | None = None,
        detect_max_side: int | None = None,
        full_decode: bool = False,
    ) -> None:
        check_detect_max_side(detect_max_side)
        check_device_name(device)  # refused even when no model would be loaded (e.g. "gpu")
        self.age = _open(age_model, "age", backend, device)
        self.eyes = _open(eye_model, "eyes", backend, device)
        # The face crop the age model was trained on (its metadata names it; older models used the loose one).
        self.age_template = FaceTemplate.from_meta(self.age.model_meta.crop) if self.age is not None else None
        if self.age is None and self.eyes is None:
            raise ModelLoadError(f"no models to run: none given and no shipped defaults in {models_dir()}")
        self.min_face_score = min_face_score
        self.max_faces = max_faces
        # How the eye model's crops were cut (its metadata names it; older models used the tight one).
        self.eye_geometry = eye_geometry or EyeCropGeometry.from_meta(self.eyes.model_meta.eye_crop if self.eyes else None)
        self.detect_max_side = detect_max_side or DETECT_MAX_SIDE
        self.full_decode = full_decode
        self._decode_budget = MemoryBudget(DECODE_MEMORY_BYTES)
        self._models_info: list[dict] | None = None

    def models_info(self) -> list[dict]:
        """Name, version, precision, test metrics and model-card summary of each loaded model."""
        if self._models_info is None:  # built once: the service answers it with every request
            self._models_info = self._describe_models()
        return copy.deepcopy(self._models_info)

    def _describe_models(self) -> list[dict]:
        from facelens.evaluate.model_card import card_summary

        out = []
        for pred in (self.age, self.eyes):
            if pred is None:
                continue
            m = pred.model_meta
            out.append({"name": m.name, "task": m.task, "arch": m.arch, "version": m.facelens_version,
                        "created": m.created, "input_size": m.input_size, "backend": pred.backend,
                        "device": pred.device, "precision": m.precision, "tta": m.tta,
                        "test_metrics": {k: v for k, v in (m.metrics or {}).items() if not isinstance(v, (dict, list))},
                        "card": card_summary(pred.meta)})
        return out

    # -- whole photos -------------------------------------------------------------------------
    def analyze(self, src: ImageInput, *, name: str | None = None, with_crops: bool = False,
                color: str = "rgb") -> ImageResult:
        """Analyse one photo: a path, encoded bytes, a binary file object, a numpy array or a PIL image.

        Bad inputs (broken files, exotic formats, None, str arrays, truncated lazily opened PIL
        images...) give ``error`` set and no faces, never an exception.

        Faces come in reading order: rows from top to bottom, each row left to right
        (``facelens.face.order``). ``color`` says how a numpy array's channels are ordered:
        'rgb' (default: PIL, scikit-image, imageio) or 'bgr' for OpenCV's ``cv2.imread`` /
        ``VideoCapture`` frames (BGRA too). It matters: an OpenCV frame read as RGB swaps red
        and blue and moves the estimates (P(female) 0.89 -> 0.71 on the demo photo). Files,
        bytes and PIL images carry their own channel order, so ``color='bgr'`` with them is an error.
        """
        return self._finish([self._prepare(as_rgb_input(src, color), name or _default_label(src))], with_crops)[0]

    def analyze_many(self, srcs: Iterable[ImageInput], names: Iterable[str] | None = None, with_crops: bool = False,
                     batch_size: int = 32, workers: int | None = None, color: str = "rgb") -> Iterator[ImageResult]:
        """Analyse photos lazily, one ImageResult per input, in input order.

        Why not just call ``analyze`` in a loop: decoding and detection of the next photos run
        in ``workers`` threads (default 2) while the models run, and the age and eye models see
        batches of up to ``batch_size`` faces gathered from several photos, which is several
        times faster on a CPU than one face at a time. A photo's result is yielded as soon as
        its batch is done; the batch is cut short whenever the next photo is not ready yet, so
        results keep streaming on slow inputs. ``workers=0`` prepares photos in the caller's thread.
        ``color``: channel order of numpy arrays among ``srcs`` ('rgb' or 'bgr', see ``analyze``).

        Memory stays flat with camera-size photos: a worker decodes a JPEG at a reduced scale
        (~1.5-3 MP, ``FIRST_DECODE_SIDE``) and keeps only the crops, so the prefetch window holds
        crops, never frames; the full-size decodes small faces need wait on the Analyzer's decode
        budget (``DECODE_MEMORY_BYTES``), so the two workers do not hold two 24 MP frames at once.
        """
        as_rgb_input(np.zeros((1, 1, 3), np.uint8), color)  # an unknown order fails here, not in a worker
        names_it = iter(names) if names is not None else None

        def labelled() -> Iterator[tuple[ImageInput, str]]:
            for src in srcs:
                label = next(names_it) if names_it is not None else _default_label(src)
                yield as_rgb_input(src, color), label

        workers = min(2, os.cpu_count() or 1) if workers is None else workers
        if workers <= 0:
            yield from self._batched(((True, self._prepare(s, lab)) for s, lab in labelled()), batch_size, with_crops)
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facelens-prepare")
        try:
            yield from self._batched(_prefetch(pool, self._prepare, labelled(), window=2 * batch_size + workers),
                                     batch_size, with_crops)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _batched(self, prepared: Iterator[tuple[bool, _Prepared]], batch_size: int,
                 with_crops: bool) -> Iterator[ImageResult]:
        """Group prepared photos until ``batch_size`` faces (or the next one is not ready), run the models."""
        pending: list[_Prepared] = []
        faces = 0
        for ready, item in prepared:
            if pending and (not ready or faces + len(item.dets) > batch_size):
                yield from self._finish(pending, with_crops)
                pending, faces = [], 0
            pending.append(item)
            faces += len(item.dets)
        if pending:
            yield from self._finish(pending, with_crops)

    def analyze_array(self, rgb: np.ndarray, label: str = "<image>", with_crops: bool = False,
                      t_load: float = 0.0, color: str = "rgb") -> ImageResult:
        """Analyse an already decoded HxWx3 uint8 photo (the web service decodes uploads itself).

        ``color``: 'rgb' (default) or 'bgr' for OpenCV arrays (see ``analyze``).
        """
        return self._finish([self._prepare_array(as_rgb_input(rgb, color), label, t_load)], with_crops)[0]

    def _prepare(self, src: ImageInput, label: str) -> _Prepared:
        """Decode, detect and cut the model crops for one photo; never raises (errors go in the result).

        JPEGs are decoded at a reduced scale (``load_reduced``), so the prefetch window of
        ``analyze_many`` and the decoding workers hold ~1.5 MP, not 24 MP frames; ``full_decode``
        turns that off.
        """
        t0 = time.perf_counter()
        min_side = sys.maxsize if self.full_decode else max(self.detect_max_side, FIRST_DECODE_SIDE)
        try:
            img = load_reduced(src, name=label, min_side=min_side, budget=self._decode_budget)
        except ImageLoadError as exc:
            return _Prepared(ImageResult(path=label, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - load_reduced maps every failure; this guards the promise anyway
            return _Prepared(ImageResult(path=label, error=f"{label}: could not load ({type(exc).__name__}: {exc})"))
        return self._prepare_reduced(img, label, time.perf_counter() - t0)

    def _prepare_array(self, rgb: np.ndarray, label: str, t_load: float) -> _Prepared:
        return self._prepare_reduced(ReducedImage.of_array(rgb), label, t_load)

    def _prepare_reduced(self, img: ReducedImage, label: str, t_load: float) -> _Prepared:
        """Detect on the decoded pixels, report in full-image pixels, cut each crop at full detail."""
        result = ImageResult(path=label, width=img.full_size[0], height=img.full_size[1])
        t0 = time.perf_counter()
        try:
            found = detect_faces(img.pixels, self.min_face_score, self.detect_max_side)[: self.max_faces]  # the largest
            dets = [d.mapped(img.to_full) for d in found]
            dets = [dets[i] for i in reading_order([d.box for d in dets])]  # face 1 is the top-left one
            t1 = time.perf_counter()
            result.timings_ms = {"load": _ms(t_load), "detect": _ms(t1 - t0)}
            if not dets:
                result.message = NO_FACE_MESSAGE
                return _Prepared(result)
            item = _Prepared(result, dets)
            sources = self._crop_sources(img, dets)
            t_refine = time.perf_counter() - t1
            result.timings_ms["load"] = _ms(t_load + t_refine)  # a finer decode is decoding too
            t1 += t_refine
            if self.age is not None:
                size = self.age.model_meta.input_size
                item.face_crops = np.stack([align_face(src.pixels, src.from_full_centre(d.anchor_points()), size,
                                                       self.age_template)[0] for d, src in zip(dets, sources, strict=True)])
            t2 = time.perf_counter()
            if self.eyes is not None:
                size = self.eyes.model_meta.input_size
                crops = []
                for d, src in zip(dets, sources, strict=True):
                    for eye, other in ((d.left_eye, d.right_eye), (d.right_eye, d.left_eye)):
                        e, o, m = src.from_full_centre(np.array([eye, other, d.mouth]))
                        c, (x, y, w, h) = cut_eye(src.pixels, e, o, size, self.eye_geometry, m)
                        crops.append(c)
                        (fx, fy), = src.to_full_centre(np.array([[x, y]]))
                        item.eye_boxes.append((float(fx), float(fy), w * src.factor, h * src.factor))
                item.eye_crops = np.stack(crops)
            t3 = time.perf_counter()
            item.crop_seconds = (t2 - t1, t3 - t2)
            return item
        except ImageLoadError as exc:  # a finer decode of the region failed
            return _Prepared(ImageResult(path=label, width=result.width, height=result.height, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one odd photo must not stop a batch of thousands
            return _Prepared(ImageResult(path=label, width=result.width, height=result.height,
                                         error=f"{label}: analysis failed ({type(exc).__name__}: {exc})"))

    def _crop_needs(self, d: Detection) -> tuple[float, tuple[float, float, float, float]]:
        """(largest crop px per full px over this face's crops, the full-image box they read from)."""
        transforms = []
        if self.age is not None:
            size = self.age.model_meta.input_size
            transforms.append((similarity_transform(d.anchor_points(), self.age_template.points(size)), size))
        if self.eyes is not None:
            size = self.eyes.model_meta.input_size
            for eye, other in ((d.left_eye, d.right_eye), (d.right_eye, d.left_eye)):
                transforms.append((eye_crop_transform(np.array(eye), np.array(other), size, self.eye_geometry,
                                                      np.array(d.mouth)), size))
        boxes = np.array([crop_footprint(m, size) for m, size in transforms])
        box = (*boxes[:, :2].min(0), *boxes[:, 2:].max(0))
        return max(crop_scale(m) for m, _ in transforms), box

    def _crop_sources(self, img: ReducedImage, dets: list[Detection]) -> list[ReducedImage]:
        """For each face, the decode its crops are cut from: ``img`` when its scale keeps the crops' detail.

        Faces too small for it share one finer decode (the finest any of them needs), each keeping
        only the region its crops read, so a photo costs at most one more decode and falls back to
        full-size pixels only for faces that need them.
        """
        needs = [self._crop_needs(d) for d in dets]
        factors = [coarsest_factor(upscale) for upscale, _ in needs]
        small = [i for i, f in enumerate(factors) if f < img.factor]
        if not small:
            return [img] * len(dets)
        pad = 2 * img.factor  # interpolation support, and the decoded pixel grid around each box
        boxes = [tuple(np.add(needs[i][1], (-pad, -pad, pad, pad))) for i in small]
        fine = dict(zip(small, img.finer(min(factors[i] for i in small), boxes), strict=True))
        return [fine.get(i, img) for i in range(len(dets))]

    def _finish(self, items: list[_Prepared], with_crops: bool) -> list[ImageResult]:
        """Run the models once on all faces of ``items`` and fill in their results (input order kept).

        Model time is shared out to photos in proportion to their faces, so per-photo timings
        still add up to the wall time spent.
        """
        n_faces = sum(len(it.dets) for it in items)
        ages: list[AgeEstimate] | None = None
        sexes: list[SexEstimate] | None = None
        t_age = t_eyes = 0.0
        if n_faces and self.age is not None:
            t0 = time.perf_counter()
            value, low, high = decode_age(self.age(np.concatenate([it.face_crops for it in items if it.dets])),
                                          self.age.model_meta)
            interval = float(self.age.model_meta.interval)
            ages = [AgeEstimate(value=float(v), low=float(lo), high=float(hi), interval=interval)
                    for v, lo, hi in zip(value, low, high, strict=True)]
            t_age = time.perf_counter() - t0
        if n_faces and self.eyes is not None:
            t0 = time.perf_counter()
            logits = self.eyes(np.concatenate([it.eye_crops for it in items if it.dets])).reshape(-1)
            p = decode_eyes(logits, self.eyes.model_meta)
            p_face = decode_face_logits(logits.reshape(-1, 2).mean(1), self.eyes.model_meta)
            boxes = [b for it in items for b in it.eye_boxes]
            sexes = []
            for i in range(n_faces):
                eyes = (EyeEstimate(side="left", p_female=float(p[2 * i]), box=boxes[2 * i]),
                        EyeEstimate(side="right", p_female=float(p[2 * i + 1]), box=boxes[2 * i + 1]))
                young = ages is not None and ages[i].value < CHILD_AGE
                sexes.append(SexEstimate(p_female=float(p_face[i]), eyes=eyes, caution=CHILD_CAUTION if young else None))
            t_eyes = time.perf_counter() - t0
        out, k = [], 0
        for it in items:
            r = it.result
            if it.dets:
                n = len(it.dets)
                share = n / n_faces
                r.timings_ms |= {"age": _ms(it.crop_seconds[0] + share * t_age),
                                 "eyes": _ms(it.crop_seconds[1] + share * t_eyes)}
                r.faces = [
                    Face(box=d.box, score=d.score, landmarks=d.landmarks(), age=ages[k + i] if ages else None,
                         sex=sexes[k + i] if sexes else None)
                    for i, d in enumerate(it.dets)
                ]
                if with_crops:
                    r.crops = [FaceCrops(it.face_crops[i] if it.face_crops is not None else None,
                                         {"left": it.eye_crops[2 * i], "right": it.eye_crops[2 * i + 1]}
                                         if it.eye_crops is not None else {})
                               for i in range(n)]
                k += n
            out.append(r)
        return out

    # -- single eye crops ---------------------------------------------------------------------
    def predict_eye_crops(self, srcs: Iterable[ImageInput], names: Iterable[str] | None = None,
                          check_face_photo: bool = True) -> list[EyeCropResult]:
        """P(female) for ready-made single-eye crops, like the Kaggle eye set.

        ``check_face_photo``: run the face detector on each input and set ``warning`` when it
        looks like a whole face photo rather than an eye crop (``facelens.face.eyecheck``);
        about 3 ms per crop.
        """
        if self.eyes is None:
            raise ModelLoadError("no eye model loaded")
        size = self.eyes.model_meta.input_size
        names_l = list(names) if names is not None else None
        results: list[EyeCropResult | None] = []
        crops, where = [], []
        for i, src in enumerate(srcs):
            label = names_l[i] if names_l else _default_label(src)
            try:
                rgb = load_image(src, name=label)
                crops.append(eye_crop_from_image(rgb, size))
                where.append((i, label, FACE_PHOTO_WARNING if check_face_photo and looks_like_face_photo(rgb) else None))
                results.append(None)
            except ImageLoadError as exc:
                results.append(EyeCropResult(path=label, error=str(exc)))
        if crops:
            p = decode_eyes(self.eyes(np.stack(crops)), self.eyes.model_meta)
            for (i, label, warning), pf in zip(where, p, strict=True):
                results[i] = EyeCropResult(path=label, p_female=float(pf), warning=warning)
        return [r for r in results if r is not None]


def analyze(src: ImageInput, **kwargs) -> ImageResult:
    """One-shot convenience: ``facelens.analyze("photo.jpg")`` with the default models."""
    return Analyzer(**kwargs).analyze(src)
