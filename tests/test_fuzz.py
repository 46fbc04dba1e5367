"""Fuzzed images (every allowed format, seeded mutations): no exception escapes any entry point (issue #20).

Bounded in time: a few seconds per layer. ``benchmarks/fuzz_images.py`` runs the same
mutations at scale (100k inputs by default).
"""

from __future__ import annotations

import time
from pathlib import Path

from fuzz_corpus import fuzzed_inputs

from facelens.errors import ImageLoadError
from facelens.images import load_image

#: Seconds spent on load_image, then the number of inputs for the slower layers.
DECODE_SECONDS = 3.0
N_LAYER = 120


def test_load_image_never_lets_another_exception_out():
    deadline = time.monotonic() + DECODE_SECONDS
    n = ok = 0
    for seed in range(1000):
        for name, data in fuzzed_inputs(seed, 200):
            try:
                arr = load_image(data, name=name)
                assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype.name == "uint8"
                ok += 1
            except ImageLoadError as exc:
                assert name in str(exc) and exc.reason
            n += 1
        if time.monotonic() > deadline:
            break
    assert n >= 400, f"only {n} inputs in {DECODE_SECONDS} s"
    assert 0 < ok < n  # the mutations produce both decodable and broken files


def test_analyzer_returns_a_result_for_every_fuzzed_input(analyzer):
    inputs = fuzzed_inputs(7, N_LAYER)
    for name, data in inputs:
        r = analyzer.analyze(data, name=name)  # raises nothing, by contract
        assert r.path == name
        assert (r.error is None) == (r.width is not None)
    results = list(analyzer.analyze_many([d for _, d in inputs], names=[n for n, _ in inputs], batch_size=8))
    assert [r.path for r in results] == [n for n, _ in inputs]


def test_batch_runner_survives_fuzzed_files_and_resumes(analyzer, tmp_path):
    from facelens.infer.batch import run_batch

    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i, (_, data) in enumerate(fuzzed_inputs(11, N_LAYER)):
        p = folder / f"f{i:04d}.jpg"  # every one named .jpg, whatever it really is
        p.write_bytes(data)
        paths.append(p)
    out = tmp_path / "o.jsonl"
    summary = run_batch(analyzer, paths, out, progress=False)
    assert summary.processed == len(paths) and summary.failed > 0 and summary.ok > 0
    errors = Path(str(out) + ".errors.csv").read_text().splitlines()
    assert len(errors) == 1 + summary.failed
    again = run_batch(analyzer, paths, out, resume=True, progress=False)
    assert again.skipped == len(paths) and again.processed == 0


def test_service_answers_json_for_every_fuzzed_upload(analyzer):
    from fastapi.testclient import TestClient

    from facelens.serve.app import create_app

    with TestClient(create_app(analyzer=analyzer), raise_server_exceptions=False) as c:
        for name, data in fuzzed_inputs(13, N_LAYER):
            r = c.post("/v1/analyze", files={"file": (name + ".jpg", data, "image/jpeg")})
            assert r.status_code in (200, 400, 413, 415, 422), (name, r.status_code, r.text[:300])
            body = r.json()
            assert ("faces" in body) if r.status_code == 200 else (body["error"]["code"] and body["error"]["message"])


def test_analyzer_promises_a_result_for_any_input(analyzer, tmp_path):
    """The docstring's promise: bad inputs give a result with ``error`` set, never an exception."""
    import io

    import numpy as np
    from PIL import Image

    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data, format="JPEG")
    half = tmp_path / "half.jpg"
    half.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    lazy = Image.open(half)
    text_file = (tmp_path / "t.txt").open("w")
    try:
        for src in (None, 3.5, np.array([["a"] * 9] * 9), lazy, text_file, io.BytesIO(b"junk" * 50)):
            r = analyzer.analyze(src)
            assert r.error and not r.faces, (src, r)
        r = analyzer.analyze(io.BytesIO(data.getvalue()))  # a good file object works
        assert r.error is None and r.width == 64
    finally:
        lazy.close()
        text_file.close()
