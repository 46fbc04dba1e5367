"""Shared test fixtures: where the real data is, and tiny image writers for fake datasets.

Tests never copy real images into the repository: fake datasets are generated in
``tmp_path`` and the real data under ``../shared/data`` is only read, by tests marked
``data`` that skip when it is absent (e.g. on a contributor's laptop).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# libgomp (bundled by yuface, torch) spins idle threads; on a busy 2-core machine the spinning
# threads fight each other and YuNet gets ~40x slower (1 s instead of 25 ms per 200 px face).
# Must be set before those libraries are loaded, hence here, before any test module imports.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
try:  # prefer an installed facelens; fall back to the source tree
    import facelens  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the tests are run
    sys.path.insert(0, str(ROOT / "src"))

#: Real data lives next to the project checkout, never inside it.
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``@pytest.mark.data`` test, with a reason, when the shared data is missing."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def random_rgb(height: int = 24, width: int = 24, seed: int = 0) -> np.ndarray:
    """A random RGB image: distinct seeds give distinct bytes (no accidental duplicates)."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", **save_kwargs) -> bytes:
    """Encode an array with Pillow and return the bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


@pytest.fixture
def write_jpeg() -> Callable[..., Path]:
    """``write_jpeg(path, seed=0, size=24)``: write a small random JPEG (parents created)."""

    def _write(path: Path, seed: int = 0, size: int = 24) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(random_rgb(size, size, seed), "JPEG", quality=90))
        return path

    return _write


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, array, fmt, **save_kwargs)``: write an array in any Pillow format."""

    def _write(path: Path, arr: np.ndarray, fmt: str = "PNG", **save_kwargs) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(arr, fmt, **save_kwargs))
        return path

    return _write


@pytest.fixture(scope="module")
def analyzer():
    """The shipped default models (test modules may define their own ``analyzer``); skips without them."""
    from facelens.api import Analyzer
    from facelens.errors import ModelLoadError

    try:
        return Analyzer()
    except ModelLoadError as exc:
        pytest.skip(f"no shipped models: {exc}")
