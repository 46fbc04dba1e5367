"""One upload, analysed: decode under a memory budget, run the Analyzer, render, all within a deadline.

Why apart from the routes: this is the work a request waits for, and it runs in a worker thread
(``run_capped``) behind a ``CapacityLimiter`` sized to the CPU count, so the event loop keeps
answering /healthz while photos are analysed and a burst of uploads queues instead of
thrashing the CPU. A request waits and runs at most ``request_timeout`` seconds (503 when it
never got a slot, 504 when it ran out of time); decodes share a memory budget sized from each
image's header (``MemoryBudget``), so hostile 16-bit or 64 MP uploads queue instead of adding up.
"""

from __future__ import annotations

import base64
import threading
import time
from contextlib import ExitStack
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from facelens.errors import ImageLoadError
from facelens.images import MemoryBudget, decode_memory_estimate, decode_opened, open_image
from facelens.serve import render
from facelens.serve.errors import ApiError

#: ImageLoadError.reason -> HTTP status. The image is the client's problem in every case.
REASON_STATUS = {
    "empty": 400,
    "not_an_image": 415,
    "unsupported_mode": 415,
    "truncated": 422,
    "corrupt": 422,
    "too_large": 422,
    "too_small": 422,
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _crops_dict(crops: Any) -> dict[str, str | None]:
    eyes = getattr(crops, "eyes", {}) or {}
    face = getattr(crops, "face", None)
    return {
        "face": _b64(render.to_png(face)) if face is not None else None,
        "right_eye": _b64(render.to_png(eyes["right"])) if "right" in eyes else None,
        "left_eye": _b64(render.to_png(eyes["left"])) if "left" in eyes else None,
        "both_eyes": _b64(render.to_png(eyes["both"])) if "both" in eyes else None,
    }


class Expired(Exception):
    """The request's processing deadline passed; raised between stages so abandoned work stops early."""


def _check_deadline(deadline: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise Expired(stage)


#: Decode memory shared by the requests of this process (``ServiceLimits.decode_memory_bytes``).
_BUDGETS: dict[int, MemoryBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def decode_budget(nbytes: int) -> MemoryBudget:
    """One budget per size, per process: every app built with the same limit shares it."""
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(nbytes, MemoryBudget(nbytes))


def analyze_bytes(analyzer: Any, data: bytes, name: str, annotate: bool, crops: bool,
                  deadline: float | None = None, budget: MemoryBudget | None = None) -> dict[str, Any]:
    """Decode, analyse and (optionally) render one upload; raises ApiError for bad images.

    ``deadline`` (``time.monotonic()``): checked before each stage, so work abandoned by a timed
    out request stops at the next stage. ``budget``: the decode waits until the image's
    estimated memory (from its header) fits, and holds it until the answer is built.
    """
    t0 = time.perf_counter()
    _check_deadline(deadline, "queued")
    try:
        img = open_image(data, name)  # header only: format and size checked, nothing decoded yet
    except ImageLoadError as exc:
        raise ApiError(REASON_STATUS.get(exc.reason, 422), exc.reason, exc.message) from exc
    need = decode_memory_estimate(img.width, img.height, img.mode)
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        with ExitStack() as stack:
            if budget is not None:
                try:
                    stack.enter_context(budget.hold(need, timeout=wait))
                except TimeoutError:
                    raise Expired("queued") from None  # the memory never came free: the server is busy
            return _analyze_decoded(analyzer, img, name, annotate, crops, deadline, t0)
    finally:
        img.close()


def _analyze_decoded(analyzer: Any, img: Any, name: str, annotate: bool, crops: bool, deadline: float | None,
                     t0: float) -> dict[str, Any]:
    _check_deadline(deadline, "decode")
    try:
        rgb: np.ndarray = decode_opened(img, name)
    except ImageLoadError as exc:
        raise ApiError(REASON_STATUS.get(exc.reason, 422), exc.reason, exc.message) from exc
    t_load = time.perf_counter() - t0
    _check_deadline(deadline, "analysis")
    result = analyzer.analyze_array(rgb, name, with_crops=crops, t_load=t_load)
    out = result.to_dict()
    if crops:
        for face_dict, face_crops in zip(out["faces"], result.crops, strict=False):
            face_dict["crops"] = _crops_dict(face_crops)
    timings = dict(result.timings_ms)
    if annotate:
        _check_deadline(deadline, "render")
        t1 = time.perf_counter()
        out["annotated_jpeg"] = _b64(render.annotated_jpeg(rgb, result.faces))
        timings["render"] = round((time.perf_counter() - t1) * 1000, 2)
    timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
    out["timings_ms"] = timings
    out["models"] = models_summary(analyzer)
    return out


def models_summary(analyzer: Any) -> dict[str, dict[str, Any]]:
    """Name and version of the model behind each task, for every answer (reproducibility)."""
    return {m["task"]: {"name": m["name"], "version": m.get("version"), "arch": m.get("arch")}
            for m in analyzer.models_info()}


async def run_capped(analyzer: Any, data: bytes, name: str, annotate: bool, crops: bool, *,
                     limiter: anyio.CapacityLimiter | None, request_timeout: float,
                     budget: MemoryBudget | None) -> dict[str, Any]:
    """Queue for a slot of ``limiter`` and analyse, within ``request_timeout``: 503 if no slot came, 504 if the
    work overran. The work runs in a worker thread, so the event loop keeps answering meanwhile."""
    cap = request_timeout
    deadline = time.monotonic() + cap
    started = threading.Event()

    def work() -> dict[str, Any]:
        started.set()
        return analyze_bytes(analyzer, data, name, annotate, crops, deadline=deadline, budget=budget)

    try:
        with anyio.fail_after(cap):
            return await anyio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
    except (TimeoutError, Expired) as exc:
        if isinstance(exc, Expired) and str(exc) == "queued" or not started.is_set():
            raise ApiError(503, "busy", f"the server is busy: no analysis slot became free within {cap:.0f} s; "
                                        "retry later") from None
        raise ApiError(504, "timeout", f"the analysis did not finish within the {cap:.0f} s processing cap "
                                       f"(stopped at: {exc if isinstance(exc, Expired) else 'analysis'})") from None
