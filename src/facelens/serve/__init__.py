"""REST service and web page: ``facelens serve`` (FastAPI + uvicorn).

``create_app()`` builds the application (tests pass their own Analyzer); ``run_server()`` is
what the CLI calls. Both live in ``facelens.serve.app``; they are imported lazily here so that
``import facelens.serve`` stays cheap for code that only needs ``render``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from facelens.serve import app

        return getattr(app, name)
    raise AttributeError(name)
