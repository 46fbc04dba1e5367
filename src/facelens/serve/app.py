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
  ``{"error": {"code", "message"}}``; a last-resort handler logs anything unexpected and
  answers JSON 500 so one bad request never takes the server down.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
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

from facelens import __version__ as FACELENS_VERSION
from facelens.errors import FacelensError, ImageLoadError
from facelens.images import decode_image_bytes
from facelens.serve import multi, render

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


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


# -- reading uploads --------------------------------------------------------------------------
async def _limited_stream(request: Request, limit: int, file_limit: int) -> AsyncGenerator[bytes, None]:
    """Yield the request body, raising 413 as soon as more than ``limit`` bytes arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(file_limit)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(file_limit)
        if chunk:
            yield chunk


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"upload is larger than the limit of {limit / 1024 / 1024:.1f} MB")


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """Return (image bytes, name) from a raw image body (multipart forms are read by ``serve.multi.read_form``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        chunks = [c async for c in _limited_stream(request, max_bytes, max_bytes)]
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


def analyze_bytes(analyzer: Any, data: bytes, name: str, annotate: bool, crops: bool) -> dict[str, Any]:
    """Decode, analyse and (optionally) render one upload; raises ApiError for bad images."""
    t0 = time.perf_counter()
    try:
        rgb: np.ndarray = decode_image_bytes(data, name)
    except ImageLoadError as exc:
        raise ApiError(REASON_STATUS.get(exc.reason, 422), exc.reason, exc.message) from exc
    t_load = time.perf_counter() - t0
    result = analyzer.analyze_array(rgb, name, with_crops=crops, t_load=t_load)
    out = result.to_dict()
    if crops:
        for face_dict, face_crops in zip(out["faces"], result.crops, strict=False):
            face_dict["crops"] = _crops_dict(face_crops)
    timings = dict(result.timings_ms)
    if annotate:
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
    load_error: str | None = None
    limiter: anyio.CapacityLimiter | None = None


def create_app(analyzer: Any = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_concurrent: int | None = None, processes: int = 1, detect_max_side: int | None = None,
               max_photos: int = multi.DEFAULT_MAX_PHOTOS, max_total_bytes: int | None = None) -> FastAPI:
    """Build the app. ``analyzer=None`` loads the default models at startup (lifespan).

    ``max_photos`` / ``max_total_bytes``: limits of the several-photos form (``serve.multi``);
    the total defaults to ``multi.TOTAL_FACTOR`` times ``max_upload_bytes``.

    ``max_concurrent``: analyses running at once (default: CPU count); the rest wait.
    ``processes``: worker processes sharing the machine; each detection gets its share of the cores.
    ``detect_max_side``: for the loaded analyzer, the longest side photos are detected at
    (default 512, see ``facelens.face.detect``); raise it to find small faces in large photos.
    """
    state = ServiceState(analyzer=analyzer)
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
                state.load_error = str(exc)
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

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error_response(422, "invalid_request", msg or "invalid request")

    @app.exception_handler(Exception)
    async def _last_resort(request: Request, exc: Exception) -> JSONResponse:
        # Not a way to hide bugs: every expected failure above has its own status. This only keeps
        # the server alive and the answer machine-readable when something truly unexpected happens.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(500, "internal_error",
                               f"unexpected server error ({type(exc).__name__}); it has been logged")

    def _analyzer() -> Any:
        if state.analyzer is None:
            raise ApiError(503, "models_unavailable", state.load_error or "models are still loading")
        return state.analyzer

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness and readiness: ``models_loaded`` is false until the models are in memory."""
        loaded = state.analyzer is not None
        return {"status": "ok" if loaded else "degraded", "models_loaded": loaded,
                "models": models_summary(state.analyzer) if loaded else {}, "error": state.load_error,
                "version": FACELENS_VERSION, "max_upload_bytes": app.state.max_upload_bytes}

    @app.get("/v1/models", tags=["analysis"])
    async def models() -> dict[str, Any]:
        """Every loaded model: name, task, architecture, version, input size, test metrics."""
        return {"models": _analyzer().models_info()}

    @app.post(
        "/v1/analyze",
        tags=["analysis"],
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {"schema": multi.openapi_multipart_schema()},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
                "required": True,
            }
        },
        responses={400: {"description": "empty body, no 'file' field, or more photos than allowed"},
                   413: {"description": "upload too large (a photo, or a several-photos request in all)"},
                   415: {"description": "not an image"}, 422: {"description": "damaged, too large or too small image"}},
    )
    async def analyze(
        request: Request,
        annotate: Annotated[bool, Query(description="add 'annotated_jpeg' (base64) with boxes and labels")] = False,
        crops: Annotated[bool, Query(description="add per face base64 PNGs of the face and eye crops the models saw")
                         ] = False,
    ) -> JSONResponse:
        """Detect every face; estimate age (value and 80% interval) and P(female)/P(male) from both eyes.

        Send the photo as multipart field ``file`` or as a raw ``image/*`` body. A photo with no
        face is not an error: 200 with ``faces: []`` and ``message: "no face found"``. Faces are
        listed in reading order (rows top to bottom, each left to right). Several photos: see
        the ``files`` field and its limits in the API description.
        """
        analyzer = _analyzer()
        limit = app.state.max_upload_bytes

        async def run_one(data: bytes, name: str) -> dict[str, Any]:
            return await anyio.to_thread.run_sync(analyze_bytes, analyzer, data, name, annotate, crops,
                                                  limiter=state.limiter)

        if multi.is_multipart(request):  # 'file' (one photo, as always) or 'files' (a list answer)
            form = await multi.read_form(request, lambda lim, file_lim: _limited_stream(request, lim, file_lim),
                                         limit, max_photos, max_total)
            if form.list_form:
                return JSONResponse(await multi.answer_list(form, analyzer, run_one, limit))
            data, name = await multi.read_single(form, limit)
        else:
            data, name = await read_upload(request, limit)
        if not data:
            raise ApiError(400, "empty", "the upload is empty (0 bytes)")
        return JSONResponse(await run_one(data, name))

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
                      detect_max_side=side)


def run_server(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_upload_mb: float = 10.0,
               detect_max_side: int | None = None) -> None:
    """Run the service with uvicorn (what ``facelens serve`` calls)."""
    import uvicorn

    limit = int(max_upload_mb * 1024 * 1024)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if workers > 1:
        # Each worker process imports the factory and loads its own copy of the models.
        os.environ["FACELENS_MAX_UPLOAD_BYTES"] = str(limit)
        os.environ["FACELENS_WORKERS"] = str(workers)
        os.environ["FACELENS_DETECT_MAX_SIDE"] = str(detect_max_side or 0)
        uvicorn.run("facelens.serve.app:app_factory", factory=True, host=host, port=port, workers=workers)
    else:
        uvicorn.run(create_app(max_upload_bytes=limit, detect_max_side=detect_max_side), host=host, port=port)
