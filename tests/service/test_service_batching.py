"""Micro-batching: concurrent requests share inference calls and get exactly the sequential scores."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from dicom_factory import make_dicom
from http_support import Server, chest_like, local_score, metric_value, png_gray

from model.runtime import ScoreResult, SquidRuntime
from model.steps import Prepared, prepare
from service.batching import BatcherClosedError, MicroBatcher

CONCURRENCY = 16


@pytest.fixture(scope="module")
def uploads() -> list[bytes]:
    """Distinct images, alternating DICOM and PNG."""
    images = []
    for seed in range(CONCURRENCY):
        v = chest_like(256, 224, top=4095, seed=seed)
        images.append(make_dicom(v, bits_stored=12) if seed % 2 else png_gray(v))
    return images


def score_all_at_once(server: Server, uploads: list[bytes]) -> list[float]:
    barrier = threading.Barrier(len(uploads))

    def one(data: bytes) -> float:
        with server.client() as http:
            barrier.wait()
            response = http.post("/score", files={"file": ("a", data)})
        assert response.status_code == 200, response.text
        return float(response.json()["score"])

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(one, uploads))


def test_concurrent_requests_are_batched_and_score_exactly_like_sequential_ones(
    server: Server, client: httpx.Client, uploads: list[bytes], local_runtime: SquidRuntime
) -> None:
    sequential = []
    for data in uploads:
        response = client.post("/score", files={"file": ("a", data)})
        assert response.status_code == 200
        sequential.append(response.json()["score"])
    assert sequential == [local_score(local_runtime, data) for data in uploads]

    for _ in range(3):  # batching depends on arrival times: a loaded machine may need another round
        before = httpx.get(f"{server.url}/metrics").text
        concurrent = score_all_at_once(server, uploads)
        after = httpx.get(f"{server.url}/metrics").text
        assert concurrent == sequential  # bit-identical, whatever batch each landed in
        calls = metric_value(after, "squid_inference_batch_size_count") - metric_value(
            before, "squid_inference_batch_size_count"
        )
        singles = metric_value(after, "squid_inference_batch_size_bucket", {"le": "1.0"}) - metric_value(
            before, "squid_inference_batch_size_bucket", {"le": "1.0"}
        )
        images = metric_value(after, "squid_inference_batch_size_sum") - metric_value(
            before, "squid_inference_batch_size_sum"
        )
        assert images == len(uploads)
        if calls - singles > 0:
            assert calls < len(uploads)
            return
    pytest.fail("16 simultaneous requests never shared an inference call")


# --- the batcher in-process ---------------------------------------------------------------------------


class SlowRuntime:
    """Stands in for SquidRuntime: records batch sizes and blocks its thread for a while."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.with_maps: list[bool] = []

    def score(self, batch: np.ndarray, with_map: bool = True) -> list[ScoreResult]:
        self.batches.append(len(batch))
        self.with_maps.append(with_map)
        time.sleep(self.delay)
        blank = np.zeros((2, 2), np.float32) if with_map else None
        return [ScoreResult(float(x.mean()), float(x.mean()), False, 0.5, blank) for x in batch]


def item(value: float) -> Prepared:
    return Prepared(decoded=None, array=np.full((4, 4), value, np.float32))  # type: ignore[arg-type]


def test_batches_respect_max_batch_and_keep_request_order() -> None:
    async def scenario() -> tuple[list[float], list[int], list[int]]:
        runtime = SlowRuntime(delay=0.05)
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(runtime, max_batch=4, max_wait_ms=50, executor=executor)  # type: ignore[arg-type]
            batcher.start()
            outcomes = await asyncio.gather(*(batcher.submit(item(i)) for i in range(10)))
            await batcher.stop()
        return [o.result.score for o in outcomes], [o.batch_size for o in outcomes], runtime.batches

    scores, sizes, calls = asyncio.run(scenario())
    assert scores == [float(i) for i in range(10)]
    assert max(sizes) <= 4
    assert sum(min(size, 4) for size in calls) >= 10
    assert all(size >= 2 for size in calls)  # a lone image is padded to two (same kernels)
    assert len(calls) < 10


def test_a_batch_computes_maps_only_when_one_of_its_requests_needs_one() -> None:
    async def scenario() -> tuple[list[bool], list[bool]]:
        runtime = SlowRuntime(delay=0.05)
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(runtime, max_batch=4, max_wait_ms=50, executor=executor)  # type: ignore[arg-type]
            batcher.start()
            plain = await asyncio.gather(*(batcher.submit(item(i), with_map=False) for i in range(4)))
            mixed = await asyncio.gather(*(batcher.submit(item(i), with_map=i == 2) for i in range(4)))
            await batcher.stop()
        return [o.result.anomaly_map is not None for o in plain + mixed], runtime.with_maps

    has_map, calls = asyncio.run(scenario())
    assert has_map == [False] * 4 + [True] * 4
    assert calls[0] is False and calls[-1] is True


def test_a_lone_request_does_not_wait_but_an_announced_one_is_waited_for() -> None:
    async def scenario() -> tuple[int, list[int]]:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(SlowRuntime(), max_batch=8, max_wait_ms=60_000, executor=executor)  # type: ignore[arg-type]
            batcher.start()
            alone = await asyncio.wait_for(batcher.submit(item(1.0)), 30)  # not the 60 s max wait

            async def decoding_meanwhile() -> int:
                with batcher.incoming():
                    await asyncio.sleep(0.05)
                    prepared = item(3.0)
                return (await batcher.submit(prepared)).batch_size

            late = asyncio.create_task(decoding_meanwhile())
            await asyncio.sleep(0)  # it has announced itself
            first = await asyncio.wait_for(batcher.submit(item(2.0)), 30)
            sizes = [first.batch_size, await late]
            await batcher.stop()
        return alone.batch_size, sizes

    alone, together = asyncio.run(scenario())
    assert alone == 1
    assert together == [2, 2]


def test_inference_does_not_block_the_event_loop() -> None:
    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(SlowRuntime(delay=0.3), max_batch=8, max_wait_ms=0, executor=executor)  # type: ignore[arg-type]
            batcher.start()
            task = asyncio.create_task(ticker())
            await batcher.submit(item(1.0))
            task.cancel()
            await batcher.stop()
        return ticks

    assert asyncio.run(scenario()) >= 5


def test_submit_before_start_and_after_stop_is_refused() -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(SlowRuntime(), max_batch=2, max_wait_ms=1, executor=executor)  # type: ignore[arg-type]
            with pytest.raises(BatcherClosedError):
                await batcher.submit(item(0.0))
            batcher.start()
            assert (await batcher.submit(item(2.0))).result.score == 2.0
            await batcher.stop()
            with pytest.raises(BatcherClosedError):
                await batcher.submit(item(0.0))

    asyncio.run(scenario())


def test_real_runtime_batch_of_any_size_gives_the_same_bits(local_runtime: SquidRuntime) -> None:
    """The property the micro-batcher relies on, checked on the shipped artifact."""
    from model.steps import infer

    prep = local_runtime.preprocessing
    items = [prepare(png_gray(chest_like(96, 96, seed=s)), prep, 10**8) for s in range(5)]
    alone = [infer(local_runtime, [one])[0][0] for one in items]
    together, _ = infer(local_runtime, items)
    pairs, _ = infer(local_runtime, items[:2])
    assert [r.score for r in together] == [r.score for r in alone]
    assert [r.raw_score for r in pairs] == [r.raw_score for r in alone[:2]]
    assert all(np.array_equal(a.anomaly_map, b.anomaly_map) for a, b in zip(alone, together, strict=True))
