"""One generation as a `Sequence`: its prompt, sampler chain, stop strings, text and logprobs.

`Sequence.step(logits)` turns one row of logits into the next token and the text it releases.
The sequence never touches the context itself, so the batched decoder (batch.Batcher) steps many
of them over the rows of one decode.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nexusd.services.ollama.backends.sampling import (
    SamplerChain,
    SamplingParams,
    log_softmax,
    top_n,
)


@dataclass
class TokenLogprob:
    text: bytes
    logprob: float
    top: list[tuple[bytes, float]]


@dataclass
class GenParams:
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: none; n: the chosen token's and the n most likely


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    grammar_resamples: int = 0
    prefill_seconds: float = 0.0  # prompt evaluation
    decode_seconds: float = 0.0  # everything after it

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


Emit = Callable[[str, list[TokenLogprob]], None]


class Sequence:
    """Text pieces are released as they become safe to send: UTF-8 complete and not a possible
    stop-sequence prefix. Logprobs travel with the piece that releases their token's text."""

    def __init__(self, prompt: list[int], params: GenParams, sampler: SamplerChain,
                 piece: Callable[[int], bytes], is_eog: Callable[[int], bool]) -> None:
        self.prompt, self.params, self.sampler = prompt, params, sampler
        self.piece, self.is_eog = piece, is_eog
        self.stops = [s for s in params.stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")  # keeps split multibyte chars
        self.text, self.sent, self.count = "", 0, 0
        self.finish: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.pending: list[TokenLogprob] = []
        self.trigger = params.sampling.trigger if params.sampling.lazy_grammar else None
        self.trigger_from = 0  # where to look for the trigger next

    def step(self, logits: np.ndarray) -> tuple[int | None, str, list[TokenLogprob]]:
        """Sample from this step's logits. Returns (token to decode next or None when finished,
        text released, logprobs released)."""
        token = self.sampler.sample(logits)
        if self.is_eog(token):
            self.finish = "stop"
            return None, *self._flush()
        self.count += 1
        if self.logprobs is not None:
            lp = log_softmax(logits)
            entry = TokenLogprob(self.piece(token), float(lp[token]),
                                 [(self.piece(t), v) for t, v in top_n(lp, self.params.logprobs or 0)])
            self.logprobs.append(entry)
            self.pending.append(entry)
        self.text += self.decoder.decode(self.piece(token))
        if self.trigger is not None:
            self._watch_trigger()
        if self.stops:
            window = max(0, self.sent - max(len(s) for s in self.stops))
            hits = [i for i in (self.text.find(s, window) for s in self.stops) if i >= 0]
            if hits:
                self.text, self.finish = self.text[:min(hits)], "stop"
                return None, *self._flush()
        if self.count >= self.params.max_tokens:
            self.finish = "length"
            return None, *self._flush()
        safe = len(self.text) - held_back(self.text, self.stops)
        if safe > self.sent:
            out, lps = self.text[self.sent:safe], self.pending
            self.sent, self.pending = safe, []
            return token, out, lps
        return token, "", []

    def _watch_trigger(self) -> None:
        """Switch the lazy grammar on once the text ends with the trigger (and only then: text
        after it in the same token would not be checked by the grammar)."""
        assert self.trigger is not None and self.params.sampling.lazy_grammar is not None
        at = self.text.find(self.trigger, self.trigger_from)
        if at < 0:
            self.trigger_from = max(0, len(self.text) - len(self.trigger) + 1)
            return
        self.trigger_from = at + 1
        if self.text[at + len(self.trigger):].strip(" \n") == "":
            self.sampler.set_grammar(self.params.sampling.lazy_grammar)
            self.trigger = None

    def _flush(self) -> tuple[str, list[TokenLogprob]]:
        self.text += self.decoder.decode(b"", final=True)
        out, lps = self.text[self.sent:], self.pending
        self.sent, self.pending = len(self.text), []
        return out, lps

    def result(self) -> Result:
        return Result(self.text, self.finish or "cancelled", len(self.prompt), self.count, self.logprobs,
                      self.sampler.grammar_resamples)
