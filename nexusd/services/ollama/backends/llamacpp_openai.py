"""OpenAI's /v1/chat/completions and /v1/completions on the llamacpp engine: what a request
asks for (sampling, tools, response_format, logprobs) and the answers in OpenAI's shapes.

Nothing is silently ignored: a field this engine does not act on is a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nexusd.runtime import sse
from nexusd.runtime.errors import ApiError
from nexusd.services.ollama.backends import grammar, tools
from nexusd.services.ollama.backends.generation import Piece, total_usage
from nexusd.services.ollama.backends.sampling import SamplingParams
from nexusd.services.ollama.backends.sequence import GenParams, Result, TokenLogprob
from nexusd.services.ollama.request import (
    SSE_DONE,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    capped,
    sse_bytes,
    start_sse,
)

if TYPE_CHECKING:
    from nexusd.services.ollama.backends.llamacpp import LlamaCppEngine, LocalModel

# Extra fields accepted because they do not change the answer (`user`: an end-user id for abuse
# tracking upstream; nothing to do here).
NO_EFFECT = {"user"}
MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}


def refuse_unknown(body: ChatRequest | CompletionRequest | EmbeddingRequest) -> None:
    for key in body.model_extra or {}:
        if key not in NO_EFFECT:
            raise ApiError(400, f"{key}: not supported by the llamacpp engine", param=key, code="unsupported_parameter")
    for i, msg in enumerate(getattr(body, "messages", [])):
        for key in msg.model_extra or {}:
            if key not in MESSAGE_FIELDS:
                raise ApiError(400, f"messages[{i}].{key}: not supported by the llamacpp engine",
                               param=f"messages[{i}].{key}", code="unsupported_parameter")


def choices(engine: LlamaCppEngine, body: ChatRequest | CompletionRequest) -> int:
    """`n`: each choice is one sequence of the batch, so at most NEXUS_OLLAMA_PARALLEL."""
    if body.n > engine.settings.parallel:
        raise ApiError(400, f"n: at most {engine.settings.parallel} choices per request on this server "
                       "(NEXUS_OLLAMA_PARALLEL)", param="n", code="invalid_value")
    return body.n


def sampling(m: LocalModel, body: ChatRequest | CompletionRequest, grammar_text: str | None,
             lazy: str | None = None) -> SamplingParams:
    bias: dict[int, float] = {}
    for k, v in (body.logit_bias or {}).items():
        if not k.isdigit() or int(k) >= m.info["n_vocab"] or not -100 <= v <= 100:
            raise ApiError(400, f"logit_bias: bad entry {k!r}: {v}", param="logit_bias", code="invalid_value")
        bias[int(k)] = v
    return SamplingParams(
        temperature=0.8 if body.temperature is None else body.temperature,
        top_p=0.95 if body.top_p is None else body.top_p,
        seed=body.seed if body.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little"),
        presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias, grammar=grammar_text, trigger=tools.OPEN if lazy else None, lazy_grammar=lazy)


def response_grammar(fmt: dict[str, Any] | None) -> str | None:
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return grammar.json_object_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema") if fmt else None
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ApiError(400, "response_format.json_schema.schema: required (a JSON schema object)",
                           param="response_format.json_schema.schema", code="invalid_value")
        try:
            return grammar.schema_grammar(spec["schema"])
        except grammar.UnsupportedSchema as exc:
            raise ApiError(400, f"response_format.json_schema.schema: {exc}",
                           param="response_format.json_schema.schema", code="unsupported_schema") from None
    raise ApiError(400, f"response_format.type: {kind!r} is not one of text, json_object, json_schema",
                   param="response_format.type", code="invalid_value")


# --- chat ------------------------------------------------------------------------------
async def openai_chat(engine: LlamaCppEngine, request: web.Request, body: ChatRequest, m: LocalModel) -> web.StreamResponse:
    refuse_unknown(body)
    fns = tools.functions(body.tools or [])
    mode, offered = tools.chosen(body.tool_choice, fns)
    fmt = response_grammar(body.response_format)
    if fmt is not None and mode != "none":
        raise ApiError(400, "response_format: not supported together with tools unless tool_choice is 'none'",
                       param="response_format", code="unsupported_parameter")
    n = choices(engine, body)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs", code="invalid_value")
    lazy = None
    # forced: the whole answer is tool calls. auto with a strict tool: free text until the model
    # opens a <tool_call>, constrained from there (sequence.Sequence switches the grammar on).
    if mode == "forced" or mode == "auto" and any(f.get("strict") for f in offered):
        try:
            call_grammar = grammar.tool_call_grammar([(f["name"], f["parameters"]) for f in offered],
                                                     parallel=body.parallel_tool_calls is not False,
                                                     opened=mode == "auto")
        except grammar.UnsupportedSchema as exc:
            raise ApiError(400, f"tools: {exc}", param="tools", code="unsupported_schema") from None
        fmt, lazy = (call_grammar, None) if mode == "forced" else (None, call_grammar)
    messages = [msg.model_dump(exclude_none=True) for msg in body.messages]
    for d, msg in zip(messages, body.messages, strict=True):
        if isinstance(msg.content, list):  # OpenAI content parts: the text ones
            d["content"] = "".join(p.get("text", "") for p in msg.content if p.get("type") == "text")
    tokens = await engine.off_loop(engine.render_chat, m, messages, offered if mode != "none" else None)
    params = GenParams(max_tokens=min(capped(body.requested_max_tokens(), engine.settings.max_tokens),
                                      engine.room(m, len(tokens), requested=body.requested_max_tokens())),
                       sampling=sampling(m, body, fmt, lazy), stop=body.stop_list,
                       logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    if body.stream:
        sink = ChatSink(m.name, body.include_usage, with_tools=mode != "none", n=n)
        await engine.run(request, m, tokens, params, "chat.completions", sink, n)
        return sink.resp
    results = await engine.run(request, m, tokens, params, "chat.completions", None, n)
    assert results is not None
    return web.json_response({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                              "created": int(time.time()), "model": m.name,
                              "choices": [chat_choice(i, r, mode != "none") for i, r in enumerate(results)],
                              "usage": total_usage(results)})


def chat_choice(index: int, result: Result, with_tools: bool) -> dict[str, Any]:
    content, calls = (tools.parse(result.text) if with_tools else (result.text, []))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish = result.finish_reason
    if calls:
        message["tool_calls"] = calls
        finish = "length" if finish == "length" else "tool_calls"
    elif content is None:
        message["content"] = ""
    return {"index": index, "finish_reason": finish, "message": message,
            "logprobs": chat_logprobs(result.logprobs) if result.logprobs is not None else None}


def _entry(text: bytes, logprob: float) -> dict[str, Any]:
    return {"token": text.decode("utf-8", "backslashreplace"), "logprob": logprob, "bytes": list(text)}


def chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [_entry(lp.text, lp.logprob) | {"top_logprobs": [_entry(t, v) for t, v in lp.top]}
                        for lp in lps], "refusal": None}


class ChatSink:
    """Chunks of n choices, each with its `index`; every choice's finish chunk comes at the end."""

    def __init__(self, model: str, include_usage: bool, with_tools: bool, n: int = 1) -> None:
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage, self.n = include_usage, n
        self.tools = [tools.ToolStream() for _ in range(n)] if with_tools else None
        self.resp: web.StreamResponse = web.StreamResponse()

    def chunk(self, index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        return sse_bytes({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                          "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]})

    async def open(self, request: web.Request) -> None:
        self.resp = await start_sse(request)
        await self.resp.write(b"".join(self.chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n)))

    async def pieces(self, items: list[Piece]) -> None:
        out = []
        for index, text, lps in items:
            lp = chat_logprobs(lps) if lps else None
            if self.tools is None:
                out.append(self.chunk(index, {"content": text}, logprobs=lp))
                continue
            deltas = self.tools[index].feed(text)
            for i, delta in enumerate(deltas):
                out.append(self.chunk(index, delta, logprobs=lp if i == 0 else None))
            if lp and not deltas:
                out.append(self.chunk(index, {}, logprobs=lp))
        if out:
            await self.resp.write(b"".join(out))

    async def close(self, results: list[Result]) -> None:
        out = []
        for index, result in enumerate(results):
            finish = result.finish_reason
            if self.tools is not None:
                out += [self.chunk(index, d) for d in self.tools[index].feed("", final=True)]
                if self.tools[index].calls and finish != "length":
                    finish = "tool_calls"
            out.append(self.chunk(index, {}, finish))
        await self.resp.write(b"".join(out))
        if self.include_usage:
            await self.resp.write(sse_bytes({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                             "model": self.model, "choices": [], "usage": total_usage(results)}))
        await self.resp.write(SSE_DONE)
        await self.resp.write_eof()

    async def fail(self, error: ApiError) -> None:
        await self.resp.write(sse.error_event(error, "openai"))
        await self.resp.write_eof()


# --- completions -----------------------------------------------------------------------
async def openai_completions(engine: LlamaCppEngine, request: web.Request, body: CompletionRequest,
                             m: LocalModel) -> web.StreamResponse:
    refuse_unknown(body)
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "logprobs: not supported with echo (the prompt's logprobs are not computed)",
                       param="logprobs", code="unsupported_parameter")
    n = choices(engine, body)
    prompt = body.prompt_text()
    tokens = await engine.off_loop(lambda: m.llm.tokenize(prompt.encode(), add_bos=True, special=False))
    params = GenParams(max_tokens=min(capped(body.requested_max_tokens(), engine.settings.max_tokens),
                                      engine.room(m, len(tokens), param="prompt",
                                                 requested=body.requested_max_tokens())),
                       sampling=sampling(m, body, None), stop=body.stop_list, logprobs=body.logprobs)
    echo = prompt if body.echo else ""
    if body.stream:
        sink = CompletionSink(m.name, body.include_usage, echo, n)
        await engine.run(request, m, tokens, params, "completions", sink, n)
        return sink.resp
    results = await engine.run(request, m, tokens, params, "completions", None, n)
    assert results is not None
    return web.json_response({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                              "model": m.name, "usage": total_usage(results), "choices": [
                                  {"index": i, "text": echo + r.text, "finish_reason": r.finish_reason,
                                   "logprobs": completion_logprobs(r.logprobs, 0) if r.logprobs is not None else None}
                                  for i, r in enumerate(results)]})


def completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    texts = [lp.text.decode("utf-8", "backslashreplace") for lp in lps]
    offsets = []
    for t in texts:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": texts, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t.decode("utf-8", "backslashreplace"): v for t, v in lp.top} for lp in lps],
            "text_offset": offsets}


class CompletionSink:
    def __init__(self, model: str, include_usage: bool, echo: str, n: int = 1) -> None:
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage, self.echo, self.offsets = include_usage, echo, [0] * n
        self.resp: web.StreamResponse = web.StreamResponse()

    def chunk(self, index: int, text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        return sse_bytes({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                          "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}]})

    async def open(self, request: web.Request) -> None:
        self.resp = await start_sse(request)
        if self.echo:
            await self.resp.write(b"".join(self.chunk(i, self.echo) for i in range(len(self.offsets))))

    async def pieces(self, items: list[Piece]) -> None:
        out = []
        for index, text, lps in items:
            lp = completion_logprobs(lps, self.offsets[index]) if lps else None
            out.append(self.chunk(index, text, logprobs=lp))
            self.offsets[index] += len(text)
        await self.resp.write(b"".join(out))

    async def close(self, results: list[Result]) -> None:
        await self.resp.write(b"".join(self.chunk(i, "", r.finish_reason) for i, r in enumerate(results)))
        if self.include_usage:
            await self.resp.write(sse_bytes({"id": self.id, "object": "text_completion", "created": self.created,
                                             "model": self.model, "choices": [], "usage": total_usage(results)}))
        await self.resp.write(SSE_DONE)
        await self.resp.write_eof()

    async def fail(self, error: ApiError) -> None:
        await self.resp.write(sse.error_event(error, "openai"))
        await self.resp.write_eof()
