"""One request's generation, from the event loop's side: admission, the hand-over of text from
the model's decode thread (batch.Batcher) to the client, and cancellation.

A request holds one of the model's Admission slots per sequence it runs (`n` choices: n slots),
taken before it is submitted and given back only when all its sequences have left the batch, so
a client that leaves frees nothing the decode thread still uses. The decode loop checks each
sequence's cancel flag every step: a client that leaves stops its sequences at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from nexusd.runtime.admission import Admission
from nexusd.runtime.errors import ApiError
from nexusd.services.ollama.backends.sampling import GrammarError, SamplerChain
from nexusd.services.ollama.backends.sequence import Emit, GenParams, Result, Sequence, TokenLogprob
from nexusd.services.ollama.metrics import GenerationTimer

if TYPE_CHECKING:
    from nexusd.services.ollama.backends.llamacpp import LlamaCppEngine, LocalModel

END = object()  # queued (END, i, None) when choice i's sequence has left the batch
Piece = tuple[int, str, list[TokenLogprob]]  # (choice index, text, logprobs)


class Sink(Protocol):
    """Where a streamed generation's pieces go (OpenAI SSE in llamacpp_openai, Ollama NDJSON in
    llamacpp_native)."""

    async def open(self, request: web.Request) -> None: ...

    async def pieces(self, items: list[Piece]) -> None: ...

    async def close(self, results: list[Result]) -> None: ...

    async def fail(self, error: ApiError) -> None: ...


class PieceBatcher:
    """Hands text pieces from the generation thread to the event loop, at most one hand-over
    per EMIT_INTERVAL (the first piece at once, so time to first token is unchanged).

    One hand-over per token wakes the loop, and then the client, for every token; when
    llama.cpp's threads fill the cores, each wake-up preempts one of them and its siblings
    spin at the next barrier (bench/llm: 0.85x of direct at 2 threads on 2 cores)."""

    EMIT_INTERVAL = 0.03

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self.loop, self.queue = loop, queue
        self.buffer: list[Any] = []
        self.next_at = 0.0

    def _deliver(self, items: list[Any]) -> None:
        for item in items:
            self.queue.put_nowait(item)

    def emit(self, piece: Any) -> None:
        self.buffer.append(piece)
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.EMIT_INTERVAL
            items, self.buffer = self.buffer, []
            self.loop.call_soon_threadsafe(self._deliver, items)

    def close(self, end: Any) -> None:
        items, self.buffer = [*self.buffer, end], []
        self.loop.call_soon_threadsafe(self._deliver, items)


def choice_params(params: GenParams, n: int) -> list[GenParams]:
    """Choice i samples with seed + i (mod 2**32): with a seed, the choices differ from one another
    and are reproducible, and choice 0 is what the same request with n=1 gives."""
    return [dataclasses.replace(params, sampling=dataclasses.replace(
        params.sampling, seed=(params.sampling.seed + i) & 0xFFFFFFFF)) for i in range(n)]


def total_usage(results: list[Result]) -> dict[str, int]:
    """OpenAI's usage for n choices: the prompt once, the completion tokens of every choice."""
    prompt, completion = results[0].prompt_tokens, sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def acquire(slot: Admission, n: int) -> list[float]:
    """n slots, one after the other in the FIFO line (a request ahead keeps the ones it has while
    it waits for the rest, as a request needing n at the head of the line would wait anyway)."""
    taken: list[float] = []
    try:
        for _ in range(n):
            taken.append(await slot.acquire())
    except BaseException:
        for started in taken:
            slot.release(started)
        raise
    return taken


async def generate(engine: LlamaCppEngine, request: web.Request, m: LocalModel, tokens: list[int],
                   params: GenParams, op: str, sink: Sink | None, n: int = 1) -> list[Result] | None:
    """n choices over one prompt. Without a sink: their Results. With one: pieces go to the sink
    as they come (sink.open before the first, sink.close with the Results); None when the client
    left mid-stream. An error before the first token raises, so it is answered in the route's
    error shape and not inside a started stream."""
    loop = asyncio.get_running_loop()
    metrics = engine.metrics
    timer = GenerationTimer(metrics, m.name, op)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()
    pieces = PieceBatcher(loop, queue)
    assert m.batcher is not None
    batcher = m.batcher
    per_choice = choice_params(params, n) if n > 1 else [params]

    def chains() -> list[SamplerChain]:  # parsing a grammar takes a while: off the loop
        try:
            return [SamplerChain(m.llm._model.vocab, m.info["n_vocab"], p.sampling) for p in per_choice]
        except GrammarError as exc:
            raise ApiError(400, f"grammar: {exc}", code="invalid_value") from None

    left = loop.create_future()  # done when every sequence has left the batch
    remaining = n

    def finished(i: int, f: Any) -> None:  # in the decode thread
        if not f.cancelled() and f.exception() is None:
            metrics.generated.labels(m.name).inc(f.result().completion_tokens)  # thread-safe
        pieces.close((END, i, None))
        loop.call_soon_threadsafe(mark_left)

    def mark_left() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not left.done():
            left.set_result(None)

    async def submitted(inner: Any) -> Result:
        try:
            return await asyncio.wrap_future(inner)
        except GrammarError as exc:
            raise ApiError(400, f"grammar: {exc}", code="invalid_value") from None

    async def outcome() -> list[Result]:
        done = await asyncio.gather(*futs, return_exceptions=True)
        out: list[Result] = []
        for r in done:
            if isinstance(r, BaseException):
                raise r
            out.append(r)
        return out

    samplers = await engine.off_loop(chains)
    taken = await acquire(m.slot, n)
    futs: list[asyncio.Future[Result]] = []
    try:
        seqs = [Sequence(tokens, p, s, m.info["piece"], m.info["is_eog"]) for p, s in zip(per_choice, samplers, strict=True)]
        emits: list[Emit | None] = [
            functools.partial(lambda i, t, lp: pieces.emit((i, t, lp)), i) if sink else None for i in range(n)]
        inner = batcher.submit_group(seqs, emits, lambda: loop.call_soon_threadsafe(timer.token), cancel)
        for i, f in enumerate(inner):
            f.add_done_callback(functools.partial(finished, i))
        futs = [asyncio.ensure_future(submitted(f)) for f in inner]
        if sink is None:
            # shield: a client that leaves cancels this handler, not the sequences' futures, so
            # the slots below are released only when the decode thread has let them go.
            results = await asyncio.shield(outcome())
            timer.done(total_usage(results))
            return results
        ended = 0
        item = await queue.get()  # prompt processing happens here
        if item[0] is END:
            await futs[item[1]]  # a failure before the first token is an error answer, not a stream
        try:
            await sink.open(request)
            while True:
                batch: list[Piece] = []
                while True:  # behind? send what queued in one write
                    if item[0] is END:
                        ended += 1
                    else:
                        batch.append(item)
                    if ended == n or queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    await sink.pieces(batch)
                if ended == n:
                    break
                item = await queue.get()
            try:
                results = await outcome()
            except ApiError as exc:  # after the headers: the error goes into the stream
                await sink.fail(exc)
                timer.done(None, "error")
                return None
            await sink.close(results)
        except (ConnectionResetError, OSError):  # the client left: the finally cancels
            metrics.cancelled.labels(m.name).inc()
            timer.done(None, "cancelled")
            return None
        timer.done(total_usage(results))
        return results
    except asyncio.CancelledError:  # the client went away (the runtime cancels the handler)
        metrics.cancelled.labels(m.name).inc()
        timer.done(None, "cancelled")
        raise
    finally:
        cancel.set()  # no-op when the sequences finished; else they stop at the next step
        for started in taken:
            m.slot.release(started, after=left if futs else None)
