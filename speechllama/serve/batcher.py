"""Dynamic batching at segment granularity, in two lanes: requests bring their jobs (a long file:
one per segment, segments.py); one decoding thread decodes up to ``max_batch`` jobs at a time, so a
short request waits for at most the batch in the model, never for the whole of a long file.

One thread owns the model, so decoding never runs twice at once; while it decodes, new requests queue
and form the next batch. A batch is formed from the jobs waiting once the thread is free: when fewer
than ``max_batch`` wait, it waits up to ``max_wait_ms`` for more. Two lanes:

- short: requests of one job (a file of one segment, most requests), first come first served;
- long: requests of several jobs, round-robin: one job from every waiting long request in arrival
  order, then a second from each, ..., until the batch is full; a lone long file fills whole batches.

A batch holds one lane's jobs only (on a compute-bound machine a batch costs about its audio, so a
short request batched with long segments would pay for them). When both lanes wait, they alternate,
so a stream of short requests delays a long file (to half the batches) but never starves it, and a
short request that arrives while a long file decodes is in the next batch.

A result does not depend on its batch with float32 weights: the model decodes each job as it would
alone (``SpeechToText.run`` pads and masks rows; tests/test_serve.py checks served == offline).

At most ``max_queue`` requests are admitted at once (from their audio decoding until they are
answered); past that ``QueueFull`` (the server's 503 with a Retry-After). A request whose waiter is
cancelled (its client went away) has its waiting jobs dropped; only a batch already in the model
finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import UsageError

log = logging.getLogger("speechllama.serve")


class QueueFull(Exception):
    def __init__(self, max_queue: int, retry_after: int):
        super().__init__(f"the server is busy: {max_queue} requests are queued (--max-queue)")
        self.retry_after = retry_after


@dataclass
class BatchStats:
    batches: int = 0  # model calls
    jobs: int = 0  # jobs decoded (a long file's segments are a job each)
    largest: int = 0  # most jobs in one call
    requests: int = 0  # requests answered
    cancelled: int = 0  # requests dropped (client gone) with jobs still to decode
    dropped_jobs: int = 0  # their jobs never decoded
    decode_s: float = 0.0  # seconds in the model

    def as_dict(self) -> dict:
        mean = self.jobs / self.batches if self.batches else 0.0
        return {"batches": self.batches, "jobs": self.jobs, "largest_batch": self.largest,
                "mean_batch": round(mean, 2), "requests": self.requests,
                "cancelled_requests": self.cancelled, "dropped_jobs": self.dropped_jobs}


@dataclass(eq=False)
class _Request:
    id: int
    waiting: deque  # (index, job) not yet in a batch
    results: list
    future: asyncio.Future
    left: int = field(init=False)  # jobs without a result
    short: bool = field(init=False)  # its lane: one job

    def __post_init__(self):
        self.left = len(self.results)
        self.short = self.left == 1


class Batcher:
    """``await batcher.submit(jobs)`` -> one result per job, decoded in batches with other requests'.

    decode: jobs -> one result per job, in order (``SpeechToText.run``); called in the worker thread.
    A batch that fails is decoded again one job at a time, so one bad job fails only its own request.
    """

    def __init__(self, decode: Callable[[list], list], max_batch: int = 16, max_wait_ms: float = 20.0,
                 max_queue: int | None = None):
        if max_batch < 1 or max_wait_ms < 0 or (max_queue is not None and max_queue < 1):
            raise UsageError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.decode, self.max_batch, self.max_wait = decode, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self.admitted = 0  # requests admitted and not yet answered
        self.in_model = 0  # jobs in the batch being decoded
        self._requests: dict[int, _Request] = {}  # waiting for results, in arrival order
        self._ids = itertools.count()
        self._last_short = False  # the lane of the last batch
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wake = asyncio.Event()
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
    def waiting_jobs(self) -> int:
        """Jobs queued for a batch (not counting those in the model)."""
        return sum(len(r.waiting) for r in self._requests.values())

    def health(self) -> dict:
        return {"queued": self.admitted, "max_queue": self.max_queue, "waiting_jobs": self.waiting_jobs,
                "decoding_jobs": self.in_model, **self.stats.as_dict()}

    def retry_after(self) -> int:
        """Seconds until the queue has likely made room: the waiting jobs at the mean pace so far."""
        per_job = self.stats.decode_s / self.stats.jobs if self.stats.jobs else 1.0
        return max(1, min(60, math.ceil(per_job * (self.waiting_jobs + self.in_model))))

    @contextlib.contextmanager
    def admission(self):
        """Hold one of the ``max_queue`` places for a request while it is in the server; QueueFull
        when none is free."""
        if self.max_queue is not None and self.admitted >= self.max_queue:
            raise QueueFull(self.max_queue, self.retry_after())
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def submit(self, jobs: Sequence) -> list:
        """Decode ``jobs`` (one request's) -> their results in order. Cancelling the caller drops
        the jobs that have not reached the model."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running (Batcher.start() first)")
        if not jobs:
            return []
        request = _Request(next(self._ids), deque(enumerate(jobs)), [None] * len(jobs),
                           asyncio.get_running_loop().create_future())
        self._requests[request.id] = request
        self._wake.set()
        try:
            return await request.future
        finally:
            if self._requests.pop(request.id, None) is not None and request.waiting:
                self.stats.cancelled += 1
                self.stats.dropped_jobs += len(request.waiting)
                log.debug("request dropped: %d of its %d jobs not decoded", len(request.waiting),
                         len(request.results))
            request.waiting.clear()

    def _take(self) -> list[tuple[_Request, int, object]]:
        """The next batch: one lane's jobs (the module's docstring)."""
        waiting = [r for r in self._requests.values() if r.waiting and not r.future.done()]
        shorts = [r for r in waiting if r.short]
        longs = [r for r in waiting if not r.short]
        self._last_short = bool(shorts) and not (longs and self._last_short)
        lane = shorts if self._last_short else longs
        batch = []
        while lane and len(batch) < self.max_batch:
            for request in lane[: self.max_batch - len(batch)]:
                batch.append((request, *request.waiting.popleft()))
            lane = [r for r in lane if r.waiting]
        return batch

    async def _gather(self) -> None:
        """Until a job waits; then up to ``max_wait`` for the batch to fill."""
        loop = asyncio.get_running_loop()
        while not self.waiting_jobs:
            self._wake.clear()
            await self._wake.wait()
        deadline = loop.time() + self.max_wait
        while self.waiting_jobs < self.max_batch and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            self.in_model = len(batch)
            try:
                results = await loop.run_in_executor(self._pool, self._decode_all, [j for _, _, j in batch])
            finally:
                self.in_model = 0
            for (request, index, _), result in zip(batch, results):
                if request.future.done():
                    continue  # cancelled, or failed by another of its jobs
                if isinstance(result, BaseException):
                    request.waiting.clear()  # one failed job fails the request: drop the rest
                    request.future.set_exception(result)
                    continue
                request.results[index] = result
                request.left -= 1
                if request.left == 0:
                    self.stats.requests += 1
                    request.future.set_result(request.results)

    def _decode_all(self, jobs: Sequence) -> list:
        """One result or exception per job (worker thread)."""
        start = time.perf_counter()
        try:
            results = self.decode(list(jobs))
            self._count(len(jobs), time.perf_counter() - start)
            return results
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) == 1:
                return [e]
            log.warning("a batch of %d failed (%s); decoding its jobs one by one", len(jobs), e)
            return [self._decode_all([job])[0] for job in jobs]

    def _count(self, n: int, seconds: float) -> None:
        self.stats.batches += 1
        self.stats.jobs += n
        self.stats.largest = max(self.stats.largest, n)
        self.stats.decode_s += seconds
