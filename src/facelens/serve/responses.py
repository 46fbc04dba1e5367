"""What the REST service answers, as pydantic models: the ``facelens/1`` record plus the service's extras.

FastAPI derives the OpenAPI schema (``/docs``) from these and checks every answer against them
(``response_model``), so the documented and the served shapes cannot drift apart. Keys a request
did not ask for (``annotated_jpeg``, ``crops``) are left out rather than sent as null
(``response_model_exclude_unset``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from facelens.schema import SCHEMA_VERSION, Face, ImageResult


class FaceCrops(BaseModel):
    """The crops the models saw, as base64 PNGs (``?crops=true``)."""

    face: str | None = None
    right_eye: str | None = None
    left_eye: str | None = None
    #: The crop holding both eyes, for an eye model that reads them together (then the single-eye crops are None).
    both_eyes: str | None = None


class ServedFace(Face):
    crops: FaceCrops | None = Field(None, description="only with ?crops=true")


class ModelSummary(BaseModel):
    name: str
    version: str | None = None
    arch: str | None = None


class AnalyzeResponse(ImageResult):
    """One photo's answer: the JSON Lines record, the timings and the models behind it."""

    faces: list[ServedFace] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per stage, and 'total'")
    annotated_jpeg: str | None = Field(None, description="base64 JPEG with boxes and labels (only with ?annotate=true)")
    models: dict[str, ModelSummary] = Field(default_factory=dict, description="per task: the model that answered")


class ListEntry(AnalyzeResponse):
    """One photo of a several-photos request: its answer, or its error with the status it would have had alone."""

    status: int
    error_code: str | None = None


class AnalyzeListResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    schema_version: Literal["facelens/1"] = Field(SCHEMA_VERSION, alias="schema")
    results: list[ListEntry]
    models: dict[str, ModelSummary] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    task: str
    arch: str
    version: str | None = None
    created: str | None = None
    input_size: int
    backend: str
    device: str
    precision: str
    tta: str
    test_metrics: dict[str, Any] = Field(default_factory=dict)
    card: dict[str, Any] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    models_loaded: bool
    models: dict[str, ModelSummary]
    error: str | None
    version: str
    max_upload_bytes: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: a machine-readable code and a sentence naming the problem."""

    error: ErrorDetail
