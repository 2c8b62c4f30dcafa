"""Session fixtures: a real uvicorn server (``squid serve`` in a subprocess) on a free port.

``server`` runs the default settings and artifact. ``secured_server`` adds an API key, a threshold
override and a 1 MB upload limit; only the tests that ask for it start it. Each server's stdout and
stderr go to one file, so tests can read the structured logs.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from http_support import API_KEY, THRESHOLD_OVERRIDE, Server, serving

from model.runtime import SquidRuntime


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("server") / "server.log") as running:
        yield running


@pytest.fixture(scope="session")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        tmp_path_factory.mktemp("secured") / "server.log",
        SQUID_API_KEY=API_KEY,
        SQUID_THRESHOLD=str(THRESHOLD_OVERRIDE),
        SQUID_MAX_UPLOAD_MB="1",
    ) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture(scope="session")
def local_runtime() -> SquidRuntime:
    """The same artifact opened in the test process, for in-process reference scores."""
    return SquidRuntime(intra_op_threads=1)
