"""A memory budget for the image decodes of one API process (``SQUID_DECODE_BUDGET_MB``).

Each request reserves what its decode will need (the header's pixel count times
:data:`model.imaging.reader.PEAK_BYTES_PER_PIXEL`) before decoding starts. Requests that do not fit
wait their turn; one that has waited ``wait_s`` (``SQUID_DECODE_WAIT_S``) is answered 503 ``busy``
with ``Retry-After``, so a few small uploads of huge images queue instead of pushing the server out
of memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import ApiError

BUSY = "busy"


class DecodeBudget:
    """Bytes in use by running decodes, at most ``total``; a single larger image runs alone."""

    def __init__(self, total: int, wait_s: float = 10.0) -> None:
        self.total = total
        self.wait_s = wait_s
        self.used = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, amount: int) -> AsyncIterator[None]:
        amount = max(0, min(amount, self.total))

        def fits() -> bool:
            return self.used + amount <= self.total

        async with self._changed:
            try:
                if not fits():  # wait_for with no time left refuses even what fits (Python 3.11)
                    await asyncio.wait_for(self._changed.wait_for(fits), self.wait_s)
            except TimeoutError:
                detail = "the server is decoding as many large images as its memory allows; retry shortly"
                raise ApiError(503, BUSY, detail, {"Retry-After": "5"}) from None
            self.used += amount
        try:
            yield
        finally:
            async with self._changed:
                self.used -= amount
                self._changed.notify_all()
