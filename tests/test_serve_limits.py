"""Service limits through a real uvicorn server on loopback (issue #20).

A stand-in analyzer keeps these fast and lets a test make analysis crash or hang; the real
models are covered by test_serve.py. Limits are shortened (1-3 s) so every deadline is hit
within the test's own bounded waits.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from facelens.images import MemoryBudget
from facelens.schema import ImageResult
from facelens.serve.app import Expired, analyze_bytes, create_app, uvicorn_options
from facelens.serve.protocol import ServiceLimits

LIMITS = ServiceLimits(header_timeout=1.0, body_idle_timeout=1.0, body_timeout=3.0, request_timeout=1.5,
                       keep_alive_timeout=5.0, max_connections=12, decode_memory_bytes=50_000_000)


def _png(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = _png()
#: Tells the stand-in analyzer to crash (width 61) or to hang (width 62).
CRASH = _png(61)
HANG = _png(62)


class StandInAnalyzer:
    """Answers 'no face' at once; crashes on 61 px photos and hangs for 3 s on 62 px ones."""

    def models_info(self) -> list[dict]:
        return [{"task": "age", "name": "stand-in", "version": "0", "arch": "none"}]

    def analyze_array(self, rgb: np.ndarray, label: str, with_crops: bool = False, t_load: float = 0.0) -> ImageResult:
        if rgb.shape[1] == 61:
            raise RuntimeError("stand-in analyzer crashed on purpose")
        if rgb.shape[1] == 62:
            time.sleep(3.0)
        return ImageResult(path=label, width=rgb.shape[1], height=rgb.shape[0], message="no face found")


@dataclass
class Server:
    url: str
    host: str
    port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = _free_port()
    config = uvicorn.Config(create_app(analyzer=StandInAnalyzer(), max_upload_bytes=200_000, limits=LIMITS),
                            host="127.0.0.1", port=port, log_level="info", **uvicorn_options(LIMITS))
    config.facelens_limits = LIMITS
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield Server(f"http://127.0.0.1:{port}", "127.0.0.1", port)
    srv.should_exit = True
    thread.join(10)


def _post(http: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return http.post(f"{url}/v1/analyze", content=body, headers={"Content-Type": "image/png"})


def _read_all(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    sock.settimeout(within)
    start = time.monotonic()
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for more than {within} s")
        if not data:
            return b"".join(chunks), time.monotonic() - start
        chunks.append(data)


def _json_body(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def test_500_closes_its_connection_and_spares_the_next_requests(server, caplog):
    """Good and crashing uploads interleaved on one keep-alive client: every good one succeeds."""
    caplog.set_level(logging.INFO)
    statuses = []
    with httpx.Client(timeout=10) as http:
        for body in [GOOD, CRASH, GOOD, CRASH, CRASH, GOOD, GOOD]:
            r = _post(http, server.url, body)
            statuses.append(r.status_code)
            if r.status_code == 500:
                assert r.headers["connection"] == "close"
                assert r.json()["error"]["code"] == "internal_error"
    assert statuses == [200, 500, 200, 500, 500, 200, 200]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3, [r.getMessage() for r in errors]
    for r in errors:
        assert r.exc_info is None and "Traceback" not in r.getMessage()
        assert "crashed on purpose" in r.getMessage()
    assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)


def test_handled_client_errors_log_no_traceback(server, caplog):
    caplog.set_level(logging.INFO)
    with httpx.Client(timeout=10) as http:
        assert _post(http, server.url, b"not an image at all").status_code == 415
        assert _post(http, server.url, GOOD[: len(GOOD) // 2]).status_code == 422
    assert not any(r.exc_info for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_partial_headers_are_dropped_with_json_408(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        raw, waited = _read_all(sock, within=LIMITS.header_timeout + 5)
    status, headers, body = _json_body(raw)
    assert status == 408 and body["error"]["code"] == "header_timeout"
    assert headers["connection"] == "close"
    assert waited < LIMITS.header_timeout + 2


def test_stalled_body_is_dropped_with_json_408(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                     + GOOD[:100])
        raw, waited = _read_all(sock, within=LIMITS.body_idle_timeout + 5)
    status, headers, body = _json_body(raw)
    assert status == 408 and body["error"]["code"] == "body_timeout" and "stalled" in body["error"]["message"]
    assert headers["connection"] == "close"
    assert waited < LIMITS.body_idle_timeout + 2


def test_trickled_body_is_dropped_at_the_body_deadline(server):
    """One byte every 0.4 s never stalls long enough for the idle timer; the total deadline ends it."""
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        start = time.monotonic()
        sock.settimeout(0.4)
        raw = b""
        for i in range(40):
            try:
                sock.sendall(GOOD[i : i + 1])
                raw = sock.recv(65536)
                if raw:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        waited = time.monotonic() - start
        raw += _read_all(sock, within=5)[0]
    status, _, body = _json_body(raw)
    assert status == 408 and "did not arrive within" in body["error"]["message"]
    assert waited < LIMITS.body_timeout + 2


def test_processing_cap_answers_504_in_time(server):
    with httpx.Client(timeout=10) as http:
        start = time.monotonic()
        r = _post(http, server.url, HANG)
        waited = time.monotonic() - start
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert r.headers["connection"] == "close"
        assert waited < LIMITS.request_timeout + 1.0
        assert _post(http, server.url, GOOD).status_code == 200


def test_malformed_http_gets_json_400(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw, _ = _read_all(sock, within=5)
    status, headers, body = _json_body(raw)
    assert status == 400 and body["error"]["code"] == "bad_http_request"
    assert headers["content-type"] == "application/json"


def test_connection_cap_answers_json_503(server):
    socks = []
    try:
        for _ in range(LIMITS.max_connections):
            socks.append(socket.create_connection((server.host, server.port)))
        time.sleep(0.2)
        with socket.create_connection((server.host, server.port)) as extra:
            raw, _ = _read_all(extra, within=5)
        status, _, body = _json_body(raw)
        assert status == 503 and body["error"]["code"] == "too_many_connections"
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    with httpx.Client(timeout=10) as http:
        assert _post(http, server.url, GOOD).status_code == 200


def test_405_has_allow_and_json(server):
    with httpx.Client(timeout=10) as http:
        r = http.get(f"{server.url}/v1/analyze")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_expired_deadline_stops_before_decoding():
    with pytest.raises(Expired, match="queued"):
        analyze_bytes(StandInAnalyzer(), GOOD, "late.png", False, False, deadline=time.monotonic() - 1)


def test_memory_budget_makes_big_decodes_wait():
    budget = MemoryBudget(100)
    order = []

    def second() -> None:
        with budget.hold(50):
            order.append("second")

    with budget.hold(80):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"] and budget.in_use == 0
    with budget.hold(100), pytest.raises(TimeoutError), budget.hold(10, timeout=0.1):  # never fits: gives up
        pass
    with budget.hold(10**9):  # larger than the whole budget: runs alone rather than never
        assert budget.in_use == budget.limit
    assert budget.in_use == 0


def test_degraded_mode_does_not_show_server_paths(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    secret = tmp_path / "srv" / "secret-model-dir"
    secret.mkdir(parents=True)
    monkeypatch.setenv("FACELENS_MODELS", str(secret))
    with TestClient(create_app()) as c:
        health = c.get("/healthz").json()
        r = c.post("/v1/analyze", content=GOOD, headers={"Content-Type": "image/png"})
    assert health["status"] == "degraded" and "ModelLoadError" in health["error"]
    assert r.status_code == 503
    for text in (json.dumps(health), r.text):
        assert str(tmp_path) not in text and "secret-model-dir" not in text
