"""Several photos in one ``POST /v1/analyze``: the multipart ``files`` field, answered as a list in input order.

Why a form of its own: the single-photo form (field ``file``, or a raw ``image/*`` body) answers
one result object, or an HTTP error for a bad photo; clients rely on that, so it stays as it
was. Sending the photos as ``files`` (repeated) asks for ``{"results": [...]}`` instead, one
entry per photo in the order sent, where a bad photo gets its own ``error`` and the others
are still analysed (a batch of 16 should not fail for one broken file).

Limits, enforced while the body streams in (JSON 4xx, never a 500): at most ``max_photos``
photos, at most ``max_total_bytes`` for the whole request, and the per-photo upload limit for
each photo (a photo over it gets its own ``too_large`` error in the list).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from facelens.schema import SCHEMA_VERSION
from facelens.serve.analysis import models_summary
from facelens.serve.errors import ApiError
from facelens.serve.uploads import too_large

#: Photos one request may carry in ``files``: 16 photos of ~50 ms each answer in about a second
#: on 2 cores; a larger batch mostly means a longer wait for its client and a longer-held upload.
DEFAULT_MAX_PHOTOS = 16
#: The whole request's limit is this many times the per-photo limit (30 MB with the default 10 MB).
TOTAL_FACTOR = 3
#: Room for multipart boundaries and part headers on top of the size limits.
OVERHEAD_PER_PART = 4 * 1024
#: The single-photo form's room for boundaries, headers and small fields (as before the list form existed).
SINGLE_OVERHEAD = 64 * 1024

#: The service's body reader: ``open_stream(limit, file_limit)`` yields the body, 413 past ``limit``.
OpenStream = Callable[[int, int], AsyncGenerator[bytes, None]]
#: The service's single-photo analysis: ``await run_one(data, name)`` -> the result dict, ApiError for a bad photo.
RunOne = Callable[[bytes, str], Awaitable[dict[str, Any]]]

SINGLE_FIELD = "file"
LIST_FIELD = "files"


def limits_text(max_upload_bytes: int, max_photos: int, max_total_bytes: int) -> str:
    """The limits in words, for the OpenAPI description (what ``/docs`` shows) and error messages."""
    mb = 1024 * 1024
    return (f"Several photos in one request: send them as repeated multipart fields named `files` "
            f"(at most {max_photos} photos, {max_total_bytes / mb:.0f} MB in all, {max_upload_bytes / mb:.0f} MB "
            "each); the answer is `{\"results\": [...]}`, one entry per photo in the order sent, each with its "
            "own `error` (and `error_code`, `status`) when that photo could not be analysed. Past the count or "
            "the total size the whole request is refused (400 `too_many_photos`, 413 `too_large`).")


def openapi_multipart_schema() -> dict[str, Any]:
    """The multipart body: one ``file`` (object answer) or several ``files`` (list answer)."""
    return {"type": "object",
            "properties": {SINGLE_FIELD: {"type": "string", "format": "binary",
                                          "description": "one photo: the answer is one result object"},
                           LIST_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                        "description": "several photos: the answer is {\"results\": [...]}"}}}


@dataclass
class Form:
    """What a multipart request carried: ``list_form`` when it used ``files``; ``photos`` as (name, upload)."""

    list_form: bool
    photos: list[tuple[str, UploadFile]] = field(default_factory=list)
    closer: Any = None

    async def close(self) -> None:
        if self.closer is not None:
            await self.closer.close()


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data"


#: The first part's headers must arrive within this many bytes (they are a few hundred).
HEAD_PEEK = 16 * 1024
_FIELD_NAME = re.compile(rb'name="([^"]*)"')


def first_field_name(head: bytes) -> str | None:
    """The field name in the first part's headers of a multipart body's start, or None if not there yet."""
    end = head.find(b"\r\n\r\n", head.find(b"\r\n") + 2)
    m = _FIELD_NAME.search(head[:end]) if end > 0 else None
    return m.group(1).decode("latin-1") if m else None


async def _body(open_stream: OpenStream, max_upload_bytes: int, max_photos: int,
                max_total_bytes: int) -> AsyncGenerator[bytes, None]:
    """The request body under the limit of its form: one photo's when the first part is ``file``, else the total.

    Why peek: a single-photo upload used to be cut off at the per-photo limit while streaming;
    with a several-photos form on the same endpoint the parser needs the larger budget, but a
    too-large single photo should still be refused after ``max_upload_bytes``, not after 30 MB.
    """
    budget = max(max_total_bytes, max_upload_bytes) + OVERHEAD_PER_PART * (max_photos + 4)
    stream = open_stream(budget, max_total_bytes)
    head = b""
    async for chunk in stream:
        head += chunk
        if first_field_name(head) is not None or len(head) > HEAD_PEEK:
            break
    single = first_field_name(head) == SINGLE_FIELD
    cap, limit = (max_upload_bytes + SINGLE_OVERHEAD, max_upload_bytes) if single else (budget, max_total_bytes)
    seen = len(head)
    if seen > cap:
        raise too_large(limit)
    if head:
        yield head
    async for chunk in stream:
        seen += len(chunk)
        if seen > cap:
            raise too_large(limit)
        yield chunk


async def read_form(request: Request, open_stream: OpenStream, max_upload_bytes: int, max_photos: int,
                    max_total_bytes: int) -> Form:
    """Parse a multipart request into a Form; ApiError (4xx) for a bad form or one over the limits.

    ``open_stream(limit, file_limit)``: the service's own body reader (its size cut-off, and
    whatever deadlines it enforces), so this form obeys the same rules as a single upload.

    The single form keeps its old limit (one photo of ``max_upload_bytes``, refused while it
    streams in); the list form may reach ``max_total_bytes``. Which form it is shows only inside
    the body, in the first part's headers (``_body``); each photo is checked again after parsing.
    """
    parser = MultiPartParser(request.headers, _body(open_stream, max_upload_bytes, max_photos, max_total_bytes),
                             max_files=max_photos + 1, max_fields=20)
    try:
        parsed = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise ApiError(400, "too_many_photos", f"at most {max_photos} photos per request") from exc
        raise ApiError(400, "bad_multipart", f"could not parse the multipart form: {exc.message}") from exc
    singles = [u for u in parsed.getlist(SINGLE_FIELD) if isinstance(u, UploadFile)]
    many = [u for u in parsed.getlist(LIST_FIELD) if isinstance(u, UploadFile)]
    form = Form(list_form=bool(many), closer=parsed)
    try:
        if many and singles:
            raise ApiError(400, "mixed_fields", f"send one photo as '{SINGLE_FIELD}' or several as '{LIST_FIELD}', "
                                                "not both")
        if len(singles) > 1:
            raise ApiError(400, "several_files", f"several photos go in fields named '{LIST_FIELD}' (the answer is "
                                                 f"then a list); '{SINGLE_FIELD}' takes one")
        uploads = many or singles
        if not uploads:
            raise ApiError(400, "missing_file", f"no file: send the photo in a multipart field named '{SINGLE_FIELD}' "
                                                f"(or several in fields named '{LIST_FIELD}')")
        if len(uploads) > max_photos:
            raise ApiError(400, "too_many_photos", f"{len(uploads)} photos sent; at most {max_photos} per request")
        if not many and (uploads[0].size or 0) > max_upload_bytes:
            raise too_large(max_upload_bytes)
        if many and sum(u.size or 0 for u in many) > max_total_bytes:  # when the stream budget was the larger one
            raise too_large(max_total_bytes)
        form.photos = [(u.filename or f"upload-{i + 1}", u) for i, u in enumerate(uploads)]
    except Exception:
        await form.close()
        raise
    return form


async def read_single(form: Form, max_bytes: int) -> tuple[bytes, str]:
    """(bytes, name) of the single-photo form's one photo; 413 past ``max_bytes``. Closes the form."""
    try:
        name, upload = form.photos[0]
        data = await read_photo(upload, max_bytes)
    finally:
        await form.close()
    if data is None:
        raise too_large(max_bytes)
    return data, name


async def read_photo(upload: UploadFile, max_bytes: int) -> bytes | None:
    """The photo's bytes, or None when it is over ``max_bytes`` (read no further than that)."""
    await upload.seek(0)
    data = await upload.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def _error_entry(name: str, status: int, code: str, message: str) -> dict[str, Any]:
    """A failed photo in the list: the JSON Lines record shape (error as text) plus its code and status."""
    return {"schema": SCHEMA_VERSION, "path": name, "width": None, "height": None, "faces": [], "error": message,
            "message": None, "error_code": code, "status": status}


async def answer_list(form: Form, analyzer: Any, run_one: RunOne, max_bytes: int) -> dict[str, Any]:
    """Analyse every photo of a list-form request in order with ``run_one(data, name)``; each failure stays in its entry.

    ``run_one`` is the service's single-photo path (its analysis slots, caps and budgets), so a
    list takes turns with other requests photo by photo instead of holding a slot for all of them.
    """
    results = []
    try:
        for name, upload in form.photos:
            try:
                data = await read_photo(upload, max_bytes)
                if data is None:
                    raise too_large(max_bytes)
                if not data:
                    raise ApiError(400, "empty", "the upload is empty (0 bytes)")
                out = await run_one(data, name)
                out.pop("models", None)  # said once for the whole answer
                results.append(out | {"status": 200})
            except ApiError as exc:
                results.append(_error_entry(name, exc.status, exc.code, f"{name}: {exc.message}"))
    finally:
        await form.close()
    return {"schema": SCHEMA_VERSION, "results": results, "models": models_summary(analyzer)}
