"""What the requests of one app share, and the FastAPI dependencies that hand it to the routes.

Why a dependency instead of closures inside ``create_app``: the routes become plain functions
of their own module (``serve.routes``) that say what they need in their signature, and a test
or a second app can supply another state without rebuilding the routes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request

from facelens.images import MemoryBudget
from facelens.serve import multi
from facelens.serve.errors import ApiError
from facelens.serve.protocol import ServiceLimits

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024


@dataclass
class ServiceState:
    """One app's Analyzer (or why it did not load), its limits and its analysis slots.

    ``analyzer`` is loaded once in the lifespan and shared by every request (ONNX Runtime
    sessions are thread-safe; the detector takes its own lock): loading per request would cost
    seconds. ``analyzer_options`` are the ``Analyzer`` arguments the lifespan loads it with.
    """

    analyzer: Any = None
    load_error: str | None = None  # for clients: says what failed, never the server's paths
    limiter: anyio.CapacityLimiter | None = None  # created in the lifespan, inside the event loop
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    budget: MemoryBudget | None = None  # decode memory shared by this process's requests
    max_photos: int = multi.DEFAULT_MAX_PHOTOS
    max_total_bytes: int = multi.TOTAL_FACTOR * DEFAULT_MAX_UPLOAD_BYTES
    max_concurrent: int | None = None  # analyses at once; None: the CPU count
    processes: int = 1  # worker processes sharing the machine (each detection gets its share of the cores)
    analyzer_options: dict[str, Any] = field(default_factory=dict)

    def slots(self) -> int:
        return self.max_concurrent or os.cpu_count() or 1

    def require_analyzer(self) -> Any:
        """The loaded Analyzer; 503 with the reason while the models are loading or when they failed to."""
        if self.analyzer is None:
            raise ApiError(503, "models_unavailable", self.load_error or "models are still loading")
        return self.analyzer


def get_state(request: Request) -> ServiceState:
    """Dependency: the state of the app serving ``request`` (``create_app`` puts it in ``app.state.facelens``)."""
    return request.app.state.facelens


def get_analyzer(state: Annotated[ServiceState, Depends(get_state)]) -> Any:
    """Dependency: the loaded Analyzer, or 503 (``ServiceState.require_analyzer``)."""
    return state.require_analyzer()


State = Annotated[ServiceState, Depends(get_state)]
LoadedAnalyzer = Annotated[Any, Depends(get_analyzer)]
