"""Ollama's native API (/api/*) served by the llamacpp engine itself, in Ollama's shapes: NDJSON
streams (the default; `stream: false` for one document), errors as `{"error": "..."}`, names as
Ollama writes them (`smollm2:135m`; `smollm2` or `smollm2:latest` match the one model with that
base name). Models come from NEXUS_OLLAMA_GGUF, so pull/create/delete/copy/push are a 400.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nexusd.runtime import sse
from nexusd.runtime.errors import ApiError
from nexusd.runtime.service import Endpoint
from nexusd.services.ollama.backends import grammar, tools
from nexusd.services.ollama.backends.llamacpp_openai import chat_logprobs
from nexusd.services.ollama.backends.sampling import SamplingParams
from nexusd.services.ollama.backends.sequence import GenParams, Result, TokenLogprob

if TYPE_CHECKING:
    from nexusd.services.ollama.backends.llamacpp import LlamaCppEngine, LocalModel

API_VERSION = "0.6.0"  # the Ollama API level these routes follow
FAR_FUTURE = "2318-01-01T00:00:00Z"  # models stay loaded for the life of the process
OPTIONS = {"num_predict", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "num_ctx",
           "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty"}
CHAT_FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think", "logprobs",
               "top_logprobs"}
GENERATE_FIELDS = {"model", "prompt", "system", "raw", "format", "options", "stream", "keep_alive", "think", "images",
                   "logprobs", "top_logprobs"}
MESSAGE_FIELDS = {"role", "content", "tool_calls", "tool_name", "images", "thinking"}
MANAGED = ("pull", "create", "delete", "copy", "push")


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def read_body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    """Any Content-Type, as Ollama accepts (curl -d sends form encoding); unknown fields → 400."""
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"{key}: not supported by the llamacpp engine")
    return body


class NativeApi:
    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine

    def endpoints(self) -> list[Endpoint]:
        routes = [("GET", "/api/version", self.version, "ollama.version", False),
                  ("GET", "/api/tags", self.tags, "ollama.tags", False),
                  ("GET", "/api/ps", self.ps, "ollama.ps", False),
                  ("POST", "/api/show", self.show, "ollama.show", False),
                  ("POST", "/api/chat", self.chat, "ollama.chat", True),
                  ("POST", "/api/generate", self.generate, "ollama.generate", True),
                  ("POST", "/api/embed", self.embed, "ollama.embed", False),
                  ("POST", "/api/embeddings", self.embeddings, "ollama.embeddings", False)]
        # errors="ollama": the runtime answers every failure of these routes as {"error": "..."}.
        eps = [Endpoint(m, p, h, op, streaming=s, errors="ollama") for m, p, h, op, s in routes]
        for name in MANAGED:
            eps.append(Endpoint("DELETE" if name == "delete" else "POST", f"/api/{name}", self.managed,
                                f"ollama.{name}", errors="ollama"))
        eps += [Endpoint(method, "/api/blobs/{digest}", self.managed, "ollama.blobs", errors="ollama", listed=listed)
                for method, listed in (("POST", True), ("HEAD", False))]
        eps += [Endpoint("GET", "/", self.root, "ollama.root", listed=False),
                Endpoint("HEAD", "/", self.root, "ollama.root", listed=False)]
        return eps

    # --- models ------------------------------------------------------------------------
    def model(self, name: Any) -> LocalModel:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        local = self.engine.local
        base = name.removesuffix(":latest")
        if name in local or base in local:
            found = local[name if name in local else base]
        else:
            same = [m for n, m in local.items() if n.split(":", 1)[0] == base]
            if len(same) != 1:
                raise ApiError(404, f"model '{name}' not found")
            found = same[0]
        return self.engine._model(found.name)

    def describe(self, m: LocalModel) -> dict[str, Any]:
        st = os.stat(m.path)
        size_label, quant = m.info.get("size_label", ""), m.info.get("quantization", "")
        # An identity, not the content hash: hashing a multi-GB file at start costs seconds.
        digest = hashlib.sha256(f"{m.path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        arch = m.info.get("arch", "")
        return {"name": m.name, "model": m.name, "size": st.st_size, "digest": digest,
                "modified_at": datetime.fromtimestamp(st.st_mtime, UTC).isoformat().replace("+00:00", "Z"),
                "details": {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
                            "parameter_size": size_label, "quantization_level": quant}}

    async def version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": API_VERSION})

    async def root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def tags(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"models": [self.describe(m) for m in self.engine.local.values()]})

    async def ps(self, request: web.Request) -> web.StreamResponse:
        out = []
        for m in self.engine.local.values():
            if m.llm is not None:
                d = self.describe(m)
                out.append({**{k: d[k] for k in ("name", "model", "size", "digest", "details")},
                            "expires_at": FAR_FUTURE, "size_vram": d["size"] if m.info.get("n_gpu_layers") else 0,
                            "context_length": m.info["n_ctx"]})
        return web.json_response({"models": out})

    async def show(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"model", "name", "verbose"})
        m = self.model(body.get("model") or body.get("name"))
        d = self.describe(m)
        arch = m.info.get("arch", "")
        model_info = {"general.architecture": arch, "general.parameter_count": m.info.get("n_params"),
                      f"{arch}.context_length": m.info.get("n_ctx_train"), f"{arch}.embedding_length": m.info["n_embd"]}
        return web.json_response({"license": "", "modelfile": f"FROM {os.path.basename(m.path)}\n", "parameters": "",
                                  "template": m.info.get("template", ""), "details": d["details"],
                                  "model_info": model_info, "modified_at": d["modified_at"],
                                  "capabilities": ["completion", "tools", "embedding"]})

    async def managed(self, request: web.Request) -> web.StreamResponse:
        name = request.path.split("/")[2]
        raise ApiError(400, f"/api/{name} is not available on the llamacpp engine: its models are the GGUF files "
                            "configured in NEXUS_OLLAMA_GGUF")

    # --- generation --------------------------------------------------------------------
    def params(self, m: LocalModel, body: dict[str, Any], n_prompt: int) -> GenParams:
        opts = body.get("options") or {}
        if not isinstance(opts, dict):
            raise ApiError(400, "options must be an object")
        for key in opts:
            if key not in OPTIONS:
                raise ApiError(400, f"options.{key}: not supported by the llamacpp engine")
        num = lambda k, d, lo=None, hi=None, integer=False: _number(opts, k, d, lo, hi, integer)  # noqa: E731
        n_ctx = num("num_ctx", m.info["n_ctx"], 1, m.info["n_ctx"], True)
        room = self.engine.room(m, n_prompt, n_ctx, param="prompt")
        cap = self.engine.settings.max_tokens
        predict = num("num_predict", -1, -2, None, True)
        if predict == 0:
            raise ApiError(400, "options.num_predict: must be positive, -1 (until done) or -2 (fill the context)")
        # -1 (until done) and -2 (fill the context) are capped like any request: the cap is the
        # operator's bound on one request's work, whatever it asks for.
        max_tokens = min(cap, room) if predict < 0 else min(predict, cap, room)
        stop = opts.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
            raise ApiError(400, "options.stop: up to 16 strings")
        fmt = body.get("format")
        if fmt in (None, ""):
            grammar_text = None
        elif fmt == "json":
            grammar_text = grammar.json_object_grammar()
        elif isinstance(fmt, dict):
            try:
                grammar_text = grammar.schema_grammar(fmt)
            except grammar.UnsupportedSchema as exc:
                raise ApiError(400, f"format: {exc}") from None
        else:
            raise ApiError(400, 'format: "json" or a JSON schema object')
        seed = num("seed", None, None, None, True)
        top = _number(body, "top_logprobs", None, 0, 20, True)
        if top is not None and not body.get("logprobs"):
            raise ApiError(400, "top_logprobs: needs logprobs: true")
        return GenParams(max_tokens=max_tokens, stop=stop, logprobs=(top or 0) if body.get("logprobs") else None,
                         sampling=SamplingParams(
            temperature=num("temperature", 0.8, 0, 2), top_p=num("top_p", 0.95, 0, 1),
            top_k=num("top_k", 40, 0, None, True), min_p=num("min_p", 0.05, 0, 1),
            seed=seed if seed is not None else int.from_bytes(os.urandom(4), "little"),
            repeat_penalty=num("repeat_penalty", 1.0, 0, None), repeat_last_n=num("repeat_last_n", 64, 0, None, True),
            presence_penalty=num("presence_penalty", 0.0, -2, 2), frequency_penalty=num("frequency_penalty", 0.0, -2, 2),
            grammar=grammar_text))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, CHAT_FIELDS)
        m = self.model(body.get("model"))
        _no_think(body)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(x, dict) for x in messages):
            raise ApiError(400, "messages must be an array of objects")
        if not messages:
            return web.json_response({"model": m.name, "created_at": now(), "message": {"role": "assistant", "content": ""},
                                      "done": True, "done_reason": "load"})
        for i, msg in enumerate(messages):
            for key in msg:
                if key not in MESSAGE_FIELDS:
                    raise ApiError(400, f"messages[{i}].{key}: not supported by the llamacpp engine")
            if msg.get("images"):
                raise ApiError(400, f"messages[{i}].images: this model has no vision")
            if msg.get("role") not in ("system", "user", "assistant", "tool"):
                raise ApiError(400, f"messages[{i}].role: system, user, assistant or tool")
            if not isinstance(msg.get("content", ""), str):
                raise ApiError(400, f"messages[{i}].content must be a string")
        history = [{k: v for k, v in msg.items() if k in ("role", "content", "tool_calls")} for msg in messages]
        try:
            fns = tools.functions(body.get("tools") or []) or None
        except ApiError as exc:
            raise ApiError(400, exc.message) from None
        if fns and body.get("format"):
            raise ApiError(400, "format: not supported together with tools")
        tokens = await self.engine.off_loop(self.engine.render_chat, m, history, fns)
        return await self._generate(request, m, body, tokens, "chat.completions", chat=True, with_tools=bool(fns))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, GENERATE_FIELDS)
        m = self.model(body.get("model"))
        _no_think(body)
        if body.get("images"):
            raise ApiError(400, "images: this model has no vision")
        prompt, system = body.get("prompt") or "", body.get("system")
        if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
            raise ApiError(400, "prompt and system must be strings")
        if not prompt:
            return web.json_response({"model": m.name, "created_at": now(), "response": "", "done": True,
                                      "done_reason": "load"})
        if body.get("raw"):
            if system:
                raise ApiError(400, "system: not used with raw (the prompt is sent as is)")
            tokens = await self.engine.off_loop(lambda: m.llm.tokenize(prompt.encode(), add_bos=True, special=True))
        else:
            history = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            tokens = await self.engine.off_loop(self.engine.render_chat, m, history, None)
        return await self._generate(request, m, body, tokens, "completions", chat=False, with_tools=False)

    async def _generate(self, request: web.Request, m: LocalModel, body: dict[str, Any], tokens: list[int],
                        op: str, chat: bool, with_tools: bool) -> web.StreamResponse:
        params = self.params(m, body, len(tokens))
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false")
        started = time.perf_counter()
        if stream:
            sink = NdjsonSink(m.name, chat, with_tools, started)
            await self.engine.run(request, m, tokens, params, op, sink)
            return sink.resp
        results = await self.engine.run(request, m, tokens, params, op, None)
        assert results is not None
        result = results[0]
        doc = _final(m.name, result, started)
        if result.logprobs is not None:
            doc["logprobs"] = chat_logprobs(result.logprobs)["content"]
        if chat:
            content, calls = tools.parse(result.text) if with_tools else (result.text, [])
            doc["message"] = {"role": "assistant", "content": content or ""}
            if calls:
                doc["message"]["tool_calls"] = native_calls(calls)
        else:
            doc["response"] = result.text
        return web.json_response(doc)

    # --- embeddings --------------------------------------------------------------------
    async def embed(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"model", "input", "truncate", "options", "keep_alive", "dimensions"})
        m = self.model(body.get("model"))
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
            raise ApiError(400, "input: a non-empty string or array of non-empty strings")
        if body.get("options"):
            raise ApiError(400, "options: not supported for embeddings")
        if body.get("dimensions") not in (None, m.info["n_embd"]):
            raise ApiError(400, f"dimensions: this model gives {m.info['n_embd']}")
        started = time.perf_counter()
        vectors, count = await self.engine.embed(request, m, inputs, truncate=body.get("truncate", True) is not False)
        took = int((time.perf_counter() - started) * 1e9)
        return web.json_response({"model": m.name, "embeddings": vectors, "total_duration": took,
                                  "load_duration": 0, "prompt_eval_count": count})

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"model", "prompt", "options", "keep_alive"})
        m = self.model(body.get("model"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt: a non-empty string")
        if body.get("options"):
            raise ApiError(400, "options: not supported for embeddings")
        # The legacy route returns the vector unnormalised, as Ollama's does.
        vectors, _ = await self.engine.embed(request, m, [prompt], truncate=True, normalize=False)
        return web.json_response({"embedding": vectors[0]})


def _no_think(body: dict[str, Any]) -> None:
    if body.get("think"):
        raise ApiError(400, "think: this model does not think")


def _number(opts: dict[str, Any], key: str, default: Any, lo: float | None, hi: float | None, integer: bool) -> Any:
    value = opts.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        where = key if key == "top_logprobs" else f"options.{key}"
        raise ApiError(400, f"{where}: {'an integer' if integer else 'a number'}{bounds}")
    return value


def native_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls → Ollama's (arguments as an object)."""
    out = []
    for i, c in enumerate(calls):
        try:
            args = json.loads(c["function"]["arguments"])
        except ValueError:
            args = c["function"]["arguments"]
        out.append({"function": {"index": i, "name": c["function"]["name"], "arguments": args}})
    return out


def _final(name: str, result: Result, started: float) -> dict[str, Any]:
    return {"model": name, "created_at": now(), "done": True,
            "done_reason": "stop" if result.finish_reason == "stop" else result.finish_reason,
            "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": result.prompt_tokens, "prompt_eval_duration": int(result.prefill_seconds * 1e9),
            "eval_count": result.completion_tokens, "eval_duration": int(result.decode_seconds * 1e9)}


class NdjsonSink:
    def __init__(self, model: str, chat: bool, with_tools: bool, started: float) -> None:
        self.model, self.chat, self.started = model, chat, started
        self.tools = tools.ToolStream() if with_tools else None
        self.resp = web.StreamResponse()

    def line(self, doc: dict[str, Any]) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def piece(self, text: str, lps: list[TokenLogprob] | None = None) -> bytes:
        doc: dict[str, Any] = {"model": self.model, "created_at": now()}
        if self.chat:
            doc["message"] = {"role": "assistant", "content": text}
        else:
            doc["response"] = text
        if lps:
            doc["logprobs"] = chat_logprobs(lps)["content"]
        return self.line(doc | {"done": False})

    def texts(self, text: str, final: bool = False) -> list[str]:
        if self.tools is None:
            return [text] if text else []
        return [d["content"] for d in self.tools.feed(text, final) if "content" in d]

    async def open(self, request: web.Request) -> None:
        self.resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "X-Accel-Buffering": "no"})
        await self.resp.prepare(request)

    async def pieces(self, items: list[tuple[int, str, list[TokenLogprob]]]) -> None:
        out = []
        for _, text, lps in items:  # one choice: Ollama has no n
            texts = self.texts(text) or ([""] if lps else [])
            out += [self.piece(t, lps if i == 0 else None) for i, t in enumerate(texts)]
        if out:
            await self.resp.write(b"".join(out))

    async def close(self, results: list[Result]) -> None:
        result = results[0]
        out = [self.piece(t) for t in self.texts("", final=True)]
        final = _final(self.model, result, self.started)
        if self.chat:
            final["message"] = {"role": "assistant", "content": ""}
            calls = tools.parse(result.text)[1] if self.tools is not None else []
            if calls:
                out.append(self.line({"model": self.model, "created_at": now(), "done": False, "message": {
                    "role": "assistant", "content": "", "tool_calls": native_calls(calls)}}))
        else:
            final["response"] = ""
        out.append(self.line(final))
        await self.resp.write(b"".join(out))
        await self.resp.write_eof()

    async def fail(self, error: ApiError) -> None:
        await self.resp.write(sse.error_event(error, "ollama"))
        await self.resp.write_eof()
