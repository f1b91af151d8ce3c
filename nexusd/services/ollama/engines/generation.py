"""The llama.cpp token loop.

One generation per model at a time (a llama.cpp context is not thread-safe: the engine holds the
model's runtime Admission slot), in a worker thread so the event loop and the systemd watchdog
stay alive. The loop checks a cancel flag before each token, so a client that leaves stops its
generation at the next token, and the slot is released only when the thread has really stopped.
"""

from __future__ import annotations

import asyncio
import codecs
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Params:
    max_tokens: int
    temperature: float = 0.8  # llama.cpp's defaults, not OpenAI's 1.0: small models ramble at 1.0
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (not sent yet)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _bias_processor(bias: dict[int, float]) -> Callable[[Any, Any], Any]:
    ids = np.fromiter(bias.keys(), dtype=np.intc)
    # OpenAI: -100 bans a token, +100 forces it; in between nudges the logit.
    values = np.array([(-np.inf if b <= -100 else b) for b in bias.values()], dtype=np.single)

    def process(input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores

    return process


def run_tokens(llm: Any, is_eog: Callable[[int], bool], tokens: list[int], params: Params,
               cancel: threading.Event, emit: Callable[[str], None] | None,
               first_token: Callable[[], object]) -> Result:
    """Runs in the model's worker thread. `emit` gets text pieces as they become safe to send
    (UTF-8 complete, not a possible stop-sequence prefix); None = collect only."""
    llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
    processors = [_bias_processor(params.logit_bias)] if params.logit_bias else None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # keeps split multibyte chars
    text, sent, count, finish = "", 0, 0, "length"
    stops = [s for s in params.stop if s]
    gen = llm.generate(tokens, top_k=40, top_p=params.top_p, min_p=0.05, temp=params.temperature,
                       repeat_penalty=1.0, presence_penalty=params.presence_penalty,
                       frequency_penalty=params.frequency_penalty, logits_processor=processors)
    try:
        for token in gen:
            if cancel.is_set():
                finish = "cancelled"
                break
            if count == 0:
                first_token()
            if is_eog(token):
                finish = "stop"
                break
            count += 1
            text += decoder.decode(llm.detokenize([token]))
            if stops:
                window = max(0, sent - max(len(s) for s in stops))
                hits = [i for i in (text.find(s, window) for s in stops) if i >= 0]
                if hits:
                    text, finish = text[:min(hits)], "stop"
                    break
            if emit is not None:
                safe = len(text) - held_back(text, stops)
                if safe > sent:
                    emit(text[sent:safe])
                    sent = safe
            if count >= params.max_tokens:
                break
    finally:
        gen.close()
    text += decoder.decode(b"", final=True)
    if emit is not None and len(text) > sent and finish != "cancelled":
        emit(text[sent:])
    return Result(text, finish, len(tokens), count)


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

    def emit(self, piece: str) -> None:
        self.buffer.append(piece)
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.EMIT_INTERVAL
            items, self.buffer = self.buffer, []
            self.loop.call_soon_threadsafe(self._deliver, items)

    def close(self, end: Any) -> None:
        items, self.buffer = [*self.buffer, end], []
        self.loop.call_soon_threadsafe(self._deliver, items)
