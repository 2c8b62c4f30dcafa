"""A real stack for the worklist tests: Redis, one worker, ``squid serve``, over a folder of films."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.jobs.jobs_support import Api, RedisServer, Worker, job_env, start_api, start_worker
from tests.worklist.films import Study, make_films


@dataclass
class Stack:
    env: dict[str, str]
    api: Api
    worker: Worker
    import_root: Path
    studies: list[Study]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("worklist")
    redis_server = RedisServer(tmp / "redis", persistent=False).start()
    env = job_env(
        tmp,
        redis_server.url,
        SQUID_DICOM_SPOOL_DIR=str(tmp / "spool"),
        SQUID_NODE_STATE_DIR=str(tmp / "node-state"),
        SQUID_INTRA_OP_THREADS="1",
    )
    studies = make_films(tmp / "import" / "ward-3", shared_data)
    worker = start_worker(env, tmp / "worker.log")
    api = start_api(env, tmp / "api.log")
    try:
        yield Stack(env, api, worker, tmp / "import", studies)
    finally:
        api.stop()
        worker.stop()
        redis_server.kill()
