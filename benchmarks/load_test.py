"""Load test for ``facelens serve``: bounded concurrent uploads over loopback, then latency and throughput.

Starts the server as a subprocess on 127.0.0.1 (a free port), waits for /healthz, runs N
client threads that each send one request at a time for D seconds, stops the server and
prints p50/p95/p99 latency, requests/s and the error count. Only loopback traffic.

    python benchmarks/load_test.py                      # 16 clients, 60 s
    python benchmarks/load_test.py --clients 8 --duration 10 --workers 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import numpy as np
from PIL import Image


def face_jpeg_640x480() -> bytes:
    """skimage's astronaut photo (public domain, one face) scaled to 480 px high and padded to 640x480."""
    from skimage import data

    face = Image.fromarray(data.astronaut()).resize((480, 480), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (640, 480), (128, 128, 128))
    canvas.paste(face, (80, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int, log_file=None) -> subprocess.Popen:
    """``facelens serve`` on loopback; its log goes to ``log_file`` (an open file) or a pipe read on exit."""
    cmd = [sys.executable, "-m", "facelens.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=log_file or subprocess.DEVNULL, stderr=log_file or subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = proc.stderr.read()[-2000:] if proc.stderr else "(see its log file)"
            raise SystemExit(f"server exited early (code {proc.returncode}):\n{log}")
        try:
            r = httpx.get(f"{url}/healthz", timeout=2)
            if r.status_code == 200 and r.json().get("models_loaded"):
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("server did not become ready in time")


def run_clients(url: str, body: bytes, clients: int, duration: float, timeout: float) -> tuple[list[float], Counter]:
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client() -> None:
        with httpx.Client(timeout=timeout) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/analyze", content=body, headers={"Content-Type": "image/jpeg"})
                    ok = r.status_code == 200 and len(r.json().get("faces", [])) == 1
                    kind = None if ok else f"HTTP {r.status_code}" if r.status_code != 200 else "wrong face count"
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                dt = time.perf_counter() - t0
                with lock:
                    if kind is None:
                        latencies.append(dt)
                    else:
                        errors[kind] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 5)
    return latencies, errors


def summarize(latencies: list[float], errors: Counter, wall: float, clients: int) -> dict:
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests_ok": len(latencies),
        "errors": int(sum(errors.values())),
        "error_kinds": dict(errors),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
                       "p99": round(float(np.percentile(ms, 99)), 1), "max": round(float(np.max(ms)), 1)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (each sends one request at a time)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()

    body = face_jpeg_640x480()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    proc = start_server(port, args.workers)
    try:
        health = wait_ready(url, proc)
        print(f"server ready on {url}: models {json.dumps(health.get('models'))}", file=sys.stderr)
        t0 = time.monotonic()
        latencies, errors = run_clients(url, body, args.clients, args.duration, args.timeout)
        summary = summarize(latencies, errors, time.monotonic() - t0, args.clients)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.json:
        print(json.dumps(summary))
    else:
        lat = summary["latency_ms"]
        print(f"{summary['clients']} clients, {summary['seconds']} s: {summary['requests_ok']} ok, "
              f"{summary['errors']} errors {summary['error_kinds'] or ''}")
        print(f"throughput {summary['requests_per_s']} req/s; latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
              f"p99 {lat['p99']} ms, max {lat['max']} ms")
    sys.exit(1 if summary["errors"] else 0)


if __name__ == "__main__":
    main()
