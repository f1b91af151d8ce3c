"""OpenAI's /v1/chat/completions and /v1/completions on the llamacpp engine: what a request
asks for (sampling, tools, response_format, logprobs) and the answers in OpenAI's shapes.

Nothing is silently ignored: a field this engine does not act on is a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from nexusd.runtime import sse
from nexusd.runtime.errors import ApiError
from nexusd.services.ollama.backends import grammar, tools
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


class Sink(Protocol):
    """Where a streamed generation's pieces go (OpenAI SSE here, Ollama NDJSON in llamacpp_native)."""

    async def open(self, request: web.Request) -> None: ...

    async def pieces(self, items: list[tuple[str, list[TokenLogprob]]]) -> None: ...

    async def close(self, result: Result) -> None: ...

    async def fail(self, error: ApiError) -> None: ...


def refuse_unknown(body: ChatRequest | CompletionRequest | EmbeddingRequest) -> None:
    for key in body.model_extra or {}:
        if key not in NO_EFFECT:
            raise ApiError(400, f"{key}: not supported by the llamacpp engine", param=key, code="unsupported_parameter")
    for i, msg in enumerate(getattr(body, "messages", [])):
        for key in msg.model_extra or {}:
            if key not in MESSAGE_FIELDS:
                raise ApiError(400, f"messages[{i}].{key}: not supported by the llamacpp engine",
                               param=f"messages[{i}].{key}", code="unsupported_parameter")


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
        sink = ChatSink(m.name, body.include_usage, with_tools=mode != "none")
        await engine.run(request, m, tokens, params, "chat.completions", sink)
        return sink.resp
    result = await engine.run(request, m, tokens, params, "chat.completions", None)
    assert result is not None
    content, calls = (tools.parse(result.text) if mode != "none" else (result.text, []))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish = result.finish_reason
    if calls:
        message["tool_calls"] = calls
        finish = "length" if finish == "length" else "tool_calls"
    elif content is None:
        message["content"] = ""
    choice = {"index": 0, "finish_reason": finish, "message": message,
              "logprobs": chat_logprobs(result.logprobs) if result.logprobs is not None else None}
    return web.json_response({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                              "created": int(time.time()), "model": m.name, "choices": [choice],
                              "usage": result.usage})


def _entry(text: bytes, logprob: float) -> dict[str, Any]:
    return {"token": text.decode("utf-8", "backslashreplace"), "logprob": logprob, "bytes": list(text)}


def chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [_entry(lp.text, lp.logprob) | {"top_logprobs": [_entry(t, v) for t, v in lp.top]}
                        for lp in lps], "refusal": None}


class ChatSink:
    def __init__(self, model: str, include_usage: bool, with_tools: bool) -> None:
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage = include_usage
        self.tools = tools.ToolStream() if with_tools else None
        self.resp: web.StreamResponse = web.StreamResponse()

    def chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        return sse_bytes({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]})

    async def open(self, request: web.Request) -> None:
        self.resp = await start_sse(request)
        await self.resp.write(self.chunk({"role": "assistant", "content": ""}))

    async def pieces(self, items: list[tuple[str, list[TokenLogprob]]]) -> None:
        out = []
        for text, lps in items:
            lp = chat_logprobs(lps) if lps else None
            if self.tools is None:
                out.append(self.chunk({"content": text}, logprobs=lp))
                continue
            deltas = self.tools.feed(text)
            for i, delta in enumerate(deltas):
                out.append(self.chunk(delta, logprobs=lp if i == 0 else None))
            if lp and not deltas:
                out.append(self.chunk({}, logprobs=lp))
        if out:
            await self.resp.write(b"".join(out))

    async def close(self, result: Result) -> None:
        finish = result.finish_reason
        if self.tools is not None:
            rest = self.tools.feed("", final=True)
            if rest:
                await self.resp.write(b"".join(self.chunk(d) for d in rest))
            if self.tools.calls and finish != "length":
                finish = "tool_calls"
        await self.resp.write(self.chunk({}, finish))
        if self.include_usage:
            await self.resp.write(sse_bytes({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                             "model": self.model, "choices": [], "usage": result.usage}))
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
    prompt = body.prompt_text()
    tokens = await engine.off_loop(lambda: m.llm.tokenize(prompt.encode(), add_bos=True, special=False))
    params = GenParams(max_tokens=min(capped(body.requested_max_tokens(), engine.settings.max_tokens),
                                      engine.room(m, len(tokens), param="prompt",
                                                 requested=body.requested_max_tokens())),
                       sampling=sampling(m, body, None), stop=body.stop_list, logprobs=body.logprobs)
    echo = prompt if body.echo else ""
    if body.stream:
        sink = CompletionSink(m.name, body.include_usage, echo)
        await engine.run(request, m, tokens, params, "completions", sink)
        return sink.resp
    result = await engine.run(request, m, tokens, params, "completions", None)
    assert result is not None
    lp = completion_logprobs(result.logprobs, 0) if result.logprobs is not None else None
    return web.json_response({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                              "model": m.name, "usage": result.usage, "choices": [
                                  {"index": 0, "text": echo + result.text, "finish_reason": result.finish_reason,
                                   "logprobs": lp}]})


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
    def __init__(self, model: str, include_usage: bool, echo: str) -> None:
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage, self.echo, self.offset = include_usage, echo, 0
        self.resp: web.StreamResponse = web.StreamResponse()

    def chunk(self, text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        return sse_bytes({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                          "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}]})

    async def open(self, request: web.Request) -> None:
        self.resp = await start_sse(request)
        if self.echo:
            await self.resp.write(self.chunk(self.echo))

    async def pieces(self, items: list[tuple[str, list[TokenLogprob]]]) -> None:
        out = []
        for text, lps in items:
            out.append(self.chunk(text, logprobs=completion_logprobs(lps, self.offset) if lps else None))
            self.offset += len(text)
        await self.resp.write(b"".join(out))

    async def close(self, result: Result) -> None:
        await self.resp.write(self.chunk("", result.finish_reason))
        if self.include_usage:
            await self.resp.write(sse_bytes({"id": self.id, "object": "text_completion", "created": self.created,
                                             "model": self.model, "choices": [], "usage": result.usage}))
        await self.resp.write(SSE_DONE)
        await self.resp.write_eof()

    async def fail(self, error: ApiError) -> None:
        await self.resp.write(sse.error_event(error, "openai"))
        await self.resp.write_eof()
