"""Reliability benchmark for ``facelens serve``: hostile inputs, stalled clients, memory, mixed load.

Starts the server on 127.0.0.1 (a free port; loopback only) with its default settings, then:

1. **memory**: two hostile 16-bit 8000 x 8000 PNGs (~130 KB each) uploaded at once; the
   server's peak RSS (``VmHWM`` from /proc) before and after;
2. **catalogue**: every bad input the service should answer with a JSON 4xx (damaged AVIF/DDS
   renamed .jpg, EPS, bombs, truncated, empty, too large, wrong methods, malformed HTTP...), plus
   ``--fuzz`` mutated images; any 5xx, non-JSON answer or dropped connection is a failure;
3. **stalls**: half-sent headers, a stalled body, a body at 1 byte/s, and ``--flood`` idle
   half-sent connections: how long until the server drops each, and how many it accepted;
4. **mixed load**: ``--clients`` keep-alive clients for ``--duration`` seconds sending good
   photos (640x480, one face) mixed with bad inputs (``--bad-fraction``: the catalogue, fuzzed
   images, mutated AVIF/DDS/EPS files named .jpg, and 0.5% hostile 16-bit PNGs): errors on good
   requests (must be 0), 5xx on bad ones, p50/p95 of the good ones, peak RSS.

Finally it reads the server log: tracebacks and bytes logged. Reuses ``load_test.py`` for the
server process, the good photo and the latency summary.

    python benchmarks/reliability.py                            # 16 clients x 60 s (about 2.5 min in all)
    python benchmarks/reliability.py --clients 8 --duration 20 --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz_corpus import fuzzed_inputs, mutate, seed_corpus  # noqa: E402
from load_test import face_jpeg_640x480, free_port, start_server, summarize, wait_ready  # noqa: E402

TARGETS = {"good_request_errors": 0, "peak_rss_mb_two_hostile_16bit": 1200, "stall_drop_seconds": 15}


# -- inputs -------------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _damaged(fmt: str) -> bytes:
    """A ~2 KB damaged file of ``fmt`` (second half overwritten), to be sent as a .jpg."""
    data = bytearray(_encode(Image.new("RGB", (96, 64), (200, 120, 60)), fmt))
    data[len(data) // 2 :] = b"\xfe" * (len(data) - len(data) // 2)
    return bytes(data[:2048])


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + _png_chunk(b"IEND", b""))


def hostile_16bit_png(side: int = 8000) -> bytes:
    """A real, decodable 16-bit grey PNG of side x side pixels that compresses to ~130 KB."""
    arr = np.zeros((side, side), np.uint16)
    arr[::97, ::89] = 51234
    return _encode(Image.fromarray(arr), "PNG", compress_level=9)


def catalogue() -> list[dict]:
    """Bad requests and the statuses that are right for them (all JSON)."""
    jpeg = face_jpeg_640x480()
    items = [
        ("empty body", b"", "image/jpeg", (400,)),
        ("text renamed .jpg", b"hello, not a photo\n" * 50, "image/jpeg", (415,)),
        ("truncated JPEG", jpeg[: len(jpeg) // 3], "image/jpeg", (422,)),
        ("damaged DDS renamed .jpg", _damaged("DDS"), "image/jpeg", (415,)),
        ("EPS (would need Ghostscript)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n" * 20,
         "image/jpeg", (415,)),
        ("PNG bomb 20000x20000", png_header_bomb(20000, 20000), "image/png", (422,)),
        ("PNG bomb 9000x9000 (under Pillow's limit)", png_header_bomb(9000, 9000), "image/png", (422,)),
        ("RGBA 8000x7500 (60 MP, 240 MB decoded)", png_header_bomb(8000, 7500, 8, 6), "image/png", (422,)),
        ("4x4 PNG", _encode(Image.new("RGB", (4, 4)), "PNG"), "image/png", (422,)),
        ("11 MB upload", os.urandom(11 * 1024 * 1024), "image/jpeg", (413,)),
        ("text/plain body", b"plain text", "text/plain", (415,)),
    ]
    if features.check("avif"):
        items.insert(3, ("damaged AVIF renamed .jpg", _damaged("AVIF"), "image/jpeg", (415,)))
    return [{"name": n, "body": b, "ctype": c, "expect": e} for n, b, c, e in items]


def exotic_inputs(seed: int, n: int) -> list[tuple[str, bytes]]:
    """Mutated AVIF, DDS and EPS files named .jpg: formats whose decoders used to raise past the gate
    (RuntimeError, NotImplementedError) and turn into 500s."""
    corpus = seed_corpus()
    kinds = [k for k in ("avif_as_jpg", "dds_as_jpg", "eps_header") if k in corpus]
    rng = np.random.default_rng(seed)
    return [(f"{kinds[i % len(kinds)]}-{i}", mutate(corpus[kinds[i % len(kinds)]], rng)) for i in range(n)]


# -- server process -----------------------------------------------------------------------------
def _proc_status(pid: int, key: str) -> int:
    """VmRSS / VmHWM of ``pid`` in bytes (Linux /proc; psutil is not installed)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _mb(nbytes: int) -> int:
    return round(nbytes / 1e6)


# -- phases -------------------------------------------------------------------------------------
def phase_memory(url: str, pid: int) -> dict:
    """Two hostile 16-bit uploads at once: peak server RSS before and after."""
    body = hostile_16bit_png()
    before = _proc_status(pid, "VmHWM")
    results: list[tuple[int, float]] = []

    def one() -> None:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/analyze", content=body, headers={"Content-Type": "image/png"}, timeout=120)
        results.append((r.status_code, round(time.perf_counter() - t0, 2)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    return {"upload_kb": round(len(body) / 1024), "statuses_and_seconds": results,
            "peak_rss_mb_before": _mb(before), "peak_rss_mb_after": _mb(_proc_status(pid, "VmHWM"))}


def _check_json_error(r: httpx.Response) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body.get("error"), dict) and bool(body["error"].get("code")) and bool(body["error"].get("message"))


def phase_catalogue(url: str, n_fuzz: int) -> dict:
    """Each bad request once on one keep-alive client, then the fuzzed files; any wrong answer is listed."""
    wrong: list[str] = []
    rows = []
    with httpx.Client(timeout=60) as http:
        for item in catalogue():
            r = http.post(f"{url}/v1/analyze", content=item["body"], headers={"Content-Type": item["ctype"]})
            ok = r.status_code in item["expect"] and _check_json_error(r)
            rows.append((item["name"], r.status_code, r.json()["error"]["code"] if ok else r.text[:80]))
            if not ok:
                wrong.append(f"{item['name']}: {r.status_code} {r.text[:120]}")
        others = [
            ("GET /v1/analyze", lambda: http.get(f"{url}/v1/analyze"), 405),
            ("DELETE /healthz", lambda: http.delete(f"{url}/healthz"), 405),
            ("GET /nope", lambda: http.get(f"{url}/nope"), 404),
            ("annotate=maybe", lambda: http.post(f"{url}/v1/analyze?annotate=maybe", content=b"x",
                                                 headers={"Content-Type": "image/jpeg"}), 422),
            ("multipart without 'file'", lambda: http.post(f"{url}/v1/analyze", files={"photo": ("a.jpg", b"x")}), 400),
            ("malformed multipart", lambda: http.post(f"{url}/v1/analyze", content=b"--x\r\nnonsense",
                                                      headers={"Content-Type": "multipart/form-data; boundary=zz"}), 400),
        ]
        for name, call, status in others:
            r = call()
            ok = r.status_code == status and _check_json_error(r) and (status != 405 or "allow" in r.headers)
            rows.append((name, r.status_code, r.json()["error"]["code"] if ok else r.text[:80]))
            if not ok:
                wrong.append(f"{name}: {r.status_code} {r.text[:120]}")
        fuzz_status: Counter = Counter()
        for name, data in fuzzed_inputs(2026, n_fuzz):
            try:
                r = http.post(f"{url}/v1/analyze", files={"file": (name + ".jpg", data, "image/jpeg")})
                fuzz_status[r.status_code] += 1
                if r.status_code >= 500 or (r.status_code != 200 and not _check_json_error(r)):
                    wrong.append(f"fuzz {name}: {r.status_code} {r.text[:120]}")
            except httpx.HTTPError as exc:
                fuzz_status[type(exc).__name__] += 1
                wrong.append(f"fuzz {name}: {type(exc).__name__}")
    return {"requests": rows, "fuzz_statuses": dict(fuzz_status), "wrong": wrong}


def _raw_until_closed(host: str, port: int, first: bytes, then: bytes = b"", every: float = 0.0,
                      limit: float = 60.0) -> tuple[float, str]:
    """Send ``first``, then ``then`` one byte per ``every`` s; seconds until the server closes, and its status line."""
    with socket.create_connection((host, port)) as sock:
        sock.sendall(first)
        start = time.monotonic()
        sock.settimeout(every or limit)
        got, i = b"", 0
        while time.monotonic() - start < limit:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                got += data
            except TimeoutError:
                if then and i < len(then):
                    try:
                        sock.sendall(then[i : i + 1])
                    except OSError:
                        break
                    i += 1
            except OSError:
                break
        waited = time.monotonic() - start
    return round(waited, 1), (got.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without a response")


def phase_stalls(host: str, port: int, flood: int) -> dict:
    """Stalled and trickling clients in parallel, then a flood of idle half-sent connections."""
    head = b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    cases = {
        "half-sent headers": (b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\n", b"", 0.0),
        "body stalls after 100 bytes": (head + b"\xff" * 100, b"", 0.0),
        "body at 1 byte/s": (head, b"\xff" * 1000, 1.0),
        "malformed request line": (b"NOT HTTP\r\n\r\n", b"", 0.0),
    }
    out: dict[str, dict] = {}

    def run(name: str, first: bytes, then: bytes, every: float) -> None:
        waited, line = _raw_until_closed(host, port, first, then, every)
        out[name] = {"dropped_after_s": waited, "answer": line}

    threads = [threading.Thread(target=run, args=(n, *c)) for n, c in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    # Flood: idle half-sent requests; count answered-503 at once vs held, and when the last is gone.
    socks, refused = [], 0
    start = time.monotonic()
    for _ in range(flood):
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            refused += 1
    answered: Counter = Counter()
    remaining = list(socks)
    while remaining and time.monotonic() - start < 60:
        still = []
        for s in remaining:
            s.setblocking(False)
            try:
                data = s.recv(4096)
                answered[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"] += 1
                s.close()
            except BlockingIOError:
                still.append(s)
            except OSError:
                answered["reset"] += 1
                s.close()
        remaining = still
        time.sleep(0.2)
    for s in remaining:
        s.close()
    out[f"flood of {flood} half-sent connections"] = {
        "answers": dict(answered), "refused_at_connect": refused, "still_open_after_60s": len(remaining),
        "all_gone_after_s": round(time.monotonic() - start, 1)}
    return out


def phase_mixed(url: str, clients: int, duration: float, bad_fraction: float, seed: int) -> dict:
    """Keep-alive clients mixing good photos with bad inputs; good requests must all succeed."""
    good = face_jpeg_640x480()
    bad = [item for item in catalogue() if item["name"] != "11 MB upload"]
    bad += [{"name": f"fuzz {n}", "body": d, "ctype": "image/jpeg", "expect": ()} for n, d in fuzzed_inputs(seed, 200)]
    bad += [{"name": n, "body": d, "ctype": "image/jpeg", "expect": ()} for n, d in exotic_inputs(seed, 200)]
    hostile = {"name": "hostile 16-bit", "body": hostile_16bit_png(), "ctype": "image/png", "expect": (200,)}
    latencies: list[float] = []
    good_errors: Counter = Counter()
    bad_status: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                roll = rng.random()
                item = hostile if roll < 0.005 else rng.choice(bad) if roll < bad_fraction else None
                body, ctype = (good, "image/jpeg") if item is None else (item["body"], item["ctype"])
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/analyze", content=body, headers={"Content-Type": ctype})
                    kind = r.status_code
                    face_ok = item is not None or (r.status_code == 200 and len(r.json().get("faces", [])) == 1)
                except httpx.HTTPError as exc:
                    kind, face_ok = type(exc).__name__, False
                dt = time.perf_counter() - t0
                with lock:
                    if item is None:
                        if face_ok:
                            latencies.append(dt)
                        else:
                            good_errors[str(kind)] += 1
                    else:
                        bad_status[str(kind)] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 90)
    summary = summarize(latencies, good_errors, time.monotonic() - t0, clients)
    summary["bad_requests"] = dict(sorted(bad_status.items()))
    summary["bad_5xx"] = sum(v for k, v in bad_status.items() if k.isdigit() and int(k) >= 500)
    return summary


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    ap.add_argument("--bad-fraction", type=float, default=0.25, help="share of bad inputs in the mixed load")
    ap.add_argument("--fuzz", type=int, default=300, help="fuzzed uploads in the catalogue phase")
    ap.add_argument("--flood", type=int, default=1100, help="idle half-sent connections opened at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args()

    _raise_fd_limit()  # the flood needs more than the usual 1024 descriptors (the server inherits it)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="facelens-reliability-", suffix=".log")[1])
    report: dict = {}
    with log_path.open("w") as log_file:
        proc = start_server(port, 1, log_file=log_file)
        try:
            wait_ready(url, proc)
            httpx.post(f"{url}/v1/analyze", content=face_jpeg_640x480(), headers={"Content-Type": "image/jpeg"},
                       timeout=60)  # warm-up: the first request allocates ONNX Runtime's arenas
            report["rss_mb_after_warmup"] = _mb(_proc_status(proc.pid, "VmRSS"))
            report["memory"] = phase_memory(url, proc.pid)
            report["catalogue"] = phase_catalogue(url, args.fuzz)
            report["stalls"] = phase_stalls("127.0.0.1", port, args.flood)
            report["mixed"] = phase_mixed(url, args.clients, args.duration, args.bad_fraction, args.seed)
            report["peak_rss_mb_overall"] = _mb(_proc_status(proc.pid, "VmHWM"))
            report["server_alive"] = proc.poll() is None and httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except Exception:  # noqa: BLE001 - a stuck server is killed
                proc.kill()
    log_text = log_path.read_text(errors="replace")
    report["log"] = {"bytes": len(log_text), "tracebacks": log_text.count("Traceback"),
                     "error_lines": sum(" ERROR " in line for line in log_text.splitlines()), "file": str(log_path)}
    stall_max = max(v["dropped_after_s"] for k, v in report["stalls"].items()
                    if k in ("half-sent headers", "body stalls after 100 bytes"))
    report["targets"] = {
        "good requests failed (target 0)": report["mixed"]["errors"],
        "5xx / wrong answers to bad inputs (target 0)": report["mixed"]["bad_5xx"] + len(report["catalogue"]["wrong"]),
        "peak RSS MB, two hostile 16-bit uploads (target <= 1200)": report["memory"]["peak_rss_mb_after"],
        "stalled client dropped after s (target <= 15)": stall_max,
        "tracebacks in the server log (target 0)": report["log"]["tracebacks"],
    }
    met = (report["mixed"]["errors"] == 0 and report["targets"]["5xx / wrong answers to bad inputs (target 0)"] == 0
           and report["memory"]["peak_rss_mb_after"] <= 1200 and stall_max <= 15 and report["log"]["tracebacks"] == 0)
    report["all_targets_met"] = met
    if args.json:
        print(json.dumps(report, default=str))
    else:
        _print(report)
    sys.exit(0 if met else 1)


def _print(report: dict) -> None:
    m = report["memory"]
    print(f"server RSS after warm-up: {report['rss_mb_after_warmup']} MB")
    print(f"two hostile 16-bit 8000x8000 PNGs ({m['upload_kb']} KB each) at once: {m['statuses_and_seconds']} "
          f"(status, s); peak RSS {m['peak_rss_mb_before']} -> {m['peak_rss_mb_after']} MB")
    print("catalogue of bad requests:")
    for name, status, code in report["catalogue"]["requests"]:
        print(f"  {status}  {code:<24} {name}")
    print(f"  fuzzed uploads: {report['catalogue']['fuzz_statuses']}")
    for w in report["catalogue"]["wrong"]:
        print(f"  WRONG: {w}")
    print("stalled clients:")
    for name, v in report["stalls"].items():
        print(f"  {name}: {v}")
    mx = report["mixed"]
    lat = mx["latency_ms"]
    print(f"mixed load, {mx['clients']} clients, {mx['seconds']} s: {mx['requests_ok']} good ok, {mx['errors']} good "
          f"failed {mx['error_kinds'] or ''}; bad inputs answered {mx['bad_requests']}")
    print(f"  good requests: {mx['requests_per_s']} req/s, p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms")
    print(f"peak server RSS overall: {report['peak_rss_mb_overall']} MB; server alive at the end: {report['server_alive']}")
    lg = report["log"]
    print(f"server log: {lg['bytes']:,} bytes, {lg['error_lines']} ERROR lines, {lg['tracebacks']} tracebacks ({lg['file']})")
    print("targets:")
    for k, v in report["targets"].items():
        print(f"  {k}: {v}")
    print("ALL TARGETS MET" if report["all_targets_met"] else "SOME TARGETS MISSED")


if __name__ == "__main__":
    main()
