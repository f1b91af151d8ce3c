"""Per-sequence token sampling with llama.cpp's native samplers (`llama_sampler_*`).

One `SamplerChain` per generation: logit bias, repetition penalties, top-k, top-p, min-p,
temperature and `dist(seed)` (or greedy at temperature 0) in one llama.cpp chain, plus an optional
grammar sampler kept apart from the chain and applied as llama.cpp's common sampler does: sample
with the chain, check only the sampled token against the grammar, and only when the grammar
rejects it filter the whole vocabulary with the grammar and sample again. Checking one token is
cheap; filtering 49k candidates through the grammar stacks every step is not.

The chain owns its native state (RNG, penalty history, grammar stacks) and reads logits by row
index, so a batched decoder can keep one chain per sequence over a shared context.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


@dataclass
class SamplingParams:
    temperature: float = 0.8  # llama.cpp's defaults, not OpenAI's 1.0: small models ramble at 1.0
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int = 0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF, root rule `root`
    # Lazy grammar: applied from the moment the generated text ends with `trigger` (tool_choice
    # auto with strict tools: free text until the model opens a tool call, then constrained).
    trigger: str | None = None
    lazy_grammar: str | None = None


class GrammarError(ValueError):
    """llama.cpp refused the grammar (it logs why to stderr)."""


class SamplerChain:
    """Native sampler chain + grammar for one sequence. Not thread-safe: one thread uses it."""

    def __init__(self, vocab: Any, n_vocab: int, params: SamplingParams) -> None:
        import llama_cpp as lc

        self.lc = lc
        self.n_vocab = n_vocab
        self.vocab = vocab
        self.grammar = None
        if params.grammar is not None:
            self.set_grammar(params.grammar)
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lambda s: lc.llama_sampler_chain_add(self.chain, s)  # noqa: E731 - the chain owns s
        if params.logit_bias:
            biases = (lc.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                # OpenAI: -100 bans a token, +100 forces it; in between nudges the logit.
                biases[i] = lc.llama_logit_bias(token, -math.inf if bias <= -100 else bias)
            add(lc.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
        if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            add(lc.llama_sampler_init_penalties(n_vocab, params.repeat_last_n, params.repeat_penalty,
                                                params.frequency_penalty, params.presence_penalty))
        if params.temperature <= 0:
            add(lc.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(lc.llama_sampler_init_top_k(params.top_k))
            add(lc.llama_sampler_init_top_p(params.top_p, 1))
            add(lc.llama_sampler_init_min_p(params.min_p, 1))
            add(lc.llama_sampler_init_temp(params.temperature))
            add(lc.llama_sampler_init_dist(params.seed & 0xFFFFFFFF))
        # The candidate array the samplers work on, refilled from the logits each step.
        self.data = np.recarray((n_vocab,), dtype=TOKEN_DATA)
        self.ids = np.arange(n_vocab, dtype=np.intc)
        self.cur = lc.llama_token_data_array(data=self.data.ctypes.data_as(lc.llama_token_data_p),
                                             size=n_vocab, selected=-1, sorted=False)
        self.one = (lc.llama_token_data * 1)()
        self.one_arr = lc.llama_token_data_array(data=ctypes.cast(self.one, lc.llama_token_data_p),
                                                 size=1, selected=-1, sorted=False)
        self.grammar_resamples = 0

    def set_grammar(self, text: str) -> None:
        """Constrain from the next token on (llama.cpp's own lazy grammars feed the trigger
        text to the grammar, and a piece it refuses aborts the process: this never does)."""
        grammar = self.lc.llama_sampler_init_grammar(self.vocab, text.encode(), b"root")
        if not grammar:
            raise GrammarError("llama.cpp could not parse the grammar")
        if self.grammar:
            self.lc.llama_sampler_free(self.grammar)
        self.grammar = grammar

    def _fill(self, logits: np.ndarray) -> None:
        self.data.id[:] = self.ids
        self.data.logit[:] = logits
        self.data.p[:] = 0
        self.cur.size, self.cur.selected, self.cur.sorted = self.n_vocab, -1, False

    def _chain_pick(self) -> int:
        self.lc.llama_sampler_apply(self.chain, ctypes.byref(self.cur))
        return int(self.data.id[self.cur.selected])

    def allowed(self, token: int) -> bool:
        """Does the grammar accept `token` next? (True without a grammar.)"""
        if self.grammar is None:
            return True
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 1.0, 0.0
        self.one_arr.size, self.one_arr.selected = 1, -1
        self.lc.llama_sampler_apply(self.grammar, ctypes.byref(self.one_arr))
        return self.one[0].logit != -math.inf

    def sample(self, logits: np.ndarray) -> int:
        """Pick the next token from this step's logits (n_vocab floats) and accept it."""
        self._fill(logits)
        token = self._chain_pick()
        if not self.allowed(token):  # rejected: only now pay for the grammar over the vocabulary
            self.grammar_resamples += 1
            self._fill(logits)
            self.lc.llama_sampler_apply(self.grammar, ctypes.byref(self.cur))
            token = self._chain_pick()
            if not self.allowed(token):  # accepting it would abort the process inside llama.cpp
                raise GrammarError("no token the grammar allows is left to sample (banned by logit_bias?)")
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        if self.grammar is not None:
            self.lc.llama_sampler_accept(self.grammar, token)
        self.lc.llama_sampler_accept(self.chain, token)

    def close(self) -> None:
        for s in (getattr(self, "chain", None), self.grammar):
            if s:
                self.lc.llama_sampler_free(s)
        self.chain = self.grammar = None

    def __del__(self) -> None:
        if getattr(self, "chain", None) is not None:
            self.close()


def logits_row(ctx: Any, n_vocab: int, idx: int = -1) -> np.ndarray:
    """A view of one output row of the last decode (no copy): never logits_all, which keeps
    n_ctx × n_vocab floats for the whole prompt."""
    import llama_cpp as lc

    return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, idx), shape=(n_vocab,))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The model's own distribution (before temperature and filters), as OpenAI reports it."""
    m = float(logits.max())
    shifted = logits - m
    return shifted - math.log(float(np.exp(shifted).sum()))


def top_n(logprobs: np.ndarray, n: int) -> list[tuple[int, float]]:
    if n <= 0:
        return []
    idx = np.argpartition(-logprobs, n - 1)[:n]
    idx = idx[np.argsort(-logprobs[idx])]
    return [(int(i), float(logprobs[i])) for i in idx]
