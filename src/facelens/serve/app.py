"""FastAPI application: ``POST /v1/analyze``, ``/healthz``, ``/v1/models``, ``/docs`` and the web page at ``/``.

``create_app`` only assembles: the routes are in ``serve.routes`` (three ``APIRouter``s), what
they share is a ``ServiceState`` handed to them by dependencies (``serve.state``), and the rest
has a module of its own, each saying why it works as it does:

* ``serve.analysis``: one upload decoded under a memory budget and analysed in a worker thread
  behind a ``CapacityLimiter``, within the processing cap (503 busy, 504 timeout);
* ``serve.uploads``: bodies read as a stream, refused (413) as soon as they pass the limit and
  (408) when they stall or come too slowly; several-photos forms in ``serve.multi``;
* ``serve.errors``: the JSON error shape ``{"error": {"code", "message"}}`` for every failure a
  client can cause (405 carries ``Allow``), and a last-resort middleware that logs anything
  unexpected in one line and answers JSON 500 with ``Connection: close``;
* ``serve.protocol``: header deadlines, the connection cap and uvicorn's own errors as JSON
  (``ServiceLimits``, issue #20).
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs and /redoc served from the wheel, no CDN

from facelens import __version__ as FACELENS_VERSION
from facelens.errors import FacelensError
from facelens.serve import multi, routes
from facelens.serve.analysis import (
    REASON_STATUS,
    Expired,
    analyze_bytes,
    decode_budget,
    models_summary,
)
from facelens.serve.errors import ApiError, ErrorBoundary, install_error_handlers
from facelens.serve.protocol import HardenedH11Protocol, ServiceLimits
from facelens.serve.routes import STATIC_DIR
from facelens.serve.state import DEFAULT_MAX_UPLOAD_BYTES, ServiceState
from facelens.serve.uploads import limited_stream, read_upload, too_large

log = logging.getLogger("facelens.serve")

#: The building blocks are importable from here too, as before the split into modules.
__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "REASON_STATUS", "STATIC_DIR", "ApiError", "ErrorBoundary", "Expired",
           "ServiceState", "analyze_bytes", "app_factory", "create_app", "decode_budget", "models_summary",
           "public_load_error", "read_upload", "run_server", "uvicorn_options"]

# Names this module had before the split (issue #19), kept for code that imports them from here.
_too_large = too_large
_limited_stream = limited_stream


def public_load_error(exc: Exception) -> str:
    """What clients are told when the models did not load: the kind of failure, not the server's paths."""
    return (f"the models could not be loaded ({type(exc).__name__}); the server log has the details. "
            "An operator can set FACELENS_MODELS or install the shipped models.")


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Analysis slots and detection threads for this process; the models, unless the app was given an Analyzer.

    A load failure does not stop the server: /healthz keeps answering and says why (``load_error``).
    """
    from facelens.face.detect import set_detection_threads

    state: ServiceState = app.state.facelens
    set_detection_threads((os.cpu_count() or 1) // max(1, state.processes))
    state.limiter = anyio.CapacityLimiter(state.slots())
    if state.analyzer is None:
        try:
            from facelens.api import Analyzer

            state.analyzer = await anyio.to_thread.run_sync(lambda: Analyzer(**state.analyzer_options))
            log.info("models loaded: %s", models_summary(state.analyzer))
        except FacelensError as exc:  # keep serving /healthz so operators see why
            state.load_error = public_load_error(exc)
            log.error("could not load models: %s", exc)
    yield


def create_app(analyzer: Any = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_concurrent: int | None = None, processes: int = 1, detect_max_side: int | None = None,
               limits: ServiceLimits | None = None, max_photos: int = multi.DEFAULT_MAX_PHOTOS,
               max_total_bytes: int | None = None, backend: str = "auto", device: str = "cpu") -> FastAPI:
    """Build the app. ``analyzer=None`` loads the default models at startup (lifespan).

    ``limits``: body deadlines, processing cap and decode memory budget (``ServiceLimits``).
    ``max_photos`` / ``max_total_bytes``: limits of the several-photos form (``serve.multi``);
    the total defaults to ``multi.TOTAL_FACTOR`` times ``max_upload_bytes``.

    ``max_concurrent``: analyses running at once (default: CPU count); the rest wait.
    ``processes``: worker processes sharing the machine; each detection gets its share of the cores.
    ``detect_max_side``, ``backend``, ``device``: for the loaded analyzer (see ``facelens.api.Analyzer``):
    the longest side photos are detected at (default 512; raise it to find small faces in large
    photos), the inference backend and the device (``facelens.devices``).
    """
    limits = limits or ServiceLimits()
    max_total = max_total_bytes or multi.TOTAL_FACTOR * max_upload_bytes
    state = ServiceState(analyzer=analyzer, max_upload_bytes=max_upload_bytes, limits=limits,
                         budget=decode_budget(limits.decode_memory_bytes), max_photos=max_photos,
                         max_total_bytes=max_total, max_concurrent=max_concurrent, processes=processes,
                         analyzer_options={"detect_max_side": detect_max_side, "backend": backend, "device": device})
    app = FastAPIOffline(
        title="facelens",
        version=FACELENS_VERSION,
        lifespan=lifespan,
        description="Age from the face and sex from the eye region, as estimates with uncertainty. "
        "Upload a photo to `POST /v1/analyze`. " + multi.limits_text(max_upload_bytes, max_photos, max_total),
    )
    app.state.facelens = state
    install_error_handlers(app)
    for router in (routes.health, routes.analysis, routes.page):  # this order is the order of /docs
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_factory() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers (settings come from the environment)."""
    limit = int(os.environ.get("FACELENS_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))
    side = int(os.environ.get("FACELENS_DETECT_MAX_SIDE", 0)) or None
    return create_app(max_upload_bytes=limit, processes=int(os.environ.get("FACELENS_WORKERS", 1)),
                      detect_max_side=side, limits=ServiceLimits.from_env(),
                      backend=os.environ.get("FACELENS_BACKEND", "auto"), device=os.environ.get("FACELENS_DEVICE", "cpu"))


def uvicorn_options(limits: ServiceLimits) -> dict[str, Any]:
    """uvicorn settings that go with ``limits``: the hardened protocol, keep-alive, no websockets."""
    return {"http": HardenedH11Protocol, "ws": "none", "timeout_keep_alive": limits.keep_alive_timeout,
            "h11_max_incomplete_event_size": 16 * 1024, "timeout_graceful_shutdown": 10}


def run_server(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_upload_mb: float = 10.0,
               detect_max_side: int | None = None, request_timeout: float | None = None, backend: str = "auto",
               device: str = "cpu") -> None:
    """Run the service with uvicorn (what ``facelens serve`` calls); ``backend`` and ``device`` as for ``Analyzer``."""
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
        os.environ["FACELENS_BACKEND"] = backend
        os.environ["FACELENS_DEVICE"] = device
        limits.to_env(os.environ)
        uvicorn.run("facelens.serve.app:app_factory", factory=True, host=host, port=port, workers=workers,
                    **uvicorn_options(limits))
    else:
        app = create_app(max_upload_bytes=limit, detect_max_side=detect_max_side, limits=limits, backend=backend,
                         device=device)
        config = uvicorn.Config(app, host=host, port=port, **uvicorn_options(limits))
        config.facelens_limits = limits  # read by HardenedH11Protocol
        uvicorn.Server(config).run()
