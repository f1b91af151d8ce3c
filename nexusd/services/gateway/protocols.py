"""The gateway's Responses and Messages routes: translate (responses.py, messages.py), then send
through the relay the chat routes use (Proxy.forward: instance choice, admission, connect retry,
metrics with the protocol's own operation label), and translate the answer back.

A backend whose metadata declares `responses.create` / `messages.create` /
`messages.count_tokens` for the model gets the request relayed as is instead. API keys: a key
with operation limits must name `responses.create` (also for GET/DELETE of stored responses)
or `messages.create` (also for count_tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from nexusd.runtime import sse as runtime_sse
from nexusd.runtime.errors import ApiError
from nexusd.runtime.validation import MAX_DEPTH, too_deep
from nexusd.services.gateway import messages, responses
from nexusd.services.gateway.auth import API_KEY
from nexusd.services.gateway.balancer import EJECTING_STATUSES
from nexusd.services.gateway.chatstream import (
    ChatStreamReader,
    check_chat,
    dumps,
    loads,
    usage_bytes,
)
from nexusd.services.gateway.instances import Instance
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.proxy import check_scope, mime, read_body
from nexusd.services.gateway.response_store import ResponseStore
from nexusd.services.gateway.routing import Route

if TYPE_CHECKING:
    from nexusd.services.gateway.proxy import Proxy

CHAT = Route("chat.completions", True)
UPSTREAM_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, TimeoutError)
# What an answer with an error status may hold that is worth showing (bounded read).
ERROR_READ_LIMIT = 65536


def sse(event: dict[str, Any]) -> bytes:
    """runtime/sse.py's framing with `event: <type>`, encoded with orjson: this is the hot path
    (bench/protocol_codec.py)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"


class ProtocolRoutes:
    def __init__(self, proxy: Proxy, store: ResponseStore) -> None:
        self.proxy = proxy
        self.store = store
        self.aliases: dict[str, str] = {}  # in force (conflicting ones already set aside)

    # --- shared steps ------------------------------------------------------------------
    async def _body(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        ctype = mime(request)
        if ctype != "application/json":
            raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'}",
                           code="unsupported_media_type")
        raw = await read_body(request, self.proxy.settings.body_timeout)
        try:
            body = loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
        # The runtime's nesting bound (validation.py): what we re-encode must stay encodable.
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body):
            raise ApiError(400, f"Request body is not valid JSON: nested deeper than {MAX_DEPTH} levels",
                           code="invalid_json")
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model or len(model) > 256):
            raise ApiError(400, "model must be a non-empty string", param="model", code="invalid_value")
        return raw, body

    def _native(self, op: str, model: str | None) -> tuple[list[Instance], str] | None:
        """Instances that declare the protocol operation for this model, if any."""
        table = self.proxy.table
        if op not in table.ops_with_models:
            return None
        hit = table.by_model.get((op, model)) if model is not None else None
        if hit is None and model is None and op in table.defaults:
            hit = table.by_model.get((op, table.defaults[op]))
        return (hit.instances, hit.model_id) if hit is not None else None

    async def _relay_native(self, request: web.Request, op: str, raw: bytes, body: dict[str, Any],
                            requested: str | None, found: tuple[list[Instance], str], key: ApiKey) -> web.StreamResponse:
        instances, model_id = found
        check_scope(key, op, model_id, requested)
        if requested in self.aliases:  # the backend knows the model, not our alias for it
            raw = dumps({**body, "model": model_id})
        return await self.proxy.forward(request, Route(op, True), instances, raw, model_id, key)

    def _resolve(self, requested: str | None) -> str | None:
        return self.aliases.get(requested, requested) if requested is not None else None

    def _chat_route(self, scope: str, requested: str | None, key: ApiKey) -> tuple[list[Instance], str]:
        model = self._resolve(requested)
        instances, model_id = self.proxy.table.candidates(CHAT, model)
        check_scope(key, scope, model_id, requested)
        return instances, model_id or model or ""

    def _account(self, resp: aiohttp.ClientResponse, inst: Instance, op: str, model_id: str, key: ApiKey,
                 start: float) -> None:
        """The bookkeeping Proxy.relay does for an answer (ejection, metrics)."""
        status = resp.status
        if status in EJECTING_STATUSES:
            self.proxy.balancer.failed(inst, connect=False)
        elif inst.failures:
            self.proxy.balancer.succeeded(inst)
        inst.served += 1
        self.proxy.metrics.observe(op, model_id, status, inst.name, key.name, time.perf_counter() - start)

    async def _json_answer(self, resp: aiohttp.ClientResponse, inst: Instance) -> dict[str, Any]:
        """A non-streamed chat answer, or the upstream's error re-raised in the route's shape."""
        try:
            if resp.status != 200:
                raise upstream_error(resp.status, await read_bounded(resp, ERROR_READ_LIMIT, cut=True))
            data = await read_bounded(resp, self.proxy.settings.buffer_limit)
        except UPSTREAM_ERRORS:
            self.proxy.balancer.failed(inst, connect=False)
            raise ApiError(502, "Upstream closed the connection mid-response", code="upstream_error") from None
        try:
            answer = loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ApiError(502, "Upstream answered 200 with no JSON object", code="upstream_invalid_answer")
        check_chat(answer, "message")
        return answer

    def _tokens(self, request: web.Request, key: ApiKey, chat_usage: dict[str, Any] | None, model: str) -> None:
        usage = None
        if chat_usage:
            usage = usage_bytes(int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0))
            self.proxy.metrics.add_tokens(key.name, usage)
        # every key: the usage ledger (ledger.py), and tpm's settlement
        self.proxy.quotas.settle(request, key, usage, failed=False, model=model)

    async def _stream(self, request: web.Request, resp: aiohttp.ClientResponse, inst: Instance, op: str,
                      translator: Any, on_done: Callable[[], None]) -> web.StreamResponse:
        """Chat SSE in, protocol SSE out: one write per upstream read."""
        key = request[API_KEY]  # its quota headers go with the stream's (quotas.py)
        out = await runtime_sse.start(request, headers={"X-Nexus-Instance": inst.name, **self.proxy.quotas.answer_headers(request, key)})
        started = time.perf_counter()
        reader = ChatStreamReader()
        try:
            await send(out, translator.start())
            try:
                if mime(resp) != "text/event-stream":  # a backend that ignored stream=true
                    reader.done = True
                    await send(out, translator.feed(as_chunk(await self._json_answer(resp, inst))))
                else:
                    first = True
                    async for data in resp.content.iter_any():
                        if first:
                            self.proxy.metrics.observe_first_byte(op, time.perf_counter() - started)
                            first = False
                        await send(out, [e for chunk in reader.feed(data) for e in translator.feed(chunk)])
            except UPSTREAM_ERRORS:
                self.proxy.balancer.failed(inst, connect=False)
            except ApiError as exc:  # an answer that could not be translated (e.g. a bad tool call)
                await send(out, translator.fail(exc.message))
                await out.write_eof()
                return out
            if not reader.done and translator.finish_reason is None:
                await send(out, translator.fail(f"Upstream {inst.name} ended the stream early"))
            else:
                await send(out, translator.finish())
                on_done()
            await out.write_eof()
        except ClientLeft:  # not the instance's failure; the upstream is closed on release
            pass
        return out

    # --- POST /v1/responses ------------------------------------------------------------
    async def responses_create(self, request: web.Request) -> web.StreamResponse:
        raw, body = await self._body(request)
        key = request[API_KEY]
        requested = body.get("model")
        native = self._native("responses.create", self._resolve(requested))
        if native is not None:
            return await self._relay_native(request, "responses.create", raw, body, requested, native, key)
        history = None
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise ApiError(400, "previous_response_id must be a string", param="previous_response_id",
                               code="invalid_value")
            history = self.store.get(key.id, previous).conversation
        chat, conversation = responses.to_chat(body, history)
        instances, model_id = self._chat_route("responses.create", requested, key)
        chat["model"] = model_id
        resp_id = responses.new_id("resp")
        shell = responses.skeleton(body, resp_id, model_id)
        store = body.get("store", True) is not False

        upstream_body = dumps(chat)

        def keep(response: dict[str, Any], encoded: bytes) -> None:
            # Its size: the answer as sent plus the chat request, which holds the conversation.
            if store:
                self.store.put(key.id, response, [*conversation, responses.assistant_turn(response["output"])],
                               size=len(encoded) + len(upstream_body))

        async def answer(request: web.Request, resp: aiohttp.ClientResponse, inst: Instance, op: str,
                         model_id: str, key: ApiKey, start: float) -> web.StreamResponse:
            self._account(resp, inst, op, model_id, key, start)
            if chat.get("stream") and resp.status == 200:
                stream = responses.ResponsesStream(shell)

                def done() -> None:
                    self._tokens(request, key, stream.chat_usage, model_id)
                    if store:
                        keep(stream.response, dumps(stream.response))
                return await self._stream(request, resp, inst, op, stream, done)
            result = await self._json_answer(resp, inst)
            self._tokens(request, key, result.get("usage"), model_id)
            response, _ = responses.from_chat(result, shell)
            encoded = dumps(response)
            keep(response, encoded)
            return web.Response(body=encoded, content_type="application/json", headers={"X-Nexus-Instance": inst.name})

        return await self.proxy.forward(request, Route("responses.create", True), instances, upstream_body, model_id,
                                        key, path="/v1/chat/completions", answer=answer)

    async def responses_get(self, request: web.Request) -> web.Response:
        key = request[API_KEY]
        check_scope(key, "responses.create", "", None)
        entry = self.store.get(key.id, request.match_info["response_id"])
        return web.Response(body=dumps(entry.response), content_type="application/json")

    async def responses_delete(self, request: web.Request) -> web.Response:
        key = request[API_KEY]
        check_scope(key, "responses.create", "", None)
        response_id = request.match_info["response_id"]
        self.store.delete(key.id, response_id)
        return web.Response(body=dumps({"id": response_id, "object": "response", "deleted": True}),
                            content_type="application/json")

    # --- POST /v1/messages, /v1/messages/count_tokens ----------------------------------
    async def messages_create(self, request: web.Request) -> web.StreamResponse:
        raw, body = await self._body(request)
        key = request[API_KEY]
        requested = body.get("model")
        native = self._native("messages.create", self._resolve(requested))
        if native is not None:
            return await self._relay_native(request, "messages.create", raw, body, requested, native, key)
        chat = messages.to_chat(body)
        instances, model_id = self._chat_route("messages.create", requested, key)
        chat["model"] = model_id
        stops = chat.get("stop") or []

        async def answer(request: web.Request, resp: aiohttp.ClientResponse, inst: Instance, op: str,
                         model_id: str, key: ApiKey, start: float) -> web.StreamResponse:
            self._account(resp, inst, op, model_id, key, start)
            if chat.get("stream") and resp.status == 200:
                stream = messages.MessagesStream(model_id, stops)
                return await self._stream(request, resp, inst, op, stream, lambda: self._tokens(request, key, stream.chat_usage, model_id))
            result = await self._json_answer(resp, inst)
            self._tokens(request, key, result.get("usage"), model_id)
            return web.Response(body=dumps(messages.from_chat(result, model_id, stops)),
                                content_type="application/json", headers={"X-Nexus-Instance": inst.name})

        return await self.proxy.forward(request, Route("messages.create", True), instances, dumps(chat), model_id,
                                        key, path="/v1/chat/completions", answer=answer)

    async def messages_count_tokens(self, request: web.Request) -> web.StreamResponse:
        """From a max_tokens=1 probe's prompt_tokens, unless a backend declares
        `messages.count_tokens` for the model (then relayed: a real tokenizer endpoint)."""
        raw, body = await self._body(request)
        key = request[API_KEY]
        requested = body.get("model")
        native = self._native("messages.count_tokens", self._resolve(requested))
        if native is not None:
            check_scope(key, "messages.create", native[1], requested)
            return await self._relay_native(request, "messages.count_tokens", raw, body, requested, native, key)
        chat = messages.to_chat(body, count_only=True)
        instances, model_id = self._chat_route("messages.create", requested, key)
        chat["model"] = model_id

        async def answer(request: web.Request, resp: aiohttp.ClientResponse, inst: Instance, op: str,
                         model_id: str, key: ApiKey, start: float) -> web.StreamResponse:
            self._account(resp, inst, op, model_id, key, start)
            result = await self._json_answer(resp, inst)
            self._tokens(request, key, result.get("usage"), model_id)
            prompt = (result.get("usage") or {}).get("prompt_tokens")
            if not isinstance(prompt, int):
                raise ApiError(502, "The backend's answer has no usage.prompt_tokens to count from",
                               code="upstream_invalid_answer")
            return web.Response(body=dumps({"input_tokens": prompt}), content_type="application/json",
                                headers={"X-Nexus-Instance": inst.name})

        return await self.proxy.forward(request, Route("messages.count_tokens", False), instances, dumps(chat),
                                        model_id, key, path="/v1/chat/completions", answer=answer)


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, cut: bool = False) -> bytes:
    """The answer's body, at most `limit` bytes: past it cut (`cut`) or a 502."""
    parts: list[bytes] = []
    size = 0
    async for part in resp.content.iter_any():
        size += len(part)
        if size > limit:
            if cut:
                parts.append(part[:limit - size])
                break
            raise ApiError(502, f"Upstream answer larger than {limit} bytes", code="upstream_too_large")
        parts.append(part)
    return b"".join(parts)


class ClientLeft(Exception):
    pass


async def send(out: web.StreamResponse, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    try:
        await out.write(b"".join(sse(e) for e in events))
    except (ConnectionError, RuntimeError) as exc:  # the client went away
        raise ClientLeft from exc


def as_chunk(answer: dict[str, Any]) -> dict[str, Any]:
    """A whole chat answer as one stream chunk (for a backend that ignored stream=true)."""
    check_chat(answer, "message")
    choice = (answer.get("choices") or [{}])[0]
    delta: dict[str, Any] = choice.get("message") or {}
    for i, call in enumerate(delta.get("tool_calls") or []):
        call.setdefault("index", i)
    return {"model": answer.get("model"), "usage": answer.get("usage"),
            "choices": [{"delta": delta, "finish_reason": choice.get("finish_reason")}]}


def upstream_error(status: int, data: bytes) -> ApiError:
    """An upstream's OpenAI error envelope, as an ApiError with the same status, so the route
    renders it in its own shape."""
    message, param, code = f"Upstream answered {status}", None, None
    try:
        doc = loads(data)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            param, code = err.get("param"), err.get("code")
        elif isinstance(err, str):  # Ollama's {"error": "..."}
            message = err
        elif isinstance(doc, dict) and isinstance(doc.get("detail"), str):  # FastAPI's shape
            message = doc["detail"]
    except ValueError:
        pass
    return ApiError(status if 400 <= status <= 599 else 502, message, param=param if isinstance(param, str) else None,
                    code=code if isinstance(code, str) else None)
