"""Several photos in one POST /v1/analyze (the 'files' field): a list in input order, each photo with its
own error, the limits enforced with JSON 4xx and documented in the OpenAPI description."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from facelens.serve.app import create_app  # noqa: E402


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def face() -> bytes:
    from skimage import data

    return _jpeg(data.astronaut())


@pytest.fixture(scope="module")
def plain() -> bytes:
    return _jpeg(np.full((120, 160, 3), 90, np.uint8))


def _files(*parts: tuple[str, bytes], field: str = "files") -> list:
    return [(field, (name, data, "image/jpeg")) for name, data in parts]


def _assert_error(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


def test_several_photos_answer_a_list_in_input_order(analyzer, face, plain) -> None:
    with TestClient(create_app(analyzer=analyzer)) as c:
        resp = c.post("/v1/analyze?annotate=true",
                      files=_files(("a.jpg", face), ("notes.jpg", b"not a photo at all\n" * 20), ("b.jpg", plain),
                                   ("empty.jpg", b""), ("c.jpg", face)))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["schema"] == "facelens/1" and set(body["models"]) == {m["task"] for m in analyzer.models_info()}
    res = body["results"]
    assert [r["path"] for r in res] == ["a.jpg", "notes.jpg", "b.jpg", "empty.jpg", "c.jpg"]
    assert [r["status"] for r in res] == [200, 415, 200, 400, 200]
    assert [len(r["faces"]) for r in res] == [1, 0, 0, 0, 1]
    assert res[1]["error_code"] == "not_an_image" and res[1]["error"].startswith("notes.jpg: ")
    assert res[3]["error_code"] == "empty"
    assert res[2]["error"] is None and res[2]["message"] == "no face found"
    assert res[0]["annotated_jpeg"] and res[0]["faces"] == res[4]["faces"]
    assert "models" not in res[0]


def test_one_photo_in_files_is_still_a_list_and_file_keeps_the_old_answer(analyzer, face) -> None:
    with TestClient(create_app(analyzer=analyzer)) as c:
        listed = c.post("/v1/analyze", files=_files(("a.jpg", face))).json()
        single = c.post("/v1/analyze", files=_files(("a.jpg", face), field="file")).json()
    assert len(listed["results"]) == 1
    assert "results" not in single and single["faces"] == listed["results"][0]["faces"]


def test_count_and_total_limits_are_json_4xx(analyzer, face, plain) -> None:
    with TestClient(create_app(analyzer=analyzer, max_photos=2)) as c:
        _assert_error(c.post("/v1/analyze", files=_files(("a", plain), ("b", plain), ("c", plain))), 400, "too_many_photos")
        assert c.post("/v1/analyze", files=_files(("a", plain), ("b", plain))).status_code == 200
    total = 2 * len(face) + 1000
    with TestClient(create_app(analyzer=analyzer, max_total_bytes=total)) as c:
        resp = c.post("/v1/analyze", files=_files(("a", face), ("b", face), ("c", face)))
        _assert_error(resp, 413, "too_large")
        assert f"{total / 1024 / 1024:.1f} MB" in resp.json()["error"]["message"]
    # the default total, 3x the per-photo limit, is enforced while the body streams in
    with TestClient(create_app(analyzer=analyzer, max_upload_bytes=len(face) + 10)) as c:
        _assert_error(c.post("/v1/analyze", files=_files(*[("a", face)] * 4)), 413, "too_large")
        assert c.post("/v1/analyze", files=_files(*[("a", face)] * 2)).status_code == 200


def test_a_photo_over_the_per_photo_limit_fails_alone(analyzer, face, plain) -> None:
    assert len(plain) < 20_000 < len(face)
    with TestClient(create_app(analyzer=analyzer, max_upload_bytes=20_000, max_total_bytes=10**6)) as c:
        res = c.post("/v1/analyze", files=_files(("big.jpg", face), ("small.jpg", plain))).json()["results"]
        assert [(r["status"], r.get("error_code")) for r in res] == [(413, "too_large"), (200, None)]
        # the single form keeps its own limit
        _assert_error(c.post("/v1/analyze", files=_files(("big.jpg", face), field="file")), 413, "too_large")


def test_ambiguous_forms_are_refused_clearly(analyzer, plain) -> None:
    with TestClient(create_app(analyzer=analyzer)) as c:
        _assert_error(c.post("/v1/analyze", files=_files(("a", plain), ("b", plain), field="file")), 400, "several_files")
        _assert_error(c.post("/v1/analyze", files=_files(("a", plain), field="file") + _files(("b", plain))),
                      400, "mixed_fields")


def test_limits_are_documented_in_openapi(analyzer) -> None:
    with TestClient(create_app(analyzer=analyzer, max_photos=7, max_upload_bytes=5 * 1024 * 1024)) as c:
        spec = c.get("/openapi.json").json()
    assert "at most 7 photos, 15 MB in all, 5 MB each" in spec["info"]["description"]
    body = spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["type"] == "array"
    assert body["properties"]["file"]["format"] == "binary"


def test_first_field_name() -> None:
    from facelens.serve.multi import first_field_name

    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n\xff'
    assert first_field_name(head) == "files"
    assert first_field_name(head.replace(b'"files"', b'"file"')) == "file"
    assert first_field_name(head[:30]) is None  # headers not complete yet


class _FakeRequest:
    """Just what the body reader uses: headers and a body stream that counts the chunks pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.headers = {"content-type": "multipart/form-data; boundary=XyZ"}
        self.chunks = chunks
        self.pulled = 0

    async def stream(self):
        for c in self.chunks:
            self.pulled += 1
            yield c


def _drain(request: _FakeRequest, max_upload: int, max_total: int):
    import anyio

    from facelens.serve.app import ApiError, _limited_stream
    from facelens.serve.multi import _body

    async def run():
        async for _ in _body(lambda lim, file_lim: _limited_stream(request, lim, file_lim), max_upload, 16, max_total):
            pass

    try:
        anyio.run(run)
    except ApiError as exc:
        return exc
    return None


@pytest.mark.parametrize(("field", "refused_within"), [("file", 45), ("files", 100)])
def test_the_body_is_cut_off_at_the_limit_of_its_form(field: str, refused_within: int) -> None:
    """'file' keeps its per-photo limit mid-stream; 'files' may reach the total (here 3 x 100 KB)."""
    head = (f'--XyZ\r\nContent-Disposition: form-data; name="{field}"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    req = _FakeRequest([head] + [b"\0" * 4096] * 400)  # 1.6 MB
    err = _drain(req, 100_000, 300_000)
    assert err is not None and err.status == 413 and err.code == "too_large"
    assert req.pulled < refused_within, req.pulled
    assert req.pulled > (35 if field == "file" else 80)  # not before the limit either
    assert _drain(_FakeRequest([head] + [b"\0" * 4096] * 10), 100_000, 300_000) is None
