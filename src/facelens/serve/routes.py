"""The service's routes, in three routers: health and models, analysis, and the web page.

Each route takes what it needs from dependencies (``serve.state``), so nothing here is a
closure over ``create_app``'s arguments. Every failure a client can cause is an ``ApiError``
with an explicit status (``serve.errors`` turns it into ``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from facelens import __version__ as FACELENS_VERSION
from facelens.serve import multi
from facelens.serve.analysis import models_summary, run_capped
from facelens.serve.errors import ApiError
from facelens.serve.responses import (
    AnalyzeListResponse,
    AnalyzeResponse,
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
)
from facelens.serve.state import LoadedAnalyzer, State
from facelens.serve.uploads import limited_stream, read_upload

STATIC_DIR = Path(__file__).resolve().parent / "static"

health = APIRouter()
analysis = APIRouter()
page = APIRouter()


@health.get("/healthz", tags=["service"], response_model=HealthResponse)
async def healthz(state: State) -> dict[str, Any]:
    """Liveness and readiness: ``models_loaded`` is false until the models are in memory."""
    loaded = state.analyzer is not None
    return {"status": "ok" if loaded else "degraded", "models_loaded": loaded,
            "models": models_summary(state.analyzer) if loaded else {}, "error": state.load_error,
            "version": FACELENS_VERSION, "max_upload_bytes": state.max_upload_bytes}


@health.get("/v1/models", tags=["analysis"], response_model=ModelsResponse,
            responses={503: {"model": ErrorResponse, "description": "models unavailable"}})
async def models(analyzer: LoadedAnalyzer) -> dict[str, Any]:
    """Every loaded model: name, task, architecture, version, input size, test metrics."""
    return {"models": analyzer.models_info()}


@analysis.post(
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
    state: State,
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
    # Asked here, not as a dependency: dependencies run before the query is validated, and a bad
    # query must stay a 422 whether or not the models are loaded.
    analyzer = state.require_analyzer()
    limit, limits = state.max_upload_bytes, state.limits

    async def run_one(data: bytes, name: str) -> dict[str, Any]:
        return await run_capped(analyzer, data, name, annotate, crops, limiter=state.limiter,
                                request_timeout=limits.request_timeout, budget=state.budget)

    if multi.is_multipart(request):  # 'file' (one photo, as always) or 'files' (a list answer)
        form = await multi.read_form(request, lambda lim, file_lim: limited_stream(request, lim, file_lim, limits),
                                     limit, state.max_photos, state.max_total_bytes)
        if form.list_form:
            return await multi.answer_list(form, analyzer, run_one, limit)
        data, name = await multi.read_single(form, limit)
    else:
        data, name = await read_upload(request, limit, limits)
    if not data:
        raise ApiError(400, "empty", "the upload is empty (0 bytes)")
    return await run_one(data, name)


@page.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
