"""REST service through the real app and the real Analyzer (the shipped default models)."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from facelens.errors import ModelLoadError  # noqa: E402
from facelens.serve.app import create_app  # noqa: E402


def _jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny (compressible) body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def analyzer():
    from facelens.api import Analyzer

    try:
        analyzer = Analyzer()
    except ModelLoadError as exc:
        pytest.skip(f"no shipped models: {exc}")
    if analyzer.age is None or analyzer.eyes is None:
        pytest.skip("the shipped age or eye model is missing")
    return analyzer


@pytest.fixture(scope="module")
def client(analyzer):
    with TestClient(create_app(analyzer=analyzer)) as c:
        yield c


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    from skimage import data

    return _jpeg(data.astronaut())


def _assert_error(resp, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


def _assert_face(face: dict) -> None:
    x, y, w, h = face["box"]
    assert w > 20 and h > 20
    age = face["age"]
    assert 0 <= age["low"] <= age["value"] <= age["high"] <= 120
    assert age["interval"] == pytest.approx(0.8)
    sex = face["sex"]
    assert 0.0 <= sex["p_female"] <= 1.0
    assert sex["p_female"] + sex["p_male"] == pytest.approx(1.0, abs=1e-3)
    assert sorted(e["side"] for e in sex["eyes"]) in (["left", "right"], ["both"])  # per the eye model's crop


def test_analyze_multipart_photo(client, astronaut_jpeg):
    resp = client.post("/v1/analyze", files={"file": ("astronaut.jpg", astronaut_jpeg, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["schema"] == "facelens/1"
    assert (body["width"], body["height"]) == (512, 512)
    assert len(body["faces"]) == 1
    _assert_face(body["faces"][0])
    assert body["message"] is None and body["error"] is None
    assert set(body["models"]) == {"age", "eyes"}
    assert all(m["name"] for m in body["models"].values())
    assert body["timings_ms"]["total"] > 0
    assert "annotated_jpeg" not in body and "crops" not in body["faces"][0]


def test_analyze_raw_body(client, astronaut_jpeg):
    resp = client.post("/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"})
    assert resp.status_code == 200, resp.text
    faces = resp.json()["faces"]
    assert len(faces) == 1
    _assert_face(faces[0])


def test_annotate_returns_decodable_jpeg(client, astronaut_jpeg):
    resp = client.post("/v1/analyze?annotate=true", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    raw = base64.b64decode(resp.json()["annotated_jpeg"])
    assert raw[:3] == b"\xff\xd8\xff"
    img = Image.open(io.BytesIO(raw))
    img.load()
    assert img.size == (512, 512)
    # Something was drawn: the annotated photo differs from the plain decoded upload.
    plain = np.asarray(Image.open(io.BytesIO(astronaut_jpeg)).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(img.convert("RGB"), dtype=np.int16) - plain).max() > 100


def test_crops_are_pngs_of_what_the_models_saw(client, astronaut_jpeg, analyzer):
    resp = client.post("/v1/analyze?crops=true", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    crops = resp.json()["faces"][0]["crops"]
    # One crop per eye, or one of both eyes, as the eye model was trained; the others are absent.
    eye_keys = ["both_eyes"] if analyzer.eye_geometry.sides == ("both",) else ["left_eye", "right_eye"]
    assert {k for k, v in crops.items() if v} == {"face", *eye_keys}
    sizes = {}
    for key in ("face", *eye_keys):
        img = Image.open(io.BytesIO(base64.b64decode(crops[key])))
        assert img.format == "PNG"
        sizes[key] = img.size
    assert sizes["face"] == (analyzer.age.meta["input_size"],) * 2
    assert {sizes[k] for k in eye_keys} == {(analyzer.eyes.meta["input_size"],) * 2}


def test_no_face_is_200_with_message(client):
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx % 256, yy % 256, np.full_like(xx, 128)], axis=2).astype(np.uint8)
    resp = client.post("/v1/analyze", files={"file": ("plain.png", _png(gradient), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["faces"] == []
    assert body["message"] == "no face found"


def test_upload_limit_413_multipart_raw_and_chunked(analyzer, astronaut_jpeg):
    limit = 20_000
    assert len(astronaut_jpeg) > limit
    with TestClient(create_app(analyzer=analyzer, max_upload_bytes=limit)) as c:
        _assert_error(c.post("/v1/analyze", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")}), 413, "too_large")
        _assert_error(c.post("/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}), 413)

        # No Content-Length (chunked): the limit is enforced while streaming.
        def chunks():
            for i in range(0, len(astronaut_jpeg), 4096):
                yield astronaut_jpeg[i : i + 4096]

        _assert_error(c.post("/v1/analyze", content=chunks(), headers={"Content-Type": "image/jpeg"}), 413)
        # A small photo under the limit still works on the same app.
        small = _jpeg(np.asarray(Image.open(io.BytesIO(astronaut_jpeg)).resize((128, 128))), quality=70)
        assert len(small) < limit
        assert c.post("/v1/analyze", content=small, headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_text_file_is_415(client):
    resp = client.post("/v1/analyze", files={"file": ("notes.txt", b"hello, this is not a photo\n" * 10, "text/plain")})
    _assert_error(resp, 415, "not_an_image")
    _assert_error(client.post("/v1/analyze", content=b"plain text", headers={"Content-Type": "text/plain"}), 415)


def test_truncated_jpeg_is_422(client, astronaut_jpeg):
    cut = astronaut_jpeg[: len(astronaut_jpeg) // 2]
    resp = client.post("/v1/analyze", files={"file": ("cut.jpg", cut, "image/jpeg")})
    _assert_error(resp, 422)
    assert resp.json()["error"]["code"] in ("truncated", "corrupt")


def test_decompression_bomb_header_is_422(client):
    resp = client.post("/v1/analyze", files={"file": ("bomb.png", bomb_png(), "image/png")})
    _assert_error(resp, 422, "too_large")
    assert "decompression bomb" in resp.json()["error"]["message"]


def test_too_small_is_422(client):
    tiny = _png(np.zeros((4, 4, 3), np.uint8))
    _assert_error(client.post("/v1/analyze", files={"file": ("tiny.png", tiny, "image/png")}), 422, "too_small")


def test_empty_and_missing_file(client):
    _assert_error(client.post("/v1/analyze", files={"file": ("empty.jpg", b"", "image/jpeg")}), 400, "empty")
    _assert_error(client.post("/v1/analyze", content=b"", headers={"Content-Type": "image/jpeg"}), 400, "empty")
    _assert_error(client.post("/v1/analyze", data={"other": "x"}, files={"photo": ("a.jpg", b"x", "image/jpeg")}),
                  400, "missing_file")


def test_bad_query_parameter_is_json_422(client, astronaut_jpeg):
    resp = client.post("/v1/analyze?annotate=maybe", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"})
    _assert_error(resp, 422, "invalid_request")


def test_unexpected_crash_is_json_500_and_server_survives(analyzer, astronaut_jpeg):
    class Exploding:
        def models_info(self):
            return analyzer.models_info()

        def analyze_array(self, *a, **k):
            raise RuntimeError("boom")

    with TestClient(create_app(analyzer=Exploding()), raise_server_exceptions=False) as c:
        _assert_error(c.post("/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}),
                      500, "internal_error")
        assert c.get("/healthz").status_code == 200


def test_lifespan_loads_default_models(analyzer):
    with TestClient(create_app()) as c:  # no analyzer given: loaded once at startup
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["models_loaded"] is True
        assert set(health["models"]) == {m["task"] for m in analyzer.models_info()}
        assert c.app.state.facelens.analyzer is not None


def test_detect_max_side_reaches_the_loaded_analyzer(analyzer):
    """A small face in a big photo: missed at the default detection size, found when it is raised."""
    from skimage import data as skdata

    face = np.array(Image.fromarray(skdata.astronaut()[20:320, 80:380]).resize((90, 90)))
    photo = np.full((1800, 2400, 3), 128, dtype=np.uint8)
    photo[900:990, 1200:1290] = face
    body = _jpeg(photo)
    for side, n_faces in ((None, 0), (2400, 1)):
        with TestClient(create_app(detect_max_side=side)) as c:
            r = c.post("/v1/analyze", content=body, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and len(r.json()["faces"]) == n_faces, (side, r.json())


def test_healthz_models_docs(client, analyzer):
    assert client.get("/healthz").json()["models_loaded"] is True
    models = client.get("/v1/models").json()["models"]
    assert {m["task"] for m in models} == {"age", "eyes"}
    assert all(m["name"] and m["input_size"] > 0 for m in models)
    for m in models:  # the model card in brief: its split, its data's terms and what it must not be used for
        card = m["card"]
        assert card["test_split"]["n"] == m["test_metrics"]["n"] > 0
        assert any("decisions about individuals" in item for item in card["out_of_scope"])
        assert "**" not in " ".join(card["out_of_scope"])
    eyes_card = next(m["card"] for m in models if m["task"] == "eyes")
    assert any("gender identity" in item for item in eyes_card["out_of_scope"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert re.findall(r'(?:src|href)="(https?://[^"]*)"', docs.text) == []  # offline: no CDN assets
    spec = client.get("/openapi.json").json()
    assert "/v1/analyze" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]
    _assert_error(client.get("/nope"), 404, "not_found")


#: A protocol-relative URL ("//host/...") inside quotes or url(...).
PROTOCOL_RELATIVE = re.compile(r"[\"'(`]//[^/\s\"']")


def test_web_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "estimate" in page.text.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in assets and "/static/style.css" in assets
    for text in [page.text] + [client.get(a).text for a in assets if a.startswith("/static/")]:
        assert not re.search(r"https?://", text), "the page must not reference another host"
        assert not PROTOCOL_RELATIVE.search(text), "no protocol-relative URLs either"
    for a in assets:
        assert a.startswith("/"), f"asset {a!r} is not served locally"
        assert client.get(a).status_code == 200


def test_concurrent_requests(client, astronaut_jpeg):
    def one(_):
        r = client.post("/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"})
        return r.status_code, len(r.json().get("faces", []))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    assert results == [(200, 1)] * 8


def test_openapi_documents_the_answer_shapes_from_the_typed_contract() -> None:
    """/docs shows the result schema (faces, age interval, P(female), eyes), not an empty object."""
    from fastapi.testclient import TestClient

    from facelens.serve.app import create_app

    spec = TestClient(create_app(analyzer=object())).get("/openapi.json").json()
    ok = spec["paths"]["/v1/analyze"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    refs = {r["$ref"].rsplit("/", 1)[-1] for r in ok["anyOf"]}
    assert refs == {"AnalyzeResponse", "AnalyzeListResponse"}
    schemas = spec["components"]["schemas"]
    face = schemas["ServedFace"]["properties"]
    assert {"box", "score", "landmarks", "age", "sex", "crops"} <= set(face)
    assert {"value", "low", "high", "interval"} <= set(schemas["AgeEstimate"]["properties"])
    assert {"p_female", "p_male", "eyes", "eyes_disagree", "caution"} <= set(schemas["SexEstimate-Output"]["properties"]
                                                                             if "SexEstimate-Output" in schemas
                                                                             else schemas["SexEstimate"]["properties"])
    for code in ("400", "413", "415", "422"):
        bad = spec["paths"]["/v1/analyze"]["post"]["responses"][code]["content"]["application/json"]["schema"]
        assert bad["$ref"].endswith("/ErrorResponse")
    assert spec["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/HealthResponse")
