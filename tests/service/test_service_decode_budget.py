"""The decode budget on a real server: concurrent large uploads over it are refused with 503 ``busy``.

The server gets the smallest budget (64 MB) and no queueing wait, so while one large image is being
decoded every other large upload must be turned away at once, with ``Retry-After``, never a 500,
and the budget must be whole again afterwards.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from http_support import Server, serving
from PIL import Image

from model.imaging.reader import PEAK_BYTES_PER_PIXEL

BUDGET_MB = 64
SIDE = 4000
CLIENTS = 6


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        tmp_path_factory.mktemp("budget") / "server.log",
        SQUID_DECODE_BUDGET_MB=str(BUDGET_MB),
        SQUID_DECODE_WAIT_S="0",
        # The uploads are large synthetic pictures: decode memory is tested, not the domain gate.
        SQUID_DOMAIN_IMAGE_CHECK="advisory",
    ) as running:
        yield running


def large_png() -> bytes:
    """A gray PNG of a few hundred kB whose decode needs more than the whole budget."""
    ramp = (np.add.outer(np.arange(SIDE), 3 * np.arange(SIDE)) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def post_together(server: Server, data: bytes, clients: int) -> list[httpx.Response]:
    """``clients`` uploads released at the same moment, one connection each."""
    start = threading.Barrier(clients)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        with server.client() as http:
            start.wait()
            response = http.post("/score", content=data, headers={"content-type": "image/png"})
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_concurrent_large_uploads_over_the_budget_get_503_busy_never_500(budgeted: Server) -> None:
    assert SIDE * SIDE * PEAK_BYTES_PER_PIXEL > BUDGET_MB << 20  # each one needs the whole budget
    data = large_png()
    responses = post_together(budgeted, data, CLIENTS)
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    assert 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["reason"] == "busy"
            assert int(response.headers["retry-after"]) > 0
    with budgeted.client() as http:  # every reservation was given back
        for _ in range(2):
            assert http.post("/score", content=data, headers={"content-type": "image/png"}).status_code == 200
    assert budgeted.metric("squid_http_requests_total", {"status": "500"}) == 0
    assert budgeted.metric("squid_http_requests_total", {"status": "503"}) >= 1
    errors = [r for r in budgeted.log_records() if r.get("level") in ("error", "critical")]
    assert not errors and "Traceback" not in budgeted.logs(), errors
