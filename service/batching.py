"""Micro-batching: concurrent requests share one onnxruntime call, off the event loop.

Requests put their preprocessed image on an asyncio queue and await a future. One collector task
takes the oldest image, gathers more until ``max_batch`` images or until the oldest has waited
``max_wait_ms``, and runs the batch in a single-thread executor (onnxruntime parallelises inside the
call; one call at a time keeps the cores for it). While a batch runs, new requests queue up, so
batches grow with load and throughput with them. Requests announce themselves while they decode
(:meth:`MicroBatcher.incoming`): when nobody else is on the way, a lone image does not wait.

A score does not depend on its batch: BatchNorm is in eval mode inside the artifact and
:func:`model.steps.infer` never runs a batch of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass

from model.runtime import ScoreResult, SquidRuntime
from model.steps import Prepared, infer
from service import metrics

log = logging.getLogger("squid.batching")


class BatcherClosedError(RuntimeError):
    """The batcher is not running (startup not finished, or shutting down)."""


@dataclass(frozen=True)
class BatchOutcome:
    """One image's result with how it was computed."""

    result: ScoreResult
    inference_ms: float
    queue_ms: float
    batch_size: int


@dataclass
class _Pending:
    item: Prepared
    future: asyncio.Future[BatchOutcome]
    enqueued: float
    with_map: bool


class MicroBatcher:
    """Collects :class:`Prepared` images into batches of at most ``max_batch``."""

    def __init__(
        self, runtime: SquidRuntime, *, max_batch: int, max_wait_ms: float, executor: Executor
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.runtime = runtime
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1e3
        self._executor = executor
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._incoming = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="squid-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the service is shutting down"))

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Wrap the decoding of a request that will :meth:`submit`: batches wait for it a little."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, item: Prepared, with_map: bool = True) -> BatchOutcome:
        """Queue one image and wait for its result; ``with_map=False`` when its anomaly map will not
        be looked at (a batch computes maps when any of its requests needs one)."""
        if not self.running:
            raise BatcherClosedError("the model is not ready")
        loop = asyncio.get_running_loop()
        pending = _Pending(item, loop.create_future(), loop.time(), with_map)
        self._queue.put_nowait(pending)
        return await pending.future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = first.enqueued + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self._incoming == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [p for p in batch if not p.future.done()]  # the client went away meanwhile
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results, inference_ms = await loop.run_in_executor(
                self._executor, infer, self.runtime, [p.item for p in batch], any(p.with_map for p in batch)
            )
        except asyncio.CancelledError:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosedError("the service is shutting down"))
            raise
        except Exception as exc:  # a runtime failure fails this batch's requests, not the collector
            log.exception("inference failed", extra={"batch_size": len(batch)})
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.INFERENCE_SECONDS.observe(inference_ms / 1e3)
        for pending, result in zip(batch, results, strict=True):
            queue_ms = (started - pending.enqueued) * 1e3
            metrics.QUEUE_WAIT_SECONDS.observe(queue_ms / 1e3)
            if not pending.future.done():
                pending.future.set_result(BatchOutcome(result, inference_ms, queue_ms, len(batch)))
