"""Embeddings on the generation model's own weights: a second llama.cpp context (embeddings on,
mean pooling) created from the already loaded model, not a second `Llama` that would load the
weights again. One vector per input; used from the model's executor thread (llama.cpp allows
several contexts over one model, each used by one thread)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class Embedder:
    def __init__(self, llm: Any, n_ctx: int) -> None:
        import llama_cpp as lc

        self.lc, self.llm, self.n_ctx, self.n_embd = lc, llm, n_ctx, llm.n_embd()
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = lc.LLAMA_POOLING_TYPE_MEAN
        self.ctx = lc.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the embeddings context")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)

    def embed(self, inputs: list[str], normalize: bool = True, truncate: bool = False) -> tuple[list[list[float]], int]:
        """Vectors and the tokens counted. An input longer than the context: ValueError, or cut
        to it with `truncate`."""
        lc, b = self.lc, self.batch
        vectors, count = [], 0
        for text in inputs:
            tokens = self.llm.tokenize(text.encode(), add_bos=True)
            if truncate:
                tokens = tokens[:self.n_ctx]
            if len(tokens) > self.n_ctx:
                raise ValueError(f"Requested tokens ({len(tokens)}) exceed batch size of {self.n_ctx}")
            count += len(tokens)
            lc.llama_memory_clear(self.mem, True)
            for i, t in enumerate(tokens):  # every token an output: mean pooling reads them all
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, i, 1, True
                b.seq_id[i][0] = 0
            b.n_tokens = len(tokens)
            if lc.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed for embeddings")
            vec = np.ctypeslib.as_array(lc.llama_get_embeddings_seq(self.ctx, 0), shape=(self.n_embd,)).astype(float)
            if normalize:
                norm = math.sqrt(float((vec * vec).sum()))
                vec = vec / norm if norm > 0 else vec
            vectors.append(vec.tolist())
        return vectors, count

    def close(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None
