"""How many transcriptions run and wait. Kept apart so the runtime's own admission primitive
(consolidation, issue 12) can replace it here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from nexusd.runtime import ApiError


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, on_reject: Callable[[], None]) -> None:
        self.limit = max_inflight + max_queue
        self.admitted = 0  # running or waiting
        self._slots = asyncio.Semaphore(max_inflight)
        self._on_reject = on_reject

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run inside a slot, waiting for one; 429 when max_inflight + max_queue are taken."""
        if self.admitted >= self.limit:
            self._on_reject()
            raise ApiError(429, "Too many transcription requests; retry shortly", code="queue_full",
                           headers={"Retry-After": "1"})
        self.admitted += 1
        try:
            async with self._slots:
                yield
        finally:
            self.admitted -= 1
