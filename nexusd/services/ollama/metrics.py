"""LLM metrics, per model: requests, tokens in and out (exactly the responses' `usage`), time to
first token, decode speed, and (ollama engine) the daemon's loaded models from /api/ps."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class LlmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("nexus_llm_requests", "LLM requests by model, operation and outcome",
                                ["model", "operation", "outcome"], registry=registry)
        self.prompt_tokens = Counter("nexus_llm_prompt_tokens", "Prompt tokens, from the responses' usage",
                                     ["model"], registry=registry)
        self.completion_tokens = Counter("nexus_llm_completion_tokens",
                                         "Completion tokens, from the responses' usage",
                                         ["model"], registry=registry)
        self.ttft = Histogram("nexus_llm_time_to_first_token_seconds",
                              "From request to the first streamed token", ["model"],
                              buckets=TTFT_BUCKETS, registry=registry)
        self.tokens_per_second = Histogram("nexus_llm_tokens_per_second",
                                           "Completion tokens per second of generation, per request",
                                           ["model"], buckets=TPS_BUCKETS, registry=registry)
        self.cancelled = Counter("nexus_llm_cancelled", "Generations stopped because the client left",
                                 ["model"], registry=registry)
        self.generated = Counter("nexus_llm_generated_tokens",
                                 "Tokens generated (llamacpp), including by generations whose client left",
                                 ["model"], registry=registry)
        # llamacpp continuous batching (backends/batch.py), observed once per decode step.
        self.batch_sequences = Histogram("nexus_llm_batch_sequences", "Sequences in a decode step (batch occupancy)",
                                         ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry)
        self.decode_step = Histogram("nexus_llm_decode_step_seconds", "Duration of one llama_decode step",
                                     ["model"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
                                     registry=registry)
        self.prefill_tokens = Counter("nexus_llm_prefill_tokens", "Prompt tokens evaluated in decode steps",
                                      ["model"], registry=registry)
        self.loaded_models = Gauge("nexus_ollama_loaded_models", "Models the daemon holds in memory (/api/ps)",
                                   registry=registry)
        self.model_vram = Gauge("nexus_ollama_model_vram_bytes", "VRAM used by a loaded model (/api/ps size_vram)",
                                ["model"], registry=registry)
        self.model_size = Gauge("nexus_ollama_model_size_bytes", "Memory used by a loaded model (/api/ps size)",
                                ["model"], registry=registry)
        self._loaded: set[str] = set()

    def usage(self, model: str, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.prompt_tokens.labels(model).inc(int(usage.get("prompt_tokens") or 0))
        self.completion_tokens.labels(model).inc(int(usage.get("completion_tokens") or 0))

    def set_loaded(self, models: list[dict[str, Any]]) -> None:
        names = set()
        for m in models:
            name = str(m.get("name") or m.get("model") or "?")
            names.add(name)
            self.model_vram.labels(name).set(float(m.get("size_vram") or 0))
            self.model_size.labels(name).set(float(m.get("size") or 0))
        for gone in self._loaded - names:  # unloaded models disappear rather than read 0 forever
            self.model_vram.remove(gone)
            self.model_size.remove(gone)
        self._loaded = names
        self.loaded_models.set(len(names))


class GenerationTimer:
    """Time to first token and tokens/s of one request."""

    def __init__(self, metrics: LlmMetrics, model: str, operation: str) -> None:
        self.metrics = metrics
        self.model = model
        self.operation = operation
        self.start = time.perf_counter()
        self.first: float | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.metrics.ttft.labels(self.model).observe(self.first - self.start)

    def done(self, usage: dict[str, Any] | None, outcome: str = "ok") -> None:
        self.metrics.requests.labels(self.model, self.operation, outcome).inc()
        self.metrics.usage(self.model, usage)
        completion = int((usage or {}).get("completion_tokens") or 0)
        begin = self.first if self.first is not None else self.start
        elapsed = time.perf_counter() - begin
        if completion > 1 and elapsed > 0:
            # After the first token, the rate is pure decoding; before it, prompt processing.
            n = completion - 1 if self.first is not None else completion
            self.metrics.tokens_per_second.labels(self.model).observe(n / elapsed)
