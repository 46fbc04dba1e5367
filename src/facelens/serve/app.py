"""FastAPI application: ``POST /v1/analyze``, ``/healthz``, ``/v1/models``, ``/docs`` and the web page at ``/``.

Design choices, and why:

* One Analyzer, loaded once in the lifespan and shared by every request (ONNX Runtime
  sessions are thread-safe; the detector takes its own lock). Loading per request would
  cost seconds.
* Decoding and inference run in worker threads behind a ``CapacityLimiter`` sized to the
  CPU count, so the event loop keeps answering /healthz while photos are analysed and a
  burst of uploads queues instead of thrashing the CPU.
* Uploads are read as a stream and refused (413) as soon as they pass the limit; the body is
  never read unbounded into memory. Multipart files spool to disk past 1 MB (Starlette).
* Every failure a client can cause has an explicit status and a JSON body
  ``{"error": {"code", "message"}}`` (405 carries ``Allow``); a last-resort middleware logs
  anything unexpected in one line and answers JSON 500 with ``Connection: close``, so one bad
  request never takes the server, or the keep-alive connection it shared, down with it.
* Limits (``ServiceLimits``, issue #20): uploads must arrive within a deadline and must not
  stall; a request waits and runs at most ``request_timeout`` seconds (503 when it never got a
  slot, 504 when it ran out of time); decodes share a memory budget sized from each image's
  header (``MemoryBudget``), so hostile 16-bit or 64 MP uploads queue instead of adding up.
  Header deadlines, the connection cap and JSON protocol errors are in ``serve.protocol``.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs and /redoc served from the wheel, no CDN
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facelens import __version__ as FACELENS_VERSION
from facelens.errors import FacelensError, ImageLoadError
from facelens.images import MemoryBudget, decode_memory_estimate, decode_opened, open_image
from facelens.serve import multi, render
from facelens.serve.protocol import HardenedH11Protocol, ServiceLimits, json_error_bytes
from facelens.serve.responses import (
    AnalyzeListResponse,
    AnalyzeResponse,
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
)

log = logging.getLogger("facelens.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
READ_CHUNK = 64 * 1024

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


class ApiError(Exception):
    """A failure with a known HTTP status, answered as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}}, headers=headers)


# -- last resort: JSON 500, one log line, connections closed cleanly ------------------------------
def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"


class ErrorBoundary:
    """ASGI middleware: nothing escapes to uvicorn, and error responses end their connection when needed.

    Why: an exception that escapes the app after the 500 was sent makes uvicorn log a ~9.5 KB
    traceback and close the socket without ``Connection: close``; a client reusing that
    keep-alive connection then fails an unrelated request. Here an unexpected exception becomes
    a JSON 500 and one log line (the traceback only at DEBUG), and every 5xx, 408 and 413, and
    any error sent before the request body was read to the end, carries ``Connection: close``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        body_done = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") in (b"0", b"")
        started = False

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if status >= 500 or status in (408, 413) or (status >= 400 and not body_done):
                    hdrs = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*hdrs, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, tracked_receive, guarded_send)
        except ClientDisconnect:
            log.info("client went away during %s %s", scope.get("method"), scope.get("path"))
        except Exception as exc:  # noqa: BLE001 - the boundary: log once, answer JSON, keep serving
            log.error("unexpected error on %s %s: %s: %s (at %s)", scope.get("method"), scope.get("path"),
                      type(exc).__name__, " ".join(str(exc).split())[:300], _where(exc))
            log.debug("traceback of the unexpected error", exc_info=exc)
            if not started:
                body = json_error_bytes("internal_error", f"unexpected server error ({type(exc).__name__}); it has been logged")
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})


# -- reading uploads --------------------------------------------------------------------------
async def _body_chunks(request: Request, limits: ServiceLimits) -> AsyncGenerator[bytes, None]:
    """The request body, with deadlines: 408 when no byte comes for ``body_idle_timeout`` seconds
    or the whole body is not in after ``body_timeout`` (a client sending 1 byte/s holds a slot)."""
    stream = request.stream().__aiter__()
    give_up = anyio.current_time() + limits.body_timeout
    while True:
        left = give_up - anyio.current_time()
        wait = min(limits.body_idle_timeout, left)
        try:
            if wait <= 0:
                raise TimeoutError
            with anyio.fail_after(wait):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            stalled = left > limits.body_idle_timeout
            raise ApiError(408, "body_timeout",
                           f"the upload stalled: no data for {limits.body_idle_timeout:.0f} s" if stalled else
                           f"the upload did not arrive within {limits.body_timeout:.0f} s") from None
        yield chunk


async def _limited_stream(request: Request, limit: int, file_limit: int,
                          limits: ServiceLimits | None = None) -> AsyncGenerator[bytes, None]:
    """Yield the request body, raising 413 as soon as more than ``limit`` bytes arrived (and 408 when it
    stalls past the ``limits`` deadlines)."""
    limits = limits or ServiceLimits()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(file_limit)
    seen = 0
    async for chunk in _body_chunks(request, limits):
        seen += len(chunk)
        if seen > limit:
            raise _too_large(file_limit)
        if chunk:
            yield chunk


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"upload is larger than the limit of {limit / 1024 / 1024:.1f} MB")


async def read_upload(request: Request, max_bytes: int, limits: ServiceLimits | None = None) -> tuple[bytes, str]:
    """Return (image bytes, name) from a raw image body (multipart forms are read by ``serve.multi.read_form``)."""
    limits = limits or ServiceLimits()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        chunks = [c async for c in _limited_stream(request, max_bytes, max_bytes, limits)]
        return b"".join(chunks), "upload"
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {ctype!r} is not accepted: send multipart/form-data with a 'file' field "
                   "or an image/* body")


# -- analysis (runs in a worker thread) --------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _crops_dict(crops: Any) -> dict[str, str | None]:
    eyes = getattr(crops, "eyes", {}) or {}
    face = getattr(crops, "face", None)
    return {
        "face": _b64(render.to_png(face)) if face is not None else None,
        "right_eye": _b64(render.to_png(eyes["right"])) if "right" in eyes else None,
        "left_eye": _b64(render.to_png(eyes["left"])) if "left" in eyes else None,
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


# -- application --------------------------------------------------------------------------------
@dataclass
class ServiceState:
    analyzer: Any = None
    load_error: str | None = None  # for clients: says what failed, never the server's paths
    limiter: anyio.CapacityLimiter | None = None


def public_load_error(exc: Exception) -> str:
    """What clients are told when the models did not load: the kind of failure, not the server's paths."""
    return (f"the models could not be loaded ({type(exc).__name__}); the server log has the details. "
            "An operator can set FACELENS_MODELS or install the shipped models.")


def create_app(analyzer: Any = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_concurrent: int | None = None, processes: int = 1, detect_max_side: int | None = None,
               limits: ServiceLimits | None = None, max_photos: int = multi.DEFAULT_MAX_PHOTOS,
               max_total_bytes: int | None = None) -> FastAPI:
    """Build the app. ``analyzer=None`` loads the default models at startup (lifespan).

    ``limits``: body deadlines, processing cap and decode memory budget (``ServiceLimits``).
    ``max_photos`` / ``max_total_bytes``: limits of the several-photos form (``serve.multi``);
    the total defaults to ``multi.TOTAL_FACTOR`` times ``max_upload_bytes``.

    ``max_concurrent``: analyses running at once (default: CPU count); the rest wait.
    ``processes``: worker processes sharing the machine; each detection gets its share of the cores.
    ``detect_max_side``: for the loaded analyzer, the longest side photos are detected at
    (default 512, see ``facelens.face.detect``); raise it to find small faces in large photos.
    """
    state = ServiceState(analyzer=analyzer)
    limits = limits or ServiceLimits()
    budget = decode_budget(limits.decode_memory_bytes)
    max_total = max_total_bytes or multi.TOTAL_FACTOR * max_upload_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from facelens.face.detect import set_detection_threads

        set_detection_threads((os.cpu_count() or 1) // max(1, processes))
        state.limiter = anyio.CapacityLimiter(max_concurrent or os.cpu_count() or 1)
        if state.analyzer is None:
            try:
                from facelens.api import Analyzer

                state.analyzer = await anyio.to_thread.run_sync(lambda: Analyzer(detect_max_side=detect_max_side))
                log.info("models loaded: %s", models_summary(state.analyzer))
            except FacelensError as exc:  # keep serving /healthz so operators see why
                state.load_error = public_load_error(exc)
                log.error("could not load models: %s", exc)
        yield

    app = FastAPIOffline(
        title="facelens",
        version=FACELENS_VERSION,
        lifespan=lifespan,
        description="Age from the face and sex from the eye region, as estimates with uncertainty. "
        "Upload a photo to `POST /v1/analyze`. " + multi.limits_text(max_upload_bytes, max_photos, max_total),
    )
    app.state.facelens = state
    app.state.max_upload_bytes = max_upload_bytes
    app.state.limits = limits
    app.add_middleware(ErrorBoundary)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error_response(422, "invalid_request", msg or "invalid request")

    def _analyzer() -> Any:
        if state.analyzer is None:
            raise ApiError(503, "models_unavailable", state.load_error or "models are still loading")
        return state.analyzer

    @app.get("/healthz", tags=["service"], response_model=HealthResponse)
    async def healthz() -> dict[str, Any]:
        """Liveness and readiness: ``models_loaded`` is false until the models are in memory."""
        loaded = state.analyzer is not None
        return {"status": "ok" if loaded else "degraded", "models_loaded": loaded,
                "models": models_summary(state.analyzer) if loaded else {}, "error": state.load_error,
                "version": FACELENS_VERSION, "max_upload_bytes": app.state.max_upload_bytes}

    @app.get("/v1/models", tags=["analysis"], response_model=ModelsResponse,
             responses={503: {"model": ErrorResponse, "description": "models unavailable"}})
    async def models() -> dict[str, Any]:
        """Every loaded model: name, task, architecture, version, input size, test metrics."""
        return {"models": _analyzer().models_info()}

    @app.post(
        "/v1/analyze",
        tags=["analysis"],
        response_model=AnalyzeResponse | AnalyzeListResponse,
        response_model_exclude_unset=True,  # annotated_jpeg / crops only when asked for
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {"schema": multi.openapi_multipart_schema()},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
                "required": True,
            }
        },
        responses={400: {"model": ErrorResponse, "description": "empty body, no 'file' field, or more photos than allowed"},
                   408: {"model": ErrorResponse, "description": "upload too slow"},
                   413: {"model": ErrorResponse, "description": "upload too large (a photo, or a several-photos request in all)"},
                   415: {"model": ErrorResponse, "description": "not an image"},
                   422: {"model": ErrorResponse, "description": "damaged, too large or too small image"},
                   503: {"model": ErrorResponse, "description": "busy (no slot within the processing cap) or models unavailable"},
                   504: {"model": ErrorResponse, "description": "analysis ran past the processing cap"}},
    )
    async def analyze(
        request: Request,
        annotate: Annotated[bool, Query(description="add 'annotated_jpeg' (base64) with boxes and labels")] = False,
        crops: Annotated[bool, Query(description="add per face base64 PNGs of the face and eye crops the models saw")
                         ] = False,
    ) -> dict[str, Any]:
        """Detect every face; estimate age (value and 80% interval) and P(female)/P(male) from both eyes.

        Send the photo as multipart field ``file`` or as a raw ``image/*`` body. A photo with no
        face is not an error: 200 with ``faces: []`` and ``message: "no face found"``. Faces are
        listed in reading order (rows top to bottom, each left to right). Several photos: see
        the ``files`` field and its limits in the API description.
        """
        analyzer = _analyzer()
        limit = app.state.max_upload_bytes

        async def run_one(data: bytes, name: str) -> dict[str, Any]:
            return await _run_capped(analyzer, data, name, annotate, crops)

        if multi.is_multipart(request):  # 'file' (one photo, as always) or 'files' (a list answer)
            form = await multi.read_form(request, lambda lim, file_lim: _limited_stream(request, lim, file_lim, limits),
                                         limit, max_photos, max_total)
            if form.list_form:
                return await multi.answer_list(form, analyzer, run_one, limit)
            data, name = await multi.read_single(form, limit)
        else:
            data, name = await read_upload(request, limit, limits)
        if not data:
            raise ApiError(400, "empty", "the upload is empty (0 bytes)")
        return await run_one(data, name)

    async def _run_capped(analyzer: Any, data: bytes, name: str, annotate: bool, crops: bool) -> dict[str, Any]:
        """Queue for a slot and analyse, within ``request_timeout``: 503 if no slot came, 504 if the work overran."""
        cap = limits.request_timeout
        deadline = time.monotonic() + cap
        started = threading.Event()

        def work() -> dict[str, Any]:
            started.set()
            return analyze_bytes(analyzer, data, name, annotate, crops, deadline=deadline, budget=budget)

        try:
            with anyio.fail_after(cap):
                return await anyio.to_thread.run_sync(work, limiter=state.limiter, abandon_on_cancel=True)
        except (TimeoutError, Expired) as exc:
            if isinstance(exc, Expired) and str(exc) == "queued" or not started.is_set():
                raise ApiError(503, "busy", f"the server is busy: no analysis slot became free within {cap:.0f} s; "
                                            "retry later") from None
            raise ApiError(504, "timeout", f"the analysis did not finish within the {cap:.0f} s processing cap "
                                           f"(stopped at: {exc if isinstance(exc, Expired) else 'analysis'})") from None

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_factory() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers (settings come from the environment)."""
    limit = int(os.environ.get("FACELENS_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))
    side = int(os.environ.get("FACELENS_DETECT_MAX_SIDE", 0)) or None
    return create_app(max_upload_bytes=limit, processes=int(os.environ.get("FACELENS_WORKERS", 1)),
                      detect_max_side=side, limits=ServiceLimits.from_env())


def uvicorn_options(limits: ServiceLimits) -> dict[str, Any]:
    """uvicorn settings that go with ``limits``: the hardened protocol, keep-alive, no websockets."""
    return {"http": HardenedH11Protocol, "ws": "none", "timeout_keep_alive": limits.keep_alive_timeout,
            "h11_max_incomplete_event_size": 16 * 1024, "timeout_graceful_shutdown": 10}


def run_server(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_upload_mb: float = 10.0,
               detect_max_side: int | None = None, request_timeout: float | None = None) -> None:
    """Run the service with uvicorn (what ``facelens serve`` calls)."""
    import dataclasses

    import uvicorn

    limit = int(max_upload_mb * 1024 * 1024)
    limits = ServiceLimits.from_env()
    if request_timeout is not None:
        limits = dataclasses.replace(limits, request_timeout=request_timeout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if workers > 1:
        # Each worker process imports the factory and loads its own copy of the models.
        os.environ["FACELENS_MAX_UPLOAD_BYTES"] = str(limit)
        os.environ["FACELENS_WORKERS"] = str(workers)
        os.environ["FACELENS_DETECT_MAX_SIDE"] = str(detect_max_side or 0)
        limits.to_env(os.environ)
        uvicorn.run("facelens.serve.app:app_factory", factory=True, host=host, port=port, workers=workers,
                    **uvicorn_options(limits))
    else:
        config = uvicorn.Config(create_app(max_upload_bytes=limit, detect_max_side=detect_max_side, limits=limits),
                                host=host, port=port, **uvicorn_options(limits))
        config.facelens_limits = limits  # read by HardenedH11Protocol
        uvicorn.Server(config).run()
