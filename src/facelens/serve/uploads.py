"""Reading uploads: the request body as a stream, under a size limit and two deadlines.

Why streamed: a body is refused (413) as soon as it passes the limit, so an upload is never read
unbounded into memory, and a client that sends nothing for ``body_idle_timeout`` seconds, or
not all of it within ``body_timeout``, gets 408 instead of holding a slot (issue #20). Multipart
forms are parsed by ``serve.multi`` on top of ``limited_stream``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anyio
from fastapi import Request

from facelens.serve.errors import ApiError
from facelens.serve.protocol import ServiceLimits


async def _body_chunks(request: Request, limits: ServiceLimits) -> AsyncGenerator[bytes, None]:
    """The request body, with deadlines: 408 when no byte comes for ``body_idle_timeout`` seconds
    or the whole body is not in after ``body_timeout`` (a client sending 1 byte/s holds a slot)."""
    stream = request.stream().__aiter__()
    give_up = anyio.current_time() + limits.body_timeout
    while True:
        left = give_up - anyio.current_time()
        wait = min(limits.body_idle_timeout, left)
        try:
            if wait <= 0:
                raise TimeoutError
            with anyio.fail_after(wait):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            stalled = left > limits.body_idle_timeout
            raise ApiError(408, "body_timeout",
                           f"the upload stalled: no data for {limits.body_idle_timeout:.0f} s" if stalled else
                           f"the upload did not arrive within {limits.body_timeout:.0f} s") from None
        yield chunk


async def limited_stream(request: Request, limit: int, file_limit: int,
                          limits: ServiceLimits | None = None) -> AsyncGenerator[bytes, None]:
    """Yield the request body, raising 413 as soon as more than ``limit`` bytes arrived (and 408 when it
    stalls past the ``limits`` deadlines)."""
    limits = limits or ServiceLimits()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(file_limit)
    seen = 0
    async for chunk in _body_chunks(request, limits):
        seen += len(chunk)
        if seen > limit:
            raise too_large(file_limit)
        if chunk:
            yield chunk


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"upload is larger than the limit of {limit / 1024 / 1024:.1f} MB")


async def read_upload(request: Request, max_bytes: int, limits: ServiceLimits | None = None) -> tuple[bytes, str]:
    """Return (image bytes, name) from a raw image body (multipart forms are read by ``serve.multi.read_form``)."""
    limits = limits or ServiceLimits()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        chunks = [c async for c in limited_stream(request, max_bytes, max_bytes, limits)]
        return b"".join(chunks), "upload"
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {ctype!r} is not accepted: send multipart/form-data with a 'file' field "
                   "or an image/* body")
