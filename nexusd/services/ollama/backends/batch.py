"""Continuous batching: up to NEXUS_OLLAMA_PARALLEL sequences of one model decoded together.

One `Batcher` per model owns a llama.cpp context built with `n_seq_max = parallel` and
`n_ctx = parallel × context` over non-unified KV (each sequence id has its own `context` cells,
so a sequence never runs out of cells because of another, and one sequence's attention does not
see the others' cells). A single decode thread runs the loop: every step it builds one batch of
(a) the next token of each generating sequence and (b) up to `n_batch` minus those tokens of
prompts still being evaluated (chunked prefill, so running streams keep flowing while a long
prompt is read), calls `llama_decode` once, and lets each sequence sample from its own row of
logits (`Sequence.step`, its own `SamplerChain`). A request joins at the next step; a finished or
cancelled one leaves at the next step.

Prefix reuse: with non-unified KV a sequence id's cells are its own, so the cells of a finished
sequence are kept as a cache: a new request takes the free id whose cached tokens share the
longest prefix with its prompt (a shared system prompt, the same conversation one turn later), the
cells after the common prefix are cleared (`llama_memory_seq_rm`) and only the rest is evaluated.

Groups (`n` > 1 choices of one request): the prompt is evaluated once, in the first sequence id
of the group; when its last token has been decoded, its cells are copied to the others' ids
(`llama_memory_seq_cp`, a whole-stream copy with non-unified KV, applied by llama.cpp before the
next decode) and every member samples its first token from that same row of logits, each with its
own sampler chain. From then on they are ordinary sequences. A group joins only when it has an id
for each member.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from nexusd.services.ollama.backends.sampling import logits_row
from nexusd.services.ollama.backends.sequence import Emit, Result, Sequence

log = logging.getLogger("nexusd.ollama.batch")


@dataclass
class Job:
    seq: Sequence
    emit: Emit | None
    first_token: Callable[[], object]
    cancel: threading.Event
    future: Future[Result] = field(default_factory=Future)
    seq_id: int = -1
    evaluated: int = 0  # tokens of this sequence in the KV cache (prompt, then generated)
    next_token: int | None = None  # sampled, to be decoded at the next step
    row: int = -1  # this step's logits row, -1: none
    started: float = 0.0
    prefilled: float = 0.0
    followers: list[Job] = field(default_factory=list)  # a group's other members (on its first job)


@dataclass
class StepStats:
    """What the last decode step did (read by the metrics, written by the decode thread)."""
    sequences: int = 0
    prefill_tokens: int = 0
    seconds: float = 0.0


class DecodeError(RuntimeError):
    pass


class Batcher:
    def __init__(self, model: Any, base_params: Any, n_vocab: int, parallel: int, context: int, n_batch: int,
                 name: str, on_step: Callable[[StepStats], None] | None = None) -> None:
        import llama_cpp as lc

        self.lc, self.n_vocab, self.parallel, self.context = lc, n_vocab, parallel, context
        self.n_batch = max(n_batch, parallel + 1)  # room for every decode token and some prompt
        params = type(base_params).from_buffer_copy(base_params)  # the Llama object's threads etc.
        params.n_ctx = parallel * context
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = parallel
        params.kv_unified = False
        params.embeddings = False
        self.ctx = lc.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {parallel} × {context} tokens")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self.free_ids = list(range(parallel))
        self.cached: list[list[int]] = [[] for _ in range(parallel)]  # tokens in each id's cells
        self.waiting: collections.deque[list[Job]] = collections.deque()  # groups, in arrival order
        self.active: list[Job] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.on_step = on_step
        # K and V in f16 (llama.cpp's default cache type), all cells allocated at creation.
        n_kv = lc.llama_model_n_embd(model) // max(1, lc.llama_model_n_head(model)) * lc.llama_model_n_head_kv(model)
        self.kv_bytes = params.n_ctx * lc.llama_model_n_layer(model) * 2 * n_kv * 2
        self.thread = threading.Thread(target=self._loop, name=f"decode-{name}", daemon=True)
        self.thread.start()

    # --- called from other threads ----------------------------------------------------------
    def submit(self, seq: Sequence, emit: Emit | None, first_token: Callable[[], object],
               cancel: threading.Event) -> Future[Result]:
        return self.submit_group([seq], [emit], first_token, cancel)[0]

    def submit_group(self, seqs: list[Sequence], emits: list[Emit | None], first_token: Callable[[], object],
                     cancel: threading.Event) -> list[Future[Result]]:
        """Sequences over one prompt (n choices): evaluated once, then copied. One cancel for all."""
        if not seqs or not seqs[0].prompt:
            raise ValueError("an empty prompt has nothing to continue")
        if len(seqs) > self.parallel or any(s.prompt != seqs[0].prompt for s in seqs):
            raise ValueError(f"a group is at most {self.parallel} sequences over one prompt")
        jobs = [Job(seq, emit, first_token, cancel) for seq, emit in zip(seqs, emits, strict=True)]
        jobs[0].followers = jobs[1:]
        with self.cond:
            if self.stopping:
                raise RuntimeError("the model is shutting down")
            self.waiting.append(jobs)
            self.cond.notify()
        return [job.future for job in jobs]

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)

    # --- the decode thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and not self.active:
                    self.cond.wait()
                if self.stopping:
                    break
                while self.waiting and len(self.free_ids) >= len(self.waiting[0]):  # join at this step
                    self._join(self.waiting.popleft())
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - every running request gets the error
                log.error("decode step failed: %s", exc)
                for job in list(self.active):
                    self._finish(job, exc)
        for job in [*self.active, *(j for group in self.waiting for j in group)]:
            job.seq.finish = job.seq.finish or "cancelled"
            self._finish(job, None)

    def _join(self, group: list[Job]) -> None:
        job = group[0]
        prompt = job.seq.prompt
        best, reuse = min(self.free_ids), 0
        for i in sorted(self.free_ids):  # ties to the lowest id: ids in use stay contiguous (see _step)
            n = _common(self.cached[i], prompt)
            if n > reuse:
                best, reuse = i, n
        self.free_ids.remove(best)
        reuse = min(reuse, len(prompt) - 1)  # the last prompt token is decoded again for its logits
        self.lc.llama_memory_seq_rm(self.mem, best, reuse, -1)
        self.cached[best] = prompt[:reuse]
        job.seq_id, job.evaluated, job.started = best, reuse, time.perf_counter()
        self.active.append(job)
        for f in job.followers:  # no prompt to evaluate: their cells come from the copy
            # The lowest free ids: contiguous ids make fewer ubatches per step (llmbench's finding).
            f.seq_id, f.evaluated, f.started = min(self.free_ids), len(prompt), job.started
            self.free_ids.remove(f.seq_id)
            self.cached[f.seq_id] = []
            self.active.append(f)

    def _step(self) -> None:
        lc, b = self.lc, self.batch
        # Over non-unified KV llama.cpp cuts a batch into one ubatch (one pass over the weights) per
        # run of consecutive increasing sequence ids in batch order: tokens go in id order.
        self.active.sort(key=lambda j: j.seq_id)
        for job in [j for j in self.active if j.cancel.is_set() or j.future.cancelled()]:
            job.seq.finish = "cancelled"
            self._finish(job, None)
        n = 0
        prefill = 0

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, logits
            b.seq_id[n][0] = seq_id
            n += 1

        for job in self.active:
            job.row = -1
            if job.next_token is not None:
                job.row = n
                add(job.next_token, job.evaluated, job.seq_id, True)
                self.cached[job.seq_id].append(job.next_token)
                job.evaluated += 1
        for job in self.active:  # prompts, in arrival order, in what room is left
            todo = len(job.seq.prompt) - job.evaluated
            if job.next_token is not None or todo <= 0 or n >= self.n_batch:
                continue
            take = min(todo, self.n_batch - n)
            for i in range(job.evaluated, job.evaluated + take):
                add(job.seq.prompt[i], i, job.seq_id, i == len(job.seq.prompt) - 1)
            self.cached[job.seq_id].extend(job.seq.prompt[job.evaluated:job.evaluated + take])
            job.evaluated += take
            prefill += take
            if job.evaluated == len(job.seq.prompt):
                job.row = n - 1
        if n == 0:
            return
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            for job in self.active:  # what the cells hold is unknown now
                self.lc.llama_memory_seq_rm(self.mem, job.seq_id, -1, -1)
                self.cached[job.seq_id] = []
            raise DecodeError(f"llama_decode returned {rc}")
        now = time.perf_counter()
        if self.on_step is not None:
            self.on_step(StepStats(len(self.active), prefill, now - t0))
        for job in [j for j in self.active if j.row >= 0 and j.next_token is None and j.followers]:
            self._copy_prompt(job)
        for job in [j for j in self.active if j.row >= 0]:
            if job.next_token is None:
                job.prefilled = now
            try:
                token, text, lps = job.seq.step(logits_row(self.ctx, self.n_vocab, job.row))
            except Exception as exc:  # noqa: BLE001 - a grammar with no allowed token: this request only
                self._finish(job, exc)
                continue
            if job.next_token is None:
                job.first_token()
            if job.emit is not None and (text or lps):
                job.emit(text, lps)
            job.next_token = token
            if token is None:
                self._finish(job, None)

    def _copy_prompt(self, leader: Job) -> None:
        """The leader's prompt is in: its members get the cells and sample from its row."""
        for f in leader.followers:
            if f in self.active:
                self.lc.llama_memory_seq_cp(self.mem, leader.seq_id, f.seq_id, -1, -1)
                self.cached[f.seq_id] = list(self.cached[leader.seq_id])
                f.row = leader.row

    def _finish(self, job: Job, exc: BaseException | None) -> None:
        """The sequence leaves; its id (and its cells, as a prefix cache) go to the next request."""
        if job in self.active:
            self.active.remove(job)
            with self.cond:
                self.free_ids.append(job.seq_id)
        job.seq.sampler.close()
        if job.future.done():  # cancelled by its waiter
            return
        if exc is not None:
            job.future.set_exception(exc)
            return
        result = job.seq.result()
        end = time.perf_counter()
        prefilled = job.prefilled or end
        result.prefill_seconds = prefilled - (job.started or end)
        result.decode_seconds = end - prefilled
        job.future.set_result(result)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
