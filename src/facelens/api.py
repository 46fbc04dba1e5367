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
from facelens.face.align import EyeGeometry, FaceTemplate, crop_footprint, crop_scale, eye_geometry_from_meta
from facelens.face.detect import DEFAULT_MIN_SCORE, DETECT_MAX_SIDE, Detection, check_detect_max_side, detect_faces
from facelens.face.eyecheck import FACE_PHOTO_WARNING, looks_like_face_photo
from facelens.face.order import reading_order
from facelens.images import ImageInput, MemoryBudget, load_image, load_reduced
from facelens.infer.face_tasks import CHILD_AGE as CHILD_AGE  # re-exported: the child caution's rule lives there
from facelens.infer.face_tasks import CHILD_CAUTION as CHILD_CAUTION
from facelens.infer.face_tasks import FACE_TASKS, AgeTask, EyesTask, FaceTask, TaskCrops
from facelens.infer.postprocess import decode_eyes
from facelens.infer.predictor import Predictor, load_predictor
from facelens.reduced import ReducedImage, coarsest_factor
from facelens.schema import EyeCropResult, Face, ImageResult
from facelens.tasks import AGE, EYES, TASKS
from facelens.tasks import default_model_path as default_model_path  # re-exported: the public API's name
from facelens.tasks import models_dir as models_dir

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
    crops: dict[str, TaskCrops] = field(default_factory=dict)  # by task, for each task the Analyzer runs


def _default_label(src: ImageInput) -> str:
    if isinstance(src, (str, Path)):
        return str(src)
    file_name = getattr(src, "name", None)  # open file objects
    return file_name if isinstance(file_name, str) and file_name else "<image>"


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

    ``tasks``: the tasks it runs on every face, by name in ``facelens.tasks.TASKS`` order, each a
    ``facelens.infer.face_tasks.FaceTask`` holding its model; ``age`` / ``eyes`` are their predictors.
    """

    def __init__(
        self,
        age_model: str | Path | Predictor | None | bool = None,
        eye_model: str | Path | Predictor | None | bool = None,
        backend: str = "auto",
        device: str = "cpu",
        min_face_score: float = DEFAULT_MIN_SCORE,
        max_faces: int = 50,
        eye_geometry: EyeGeometry | None = None,
        detect_max_side: int | None = None,
        full_decode: bool = False,
    ) -> None:
        check_detect_max_side(detect_max_side)
        check_device_name(device)  # refused even when no model would be loaded (e.g. "gpu")
        models = {"age": age_model, "eyes": eye_model}
        predictors = {name: _open(model, name, backend, device) for name, model in models.items()}
        options = {"eyes": {"geometry": eye_geometry}}  # an eye crop geometry given overrides the model's
        self.tasks: dict[str, FaceTask] = {name: FACE_TASKS[name](pred, **options.get(name, {}))
                                           for name, pred in predictors.items() if pred is not None}
        if not self.tasks:
            raise ModelLoadError(f"no models to run: none given and no shipped defaults in {models_dir()}")
        self._eye_geometry = eye_geometry or eye_geometry_from_meta(None)
        self.min_face_score = min_face_score
        self.max_faces = max_faces
        self.detect_max_side = detect_max_side or DETECT_MAX_SIDE
        self.full_decode = full_decode
        self._decode_budget = MemoryBudget(DECODE_MEMORY_BYTES)
        self._models_info: list[dict] | None = None

    @property
    def age(self) -> Predictor | None:
        """The age model, None when the Analyzer runs without it."""
        return self._predictor("age")

    @property
    def eyes(self) -> Predictor | None:
        """The eye model, None when the Analyzer runs without it."""
        return self._predictor("eyes")

    def _predictor(self, task: str) -> Predictor | None:
        face_task = self.tasks.get(task)
        return face_task.predictor if face_task is not None else None

    @property
    def age_template(self) -> FaceTemplate | None:
        """The face crop the age model was trained on (its metadata names it); None without an age model."""
        task = self.tasks.get("age")
        return task.template if isinstance(task, AgeTask) else None

    @property
    def eye_geometry(self) -> EyeGeometry:
        """How eye crops are cut: as the eye model was trained (its metadata), unless given to the constructor."""
        task = self.tasks.get("eyes")
        return task.geometry if isinstance(task, EyesTask) else self._eye_geometry

    def models_info(self) -> list[dict]:
        """Name, version, precision, test metrics and model-card summary of each loaded model."""
        if self._models_info is None:  # built once: the service answers it with every request
            self._models_info = self._describe_models()
        return copy.deepcopy(self._models_info)

    def _describe_models(self) -> list[dict]:
        from facelens.evaluate.model_card import card_summary

        out = []
        for task in self.tasks.values():
            pred = task.predictor
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
            item.crops = {task.name: task.cut_faces(dets, sources) for task in self.tasks.values()}
            return item
        except ImageLoadError as exc:  # a finer decode of the region failed
            return _Prepared(ImageResult(path=label, width=result.width, height=result.height, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one odd photo must not stop a batch of thousands
            return _Prepared(ImageResult(path=label, width=result.width, height=result.height,
                                         error=f"{label}: analysis failed ({type(exc).__name__}: {exc})"))

    def _crop_needs(self, d: Detection) -> tuple[float, tuple[float, float, float, float]]:
        """(largest crop px per full px over this face's crops, the full-image box they read from)."""
        transforms = [t for task in self.tasks.values() for t in task.crop_transforms(d)]
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
        Each task runs in turn (``self.tasks`` order), so it may read the estimates of those before it.
        Every result with faces has a timing per task in ``TASKS``: cutting its crops plus its share
        of the model time (0 for a task the Analyzer does not run).
        """
        faced = [it for it in items if it.dets]
        n_faces = sum(len(it.dets) for it in faced)
        estimates: dict[str, list] = {}  # by Face field: one estimate per face of ``faced``
        model_seconds: dict[str, float] = {}
        if n_faces:
            for task in self.tasks.values():
                t0 = time.perf_counter()
                cuts = [it.crops[task.name] for it in faced]
                estimates[task.face_field] = task.estimate(np.concatenate([c.pixels for c in cuts]),
                                                           [b for c in cuts for b in c.boxes], estimates)
                model_seconds[task.name] = time.perf_counter() - t0
        k = 0
        for it in faced:
            r, n = it.result, len(it.dets)
            share = n / n_faces
            r.timings_ms |= {name: _ms((it.crops[name].seconds if name in it.crops else 0.0)
                                       + share * model_seconds.get(name, 0.0)) for name in TASKS}
            r.faces = [Face(box=d.box, score=d.score, landmarks=d.landmarks(),
                            **{fld: per_face[k + i] for fld, per_face in estimates.items()})
                       for i, d in enumerate(it.dets)]
            if with_crops:
                r.crops = [self._face_crops(it.crops, i) for i in range(n)]
            k += n
        return [it.result for it in items]

    def _face_crops(self, crops: dict[str, TaskCrops], i: int) -> FaceCrops:
        """What the models saw of face ``i`` of a photo."""
        shown = {}
        for task in self.tasks.values():
            per = task.crops_per_face
            shown |= task.shown_crops(crops[task.name].pixels[i * per : (i + 1) * per])
        return FaceCrops(**shown)

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
        if self.eye_geometry.sides == ("both",):
            raise ModelLoadError(f"the eye model {self.eyes.model_meta.name!r} reads both eyes of a face in one crop; "
                                 "ready-cut single-eye crops need a single-eye model (the shipped one: "
                                 f"{default_model_path('eyes', ready_cut=True)})")
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
