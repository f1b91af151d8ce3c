"""One request's recognition: the backend runs in the worker thread and hands segments to the
event loop as they come (the loop never runs recognition: the systemd watchdog pings from it).

When the consumer goes away (the client disconnected and aiohttp cancelled the handler, or
the handler failed), `stop` is set: the worker returns at its next check (PocketSphinx: the
next utterance; faster-whisper: the next 30 s window) and the worker is free for the next
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import Executor

import numpy as np

from nexusd.services.stt.audio import SAMPLE_RATE
from nexusd.services.stt.backends import Backend, Job, Progress, Segment

_DONE = object()


class Recognition:
    def __init__(self, backend: Backend, executor: Executor, samples: np.ndarray, job: Job) -> None:
        self.backend = backend
        self.executor = executor
        self.samples = samples
        self.job = job
        self.stop = threading.Event()
        self.progress = Progress()
        self.busy_seconds = 0.0
        self.completed = False
        self.work: asyncio.Future[None] | None = None  # the worker thread's job, once started

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE

    async def segments(self) -> AsyncGenerator[Segment, None]:
        """Segments in order. Use inside `contextlib.aclosing` so that leaving early stops the
        worker."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        work = self.work = loop.run_in_executor(self.executor, self._work, loop, queue)
        try:
            while (item := await queue.get()) is not _DONE:
                yield item  # type: ignore[misc]
            await work  # raises what the worker raised
            self.completed = True
        finally:
            self.stop.set()
            if not work.done():
                # Nobody awaits it any more; retrieve its outcome so asyncio does not log it.
                work.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _work(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[object]) -> None:
        started = time.perf_counter()

        def hand_over(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            if self.stop.is_set():  # cancelled while waiting for the worker
                return
            for segment in self.backend.transcribe(self.samples, self.job, self.stop, self.progress):
                hand_over(segment)
        finally:
            self.busy_seconds = time.perf_counter() - started
            hand_over(_DONE)
