"""Dynamic batching: requests wait in an asyncio queue; one decoding thread takes up to ``max_batch``
of them at a time (or what arrived within ``max_wait_ms`` of the first) and decodes them together.

One thread owns the model, so decoding never runs twice at once; while it decodes, new requests queue
and form the next batch. A result does not depend on its batch: the model decodes each job as it would
alone (``SpeechToText.run`` pads and masks rows; tests/test_serve.py checks served == offline)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger("speechllama.serve")


@dataclass
class BatchStats:
    batches: int = 0  # model calls
    jobs: int = 0  # jobs decoded
    largest: int = 0  # most jobs in one call

    def as_dict(self) -> dict:
        mean = self.jobs / self.batches if self.batches else 0.0
        return {"batches": self.batches, "jobs": self.jobs, "largest_batch": self.largest,
                "mean_batch": round(mean, 2)}


class Batcher:
    """``await batcher.submit(job)`` -> the job's result, decoded in a batch with its neighbours.

    decode: jobs -> one result per job, in order (``SpeechToText.run``); called in the worker thread.
    A batch that fails is decoded again one job at a time, so one bad job fails only its own request.
    """

    def __init__(self, decode: Callable[[list], list], max_batch: int = 16, max_wait_ms: float = 20.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.decode, self.max_batch, self.max_wait = decode, max_batch, max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="speechllama-decode")
        self._task = asyncio.create_task(self._run(), name="speechllama-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._task = self._pool = None

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, job):
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running (Batcher.start() first)")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def _collect(self) -> list[tuple]:
        """The next batch: the first waiting job, then whatever else arrives before the batch is full
        or ``max_wait`` has passed since the first."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [(job, future) for job, future in batch if not future.done()]  # drop cancelled requests

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            results = await loop.run_in_executor(self._pool, self._decode_all, [job for job, _ in batch])
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _decode_all(self, jobs: Sequence) -> list:
        """One result or exception per job (worker thread)."""
        try:
            results = self.decode(list(jobs))
            self._count(len(jobs))
            return results
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) == 1:
                return [e]
            log.warning("a batch of %d failed (%s); decoding its jobs one by one", len(jobs), e)
            return [self._decode_all([job])[0] for job in jobs]

    def _count(self, n: int) -> None:
        self.stats.batches += 1
        self.stats.jobs += n
        self.stats.largest = max(self.stats.largest, n)
