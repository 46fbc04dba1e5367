"""facelens: age from face photos and sex from the eye region, as honest calibrated estimates."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Analyzer", "analyze", "__version__"]


def __getattr__(name: str):
    # Lazy: `import facelens` stays cheap (no torch/onnxruntime) until the API is used.
    if name in ("Analyzer", "analyze"):
        from facelens import api

        return getattr(api, name)
    raise AttributeError(f"module 'facelens' has no attribute {name!r}")
