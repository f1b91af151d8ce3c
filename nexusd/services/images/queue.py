"""One job on the generator at a time, a bounded queue in front of it, 429 beyond that.

The generator is a single worker thread: torch work never runs on the event loop (the
watchdog pings from the loop), and one job at a time is what a GPU does best anyway.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from nexusd.runtime.errors import ApiError
from nexusd.services.images.metrics import ImagesMetrics

T = TypeVar("T")


class JobQueue:
    def __init__(self, max_queue: int, metrics: ImagesMetrics) -> None:
        self.max_queue = max_queue
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="images-gen")
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.busy = False
        self.recent_seconds = 5.0  # moving estimate of a job's duration, for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self.recent_seconds * (self.waiting + 1)))

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the worker thread once it is our turn; 429 when the queue is full.
        Waiting in the queue can be cancelled; a running job is awaited to its end (the
        caller stops it through the job's cancel flag), so the slot frees when the GPU does."""
        if self.busy and self.waiting >= self.max_queue:
            self.metrics.rejected.inc()
            retry = self.retry_after()
            raise ApiError(429, f"The image generator is busy ({self.waiting} waiting); retry in ~{retry}s",
                           code="queue_full", headers={"Retry-After": str(retry)})
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.busy = True
        self.metrics.running.set(1)
        started = time.monotonic()
        try:
            future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
            return await _finish(future)
        finally:
            self.recent_seconds = 0.7 * self.recent_seconds + 0.3 * (time.monotonic() - started)
            self.busy = False
            self.metrics.running.set(0)
            self.lock.release()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


async def _finish(future: asyncio.Future[T]) -> T:
    """Await the worker's result even if our task is cancelled meanwhile, then re-raise the
    cancellation: the slot must not be freed while the thread still holds the GPU."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not future.cancelled():
            future.exception()  # retrieved: the caller cancelled and no longer wants it
        raise asyncio.CancelledError
    return future.result()
