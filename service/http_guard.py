"""uvicorn's h11 protocol with the limits a public HTTP server needs and uvicorn does not give.

* Header block size and header count: over either, the client gets **431** and the connection is
  closed before h11 parses anything (counted as bytes arrive, so cost stays linear).
* A read deadline: a connection must deliver its complete request head within
  ``SQUID_READ_TIMEOUT_S`` of its first byte (or of connecting), and while a body is being uploaded
  no pause between two chunks may be longer: slow or silent clients get **408** and are closed, so
  they cannot hold connections open (uvicorn's own ``timeout_keep_alive`` covers only the idle time
  between requests).

``squid serve`` selects it with ``http="service.http_guard:GuardedH11Protocol"``; it reads the
limits from the settings of its process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import get_settings

PROTOCOL = "service.http_guard:GuardedH11Protocol"
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def _body(reason: str, detail: str) -> bytes:
    return b'{"error": {"reason": "%s", "detail": "%s"}}' % (reason.encode(), detail.encode())


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` plus header limits (431) and a read deadline for slow clients (408)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_header_bytes = settings.max_header_kb * 1024
        self.max_header_count = settings.max_header_count
        self.read_timeout_s = settings.read_timeout_s
        self._head_bytes = 0
        self._head_lines = 0
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # still reading a request head
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            head = data if end < 0 else data[: max(0, end + 4 - len(self._tail))]  # not the body
            self._tail = window[-3:]
            self._head_bytes += len(head)
            self._head_lines += head.count(b"\n")
            if self._head_bytes > self.max_header_bytes or self._head_lines > self.max_header_count + 2:
                detail = (
                    f"request headers exceed {self.max_header_bytes} bytes or {self.max_header_count} fields"
                )
                self._refuse(_431, _body("headers_too_large", detail))
                return
            if self._deadline is None:
                self._arm()
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self._head_bytes = self._head_lines = 0
            self._tail = b""
        if state is h11.SEND_BODY:
            self._arm()  # the longest pause allowed before the next body chunk
        elif state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # between requests, uvicorn's keep-alive timeout applies
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            detail = f"the request was not received within {self.read_timeout_s:g} s"
            self._refuse(_408, _body("request_timeout", detail))
        else:  # mid-body: the app sees a disconnect and answers nobody
            self.transport.close()

    def _refuse(self, template: bytes, body: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(template % (len(body), body))
            self.transport.close()
