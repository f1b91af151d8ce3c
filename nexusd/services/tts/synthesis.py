"""One request's synthesis: sentences through the backend and the encoder, in the worker
thread, handed to the event loop as encoded bytes.

Each sentence is one job on the backend's single worker, so requests interleave sentence by
sentence and the loop never runs synthesis or encoding (the systemd watchdog pings from the
loop). Chunks cross to the loop through `call_soon_threadsafe`. When the consumer goes away
(the runtime cancels the handler of a client that disconnected), `stop` is set: the running job returns at its next
chunk (eSpeak aborts from its callback, pocket at its next frame) and no further sentence is
started, which frees the worker for other requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor

from nexusd.services.tts.audio import AudioEncoder
from nexusd.services.tts.backends import Backend

_DONE = object()


class Synthesis:
    def __init__(self, backend: Backend, executor: Executor, sentences: list[str], voice: str,
                 speed: float, fmt: str, *, streamed: bool,
                 on_sentence: Callable[[], None] = lambda: None) -> None:
        self.backend = backend
        self.executor = executor
        self.sentences = sentences
        self.voice = voice
        low, high = backend.speed_range
        self.engine_speed = min(max(speed, low), high)
        self.tempo = speed / self.engine_speed
        self.format = fmt
        self.streamed = streamed
        self.stop = threading.Event()
        self.busy_seconds = 0.0  # worker time spent on this request
        self.sentences_done = 0
        self.completed = False
        self.cancelled = False  # set when the client went away
        self.on_sentence = on_sentence
        self._encoder: AudioEncoder | None = None

    @property
    def audio_seconds(self) -> float:
        return self._encoder.seconds if self._encoder else 0.0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Encoded audio, in order. Use inside `contextlib.aclosing` so that leaving early
        stops the worker."""
        loop = asyncio.get_running_loop()
        job: asyncio.Future[None] | None = None
        try:
            for index, sentence in enumerate(self.sentences):
                if self.stop.is_set():
                    return
                queue: asyncio.Queue[object] = asyncio.Queue()
                last = index == len(self.sentences) - 1
                job = loop.run_in_executor(self.executor, self._work, sentence, last, loop, queue)
                while (item := await queue.get()) is not _DONE:
                    yield item  # type: ignore[misc]
                await job  # raises what the worker raised
                self.sentences_done += 1
                self.on_sentence()
            self.completed = True
        finally:
            self.stop.set()
            if job is not None and not job.done():
                # Nobody awaits it any more; retrieve its outcome so asyncio does not log it.
                job.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _work(self, sentence: str, last: bool, loop: asyncio.AbstractEventLoop,
              queue: asyncio.Queue[object]) -> None:
        started = time.perf_counter()

        def hand_over(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            if self.stop.is_set():
                return
            if self._encoder is None:
                self._encoder = AudioEncoder(self.format, self.backend.sample_rate,
                                             streamed=self.streamed, tempo=self.tempo)
            for samples in self.backend.synthesize(sentence, self.voice, self.engine_speed, self.stop):
                if self.stop.is_set():
                    break
                data = self._encoder.encode(samples)
                if data:
                    hand_over(data)
            if self.stop.is_set():
                self._encoder.close()
            elif last:
                data = self._encoder.finish()
                if data:
                    hand_over(data)
        finally:
            self.busy_seconds += time.perf_counter() - started
            hand_over(_DONE)
