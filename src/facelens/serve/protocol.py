"""uvicorn's h11 protocol with the limits the service needs before a request reaches the app.

Why a subclass: uvicorn arms its keep-alive timer only *between* requests and cancels it on
the first byte, so a client that sends half a request line and stops holds a connection (and
a file descriptor) forever; 1,100 such clients were all accepted. It also answers protocol
errors and its concurrency limit in plain text. This protocol adds:

* a header deadline: a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening (or of its previous response), else it gets a JSON 408
  (or, if it sent nothing, is just closed);
* a cap on open connections (``max_connections``): past it, new connections get a JSON 503
  and are closed at once, instead of queueing unbounded;
* JSON bodies (``{"error": {"code", "message"}}``) with ``Connection: close`` for the 400s
  uvicorn itself produces on malformed HTTP.

Body read deadlines live where the upload is read (``facelens.serve.uploads``), the processing
cap where it is analysed (``facelens.serve.analysis``). Settings come from ``ServiceLimits`` fields copied onto the uvicorn
``Config`` (``facelens_limits``), so they survive uvicorn's worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, fields
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ServiceLimits:
    """Every time and size limit of the service, in one place (documented in benchmarks/README.md)."""

    #: Seconds a connection may take to send a complete request line and headers.
    header_timeout: float = 10.0
    #: Seconds without a single body byte before an upload is dropped (408).
    body_idle_timeout: float = 10.0
    #: Seconds to receive a whole upload (10 MB in 30 s is 2.8 Mbit/s).
    body_timeout: float = 30.0
    #: Seconds a request may spend queued and processed after its body arrived (then 503/504).
    request_timeout: float = 20.0
    #: Seconds an idle keep-alive connection stays open (uvicorn's own timer).
    keep_alive_timeout: float = 5.0
    #: Open connections per worker process; more are answered 503 and closed.
    max_connections: int = 256
    #: Bytes of decode memory in flight per process (see ``facelens.images.decode_memory_estimate``).
    decode_memory_bytes: int = 700_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceLimits:
        """Defaults, overridden by ``FACELENS_<FIELD>`` variables (how uvicorn's worker processes get them)."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f"FACELENS_{f.name.upper()}")
            if raw:
                values[f.name] = type(getattr(cls, f.name))(float(raw))
        return cls(**values)

    def to_env(self, env: MutableMapping[str, str]) -> None:
        for f in fields(self):
            env[f"FACELENS_{f.name.upper()}"] = str(getattr(self, f.name))


def json_error_bytes(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class HardenedH11Protocol(H11Protocol):
    """H11Protocol plus a header deadline, a connection cap and JSON protocol errors (module docstring)."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:  # noqa: ANN001 - uvicorn's signature
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ServiceLimits = getattr(config, "facelens_limits", None) or ServiceLimits.from_env()
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    # -- connection lifecycle ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._reply_and_close(503, "too_many_connections",
                                  f"the server has {self.limits.max_connections} open connections; retry later",
                                  extra=[(b"retry-after", b"5")])
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request head is complete
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._head_bytes = 0
            self._arm_header_timer()  # the next request's head gets the same deadline

    # -- header deadline -----------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is not h11.IDLE or self._head_bytes == 0:
            self.transport.close()  # idle (uvicorn's keep-alive timer would close it too) or mid-response
            return
        self.logger.info("dropped a connection that sent an incomplete request head for %.0f s", self.limits.header_timeout)
        self._reply_and_close(408, "header_timeout",
                              f"the request line and headers did not arrive within {self.limits.header_timeout:.0f} s")

    # -- JSON replies outside the app ---------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self._reply_and_close(400, "bad_http_request", f"malformed HTTP request ({msg.rstrip('.')})")

    def _reply_and_close(self, status: int, code: str, message: str,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Write a complete JSON response straight to the transport and close the connection."""
        body = json_error_bytes(code, message)
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close"]
        head += [f"{k.decode()}: {v.decode()}" for k, v in extra or []]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self._cancel_header_timer()
        self.transport.close()
