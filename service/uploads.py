"""The one upload reader: a multipart field ``file`` or the raw body, in memory or spooled to disk.

``POST /score`` reads the image into memory (:func:`read_upload`), ``POST /jobs`` spools a zip to the
job folder (:func:`spool_upload`); both go through the same checks. The size limit is enforced twice:
a declared ``Content-Length`` over the limit is refused before a byte of the body is read, and the
streamed body (chunked, or lying about its length) is counted as it arrives, so at most ``limit``
bytes are ever held or written. Multipart bodies are parsed while streaming and only the ``file``
part is kept.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import (
    MALFORMED_REQUEST,
    MISSING_FILE,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
    client_closed,
)

FILE_FIELD = "file"
RAW_TYPES = frozenset(
    {"application/dicom", "image/png", "image/jpeg", "image/jpg", "image/pjpeg", "application/octet-stream"}
)
# Declared type -> the format detected by content that it promises (for a soft warning on mismatch).
DECLARED_FORMAT = {
    "application/dicom": "dicom",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
}
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/octet-stream"})
MULTIPART_SLACK = 1 << 16  # room for the part headers around a file of the full size
_HOW = (
    "send the image as multipart field 'file' or as the raw body (application/dicom, image/png, image/jpeg)"
)


@dataclass
class Upload:
    data: bytes
    declared_type: str | None


def too_large(limit: int) -> ApiError:
    # The client may still be sending: ask it to stop rather than reading the rest.
    detail = f"request body exceeds the limit of {limit} bytes"
    return ApiError(413, TOO_LARGE, detail, {"Connection": "close"})


async def read_upload(request: Request, limit: int) -> Upload:
    """The uploaded bytes and their declared content type; raises :class:`ApiError` otherwise."""
    body = bytearray()
    mime = await _receive(request, limit, RAW_TYPES, body.extend)
    if not body:
        raise ApiError(422, MISSING_FILE, f"the request has no body: {_HOW}")
    return Upload(bytes(body), mime)


async def spool_upload(request: Request, limit: int, target: Path) -> None:
    """Write the uploaded file (raw zip body or multipart ``file``) to ``target``, readable by us only."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as sink:
        await _receive(request, limit + MULTIPART_SLACK, ZIP_TYPES, sink.write, allow_empty=True)


async def _receive(
    request: Request,
    limit: int,
    raw_types: frozenset[str],
    sink: Callable[[bytes], object],
    allow_empty: bool = False,
) -> str | None:
    """Stream the body (or its multipart ``file`` part) into ``sink``; returns the declared type."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, MALFORMED_REQUEST, "Content-Length is not a number") from None
        if length > limit:
            raise too_large(limit)
    content_type = request.headers.get("content-type", "")
    mime_bytes, params = parse_options_header(content_type)
    mime = mime_bytes.decode("latin-1").strip().lower()
    try:
        if mime == "multipart/form-data":
            return await _read_multipart(request, params.get(b"boundary"), limit, sink, allow_empty)
        if mime and mime not in raw_types:
            raise ApiError(415, UNSUPPORTED_MEDIA_TYPE, f"Content-Type {mime[:80]!r} is not accepted: {_HOW}")
        async for chunk in _limited(request, limit):
            sink(chunk)
    except ClientDisconnect:
        raise client_closed() from None
    return mime or None


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        yield chunk


@dataclass
class _FilePart:
    """python-multipart callbacks that pass on only the first part named ``file``."""

    sink: Callable[[bytes], object]
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""
    content_type: bytes = b""
    collecting: bool = False
    started: bool = False
    complete: bool = False
    size: int = 0

    def on_part_begin(self) -> None:
        self.disposition, self.content_type = b"", b""
        self.collecting = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = bytes(self.header_name).strip().lower()
        if name == b"content-disposition":
            self.disposition = bytes(self.header_value)
        elif name == b"content-type":
            self.content_type = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if options.get(b"name") == FILE_FIELD.encode() and not self.started:
            self.collecting = self.started = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.collecting:
            self.sink(data[start:end])
            self.size += end - start

    def on_part_end(self) -> None:
        if self.collecting:
            self.collecting, self.complete = False, True


async def _read_multipart(
    request: Request, boundary: bytes | None, limit: int, sink: Callable[[bytes], object], allow_empty: bool
) -> str | None:
    if not boundary:
        raise ApiError(400, MALFORMED_REQUEST, "multipart/form-data without a boundary parameter")
    part = _FilePart(sink)
    callbacks = {
        "on_part_begin": part.on_part_begin,
        "on_header_field": part.on_header_field,
        "on_header_value": part.on_header_value,
        "on_header_end": part.on_header_end,
        "on_headers_finished": part.on_headers_finished,
        "on_part_data": part.on_part_data,
        "on_part_end": part.on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in _limited(request, limit):
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except ClientDisconnect:
        raise
    except Exception as exc:  # python-multipart raises its own errors (and ValueError) on bad input
        raise ApiError(400, MALFORMED_REQUEST, f"malformed multipart body ({type(exc).__name__})") from None
    if not part.started:
        raise ApiError(422, MISSING_FILE, f"no multipart field named 'file': {_HOW}")
    if not part.complete:
        raise ApiError(400, MALFORMED_REQUEST, "the multipart body ended inside the 'file' part")
    if not part.size and not allow_empty:
        raise ApiError(422, MISSING_FILE, "the multipart field 'file' is empty")
    return part.content_type.decode("latin-1").split(";")[0].strip().lower() or None
