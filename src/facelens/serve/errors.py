"""Errors as JSON: ``{"error": {"code", "message"}}`` for every failure a client can cause, and a
last-resort boundary for the ones nobody expected.

Why one module: the routes raise ``ApiError``; the handlers here turn it, Starlette's 404/405 and
request-validation errors into the same JSON shape, and ``ErrorBoundary`` makes sure nothing
escapes to uvicorn (see its docstring), so a client always gets JSON and a clean connection.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facelens.serve.protocol import json_error_bytes

log = logging.getLogger("facelens.serve")


class ApiError(Exception):
    """A failure with a known HTTP status, answered as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}}, headers=headers)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    msg = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return error_response(422, "invalid_request", msg or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors for ``ApiError``, 404/405 (with ``Allow``) and invalid query values; the boundary around it all."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(ErrorBoundary)


# -- last resort: JSON 500, one log line, connections closed cleanly ------------------------------
def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"


class ErrorBoundary:
    """ASGI middleware: nothing escapes to uvicorn, and error responses end their connection when needed.

    Why: an exception that escapes the app after the 500 was sent makes uvicorn log a ~9.5 KB
    traceback and close the socket without ``Connection: close``; a client reusing that
    keep-alive connection then fails an unrelated request. Here an unexpected exception becomes
    a JSON 500 and one log line (the traceback only at DEBUG), and every 5xx, 408 and 413, and
    any error sent before the request body was read to the end, carries ``Connection: close``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        body_done = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") in (b"0", b"")
        started = False

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if status >= 500 or status in (408, 413) or (status >= 400 and not body_done):
                    hdrs = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*hdrs, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, tracked_receive, guarded_send)
        except ClientDisconnect:
            log.info("client went away during %s %s", scope.get("method"), scope.get("path"))
        except Exception as exc:  # noqa: BLE001 - the boundary: log once, answer JSON, keep serving
            log.error("unexpected error on %s %s: %s: %s (at %s)", scope.get("method"), scope.get("path"),
                      type(exc).__name__, " ".join(str(exc).split())[:300], _where(exc))
            log.debug("traceback of the unexpected error", exc_info=exc)
            if not started:
                body = json_error_bytes("internal_error", f"unexpected server error ({type(exc).__name__}); it has been logged")
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
