"""Admission: how many requests may hold a resource at once, how many may wait, and what the
rest are told. One primitive for every service (a model, an image generator, a speech worker):

- at most `capacity` holders at once, at most `max_queue` waiting in FIFO order behind them;
- beyond that, 429 `queue_full` at once, with a Retry-After estimated from how long recent
  holders kept their slot (a moving average) times the requests ahead;
- `nexus_queue_depth{queue}`, `nexus_queue_running{queue}` and `nexus_queue_rejected_total{queue}`
  on the runtime's /metrics;
- a holder that runs its work in a worker thread keeps the slot until the thread has really
  stopped (`run`, `release(after=...)`): a client that leaves frees nothing the thread still uses.

`Concurrency(max_inflight=capacity, max_queue=...)` is what the metadata publishes (per instance,
or per model in `models[].concurrency`), so the gateway queues in front of the same bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nexusd.runtime.errors import ApiError
from nexusd.runtime.metadata import Concurrency

T = TypeVar("T")


class Admission:
    """A bounded slot with a bounded FIFO queue in front of it."""

    def __init__(self, name: str, capacity: int, max_queue: int, *, estimate: float = 1.0,
                 what: str = "This service") -> None:
        """`estimate`: seconds one holder is expected to keep its slot, until measured.
        `what` starts the 429 message ("The model 'x'", "The image generator")."""
        if capacity < 1 or max_queue < 0:
            raise ValueError("capacity must be >= 1 and max_queue >= 0")
        self.name = name
        self.capacity = capacity
        self.max_queue = max_queue
        self.what = what
        self.running = 0
        self.rejected = 0
        self.hold_seconds = estimate  # moving average of how long a slot is held
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def concurrency(self) -> Concurrency:
        return Concurrency(max_inflight=self.capacity, max_queue=self.max_queue)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free for a request that would queue now."""
        ahead = self.waiting + 1
        return max(1, math.ceil(self.hold_seconds * ahead / self.capacity))

    async def acquire(self) -> float:
        """Take a slot, waiting in line when all are held; 429 when the line is full too.
        Cancelling the waiter (the client went away) leaves the line. Returns when the slot was
        taken (monotonic), to pass back to `release` so Retry-After learns the hold time."""
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            return time.monotonic()
        if self.waiting >= self.max_queue:
            self.rejected += 1
            retry = self.retry_after()
            raise ApiError(429, f"{self.what} is busy ({self.running} running, {self.waiting} waiting); "
                                f"retry in ~{retry}s", code="queue_full", headers={"Retry-After": str(retry)})
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as we left: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        return time.monotonic()

    def release(self, started: float | None = None, after: asyncio.Future[Any] | None = None) -> None:
        """Give the slot back now, or when `after` (a worker thread's future) is done.
        `started`: what `acquire` returned."""
        if after is not None and not after.done():
            after.add_done_callback(lambda _: self.release(started))
            return
        if started is not None:
            self.hold_seconds = 0.7 * self.hold_seconds + 0.3 * (time.monotonic() - started)
        while self._waiters:  # hand the slot straight to the next in line
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """`async with admission.slot():` hold a slot for the block (async work)."""
        started = await self.acquire()
        try:
            yield
        finally:
            self.release(started)

    async def run(self, executor: Executor, fn: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """Take a slot, run `fn` in `executor`, give the slot back when the thread is done.
        If the caller is cancelled (the client went away, or shutdown), `cancel` is set so the
        job stops at its next step; see `in_worker`."""
        started = await self.acquire()
        try:
            return await in_worker(executor, fn, cancel)
        finally:
            self.release(started)


async def in_worker(executor: Executor, fn: Callable[[], T], cancel: threading.Event | None = None) -> T:
    """`fn()` in a worker thread, awaited. When the awaiting task is cancelled (the runtime
    cancels a handler whose client disconnected), `cancel` is set — the job checks it at each
    step — and the thread is awaited to its end before the cancellation goes on, so whatever
    the caller holds (a model, a GPU slot) is not handed on while the thread still uses it."""
    future = asyncio.get_running_loop().run_in_executor(executor, fn)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
            if cancel is not None:
                cancel.set()
    if cancelled:
        if not future.cancelled():
            future.exception()  # retrieved: nobody wants the result any more
        raise asyncio.CancelledError
    return future.result()


class AdmissionStats(Collector):
    """The queue gauges of every Admission a service made, read at scrape time."""

    def __init__(self) -> None:
        self.queues: list[Admission] = []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily("nexus_queue_depth", "Requests waiting for a slot", labels=["queue"])
        running = GaugeMetricFamily("nexus_queue_running", "Requests holding a slot", labels=["queue"])
        rejected = CounterMetricFamily("nexus_queue_rejected", "Requests refused with 429 (queue full)",
                                       labels=["queue"])
        for q in self.queues:
            depth.add_metric([q.name], q.waiting)
            running.add_metric([q.name], q.running)
            rejected.add_metric([q.name], q.rejected)
        yield depth
        yield running
        yield rejected
