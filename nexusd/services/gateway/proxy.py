"""The relay: read the request, route it, forward it, pass the answer back.

Non-streaming answers with a Content-Length are read whole and returned (one write). Streams
(SSE, or any answer without a length) are relayed chunk by chunk as they arrive, never buffered.
A connect failure (nothing sent yet) is retried once on another instance; once a request has
reached an upstream it is never retried. An upstream that dies mid-SSE-stream gets the client an
OpenAI-style error event, then a clean end of stream.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from nexusd.runtime.errors import ApiError, ErrorFormat
from nexusd.runtime.logs import request_id_var
from nexusd.runtime.pipeline import ERROR_FORMATS
from nexusd.runtime.sse import error_event
from nexusd.runtime.validation import loads, read_within
from nexusd.services.gateway.auth import API_KEY
from nexusd.services.gateway.balancer import EJECTING_STATUSES, Balancer
from nexusd.services.gateway.chatstream import dumps
from nexusd.services.gateway.fallbacks import Fallbacks, TryNext, forward_chain
from nexusd.services.gateway.fallbacks import acquire as acquire_or_next
from nexusd.services.gateway.instances import Instance
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.metrics import GatewayMetrics
from nexusd.services.gateway.quotas import Quotas
from nexusd.services.gateway.routing import Route, RoutingTable
from nexusd.services.gateway.streamusage import (
    OLLAMA_MARK,
    UsageChunkFilter,
    ask_for_usage,
    ollama_usage,
)

if TYPE_CHECKING:
    from nexusd.services.gateway.settings import GatewaySettings

log = logging.getLogger("nexusd.gateway.proxy")

# Response headers worth passing back; everything else (hop-by-hop, Server, Date, lengths that
# aiohttp recomputes) is dropped.
PASS_BACK = frozenset({"content-type", "content-encoding", "content-disposition", "cache-control",
                       "retry-after", "openai-processing-ms", "x-ratelimit-limit-requests",
                       "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "allow"})
USAGE_RE = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d+)')
USAGE_MARK = b'"usage"'
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _usage(data: bytes) -> dict[bytes, bytes] | None:
    """Token counts from an answer's `usage`, as matched bytes (decoded at scrape time)."""
    at = data.find(USAGE_MARK)
    if at < 0:
        return None
    return dict(USAGE_RE.findall(data, at)) or None


_MIMES: dict[str, str] = {}


def mime(message: web.Request | aiohttp.ClientResponse) -> str:
    """`message.content_type`, memoised by the raw header: aiohttp parses it afresh for every
    request and response (~1 µs a request for the two in bench/gateway's profile), and clients
    and backends send the same few values. Bounded, so odd values cannot grow it."""
    raw = message.headers.get("Content-Type", "")
    got = _MIMES.get(raw)
    if got is None:
        got = message.content_type
        if len(_MIMES) < 256:
            _MIMES[raw] = got
    return got


class Proxy:
    def __init__(self, settings: GatewaySettings, balancer: Balancer, metrics: GatewayMetrics,
                 internal_token: str, ssl: Any = True) -> None:
        self.settings = settings
        self.ssl = ssl  # how https:// backends are verified (NEXUS_BACKEND_CA)
        self.balancer = balancer
        self.metrics = metrics
        self.table = RoutingTable()
        self.aliases: dict[str, str] = {}  # the gateway's model aliases in force (aliases.py)
        self.fallbacks = Fallbacks({})  # the [fallbacks] of the upstreams file (fallbacks.py)
        self.internal_token = internal_token
        self.session: aiohttp.ClientSession | None = None
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}
        self.quotas = Quotas()  # the gateway gives it its etcd-shared counts
        # Headers every upstream request carries, built once. A User-Agent of our own rather
        # than the session's skip_auto_headers: that option costs aiohttp a CIMultiDict build,
        # a sort and a copy per request (~1.6 µs in bench/gateway's profile).
        self._base_headers = {"User-Agent": "nexusd-gateway"}
        if internal_token:
            self._base_headers["X-Nexus-Internal-Token"] = internal_token

    async def start(self) -> None:
        # Our own session: no auto-decompression (bytes pass through as they came), a large
        # keep-alive pool, no cookie jar, no default headers beyond what we set per request
        # (aiohttp adds Accept and Accept-Encoding only where we set none).
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=self.settings.upstream_connections,
                                           keepalive_timeout=30, enable_cleanup_closed=False, ssl=self.ssl),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    def timeout(self, operation: str) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(operation)
        if t is None:
            read = self.settings.read_timeouts.get(operation, self.settings.read_timeout)
            t = self._timeouts[operation] = aiohttp.ClientTimeout(
                total=None, sock_connect=self.settings.connect_timeout, sock_read=read)
        return t

    # --- the handler ---------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            route = self.table.route(request.method, request.path)
        except ApiError as exc:
            if exc.status == 404:
                await own_route_other_method(request)
            raise
        body = b""
        model: str | None = None
        stream = False
        if request.method in BODY_METHODS:
            # Every routed operation takes JSON (multipart uploads are not relayed yet).
            ctype = mime(request)
            if ctype != "application/json":
                raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'}",
                               code="unsupported_media_type")
            body = await read_body(request, self.settings.body_timeout)
            model, stream = inspect_json(body, native=route.operation_id.startswith(NATIVE_PREFIX))
            if model is not None and model in self.aliases:  # the gateway's [aliases] (aliases.py)
                body = dumps({**loads(body), "model": self.aliases[model]})
        if stream and not route.streaming:
            raise ApiError(400, f"{route.operation_id} does not support stream=true", param="stream",
                           code="streaming_unsupported")
        key = request[API_KEY]
        target = self.aliases.get(model, model) if model else model
        chain = self.fallbacks.chain(target) if self.fallbacks and target else None
        if chain is not None:
            return await forward_chain(self, request, route, chain, body, key, target, stream,  # type: ignore[arg-type]
                                       check_scope)
        instances, model_id = self.table.candidates(route, target)
        check_scope(key, route.operation_id, model_id, model)
        return await self.forward(request, route, instances, body, model_id, key, stream=stream)

    async def forward(self, request: web.Request, route: Route, instances: list[Instance],
                      body: bytes | Callable[[], Any], model_id: str, key: ApiKey,
                      path: str | None = None, slot: bool = True, answer: Any = None,
                      fallback: bool = False, stream: bool = False) -> web.StreamResponse:
        """`body`: the bytes to send, or a callable giving a fresh payload per attempt (a
        spooled upload, multipart.py). `slot=False`: the caller admitted the request itself
        (image files do, so that a flood of file fetches never takes an instance's generation
        slots). `answer`: reads the upstream's answer instead of `relay` (protocols.py
        translates). `fallback`: another model follows (fallbacks.py): a failure before the first
        byte reached the client raises TryNext rather than answering. `stream`: the body asks
        for one."""
        assert self.session is not None
        if key.tpm or key.budget:  # every route that reaches an upstream reserves its tokens here (quotas.py)
            self.quotas.reserve(request, key, body)
        op = route.operation_id
        headers = {**self._base_headers, "X-Request-ID": request_id_var.get() or ""}
        ctype = request.headers.get("Content-Type")
        if ctype:
            headers["Content-Type"] = header_value(ctype, "Content-Type")
        accept = request.headers.get("Accept")
        if accept:
            headers["Accept"] = header_value(accept, "Accept")
        # Path and query only: for an absolute-form target (`GET http://x/... HTTP/1.1`) raw_path
        # is the whole URL, which must never be appended to an instance's base URL.
        url_path = path or upstream_target(request)
        tried: Instance | None = None
        start = time.perf_counter()
        for attempt in (0, 1):
            inst = self.balancer.pick(instances, exclude=tried)
            if inst is None:
                if fallback:
                    raise TryNext("no live instance")
                if tried is not None:
                    raise ApiError(502, "Upstream connection failed", code="upstream_unreachable")
                raise ApiError(503, f"No live instance serves {op}", code="no_instance_available",
                               headers={"Retry-After": "2"})
            if slot:
                await (acquire_or_next(self.balancer, inst, model_id) if fallback else
                       self.balancer.acquire(inst, model_id))
            up, data, strip = inst.upstream, body, None
            if up is None:
                url, send, timeout = inst.base_url + url_path, headers, self.timeout(op)
            else:  # a plain upstream (upstreams.py): its URL layout, its key, never our token
                url, send, timeout = up.url(url_path), up.headers(headers), up.timeout or self.timeout(op)
            if stream and isinstance(body, bytes) and (up is None or up.include_usage):
                # Streams carry usage for metrics and quotas (streamusage.py), asked and stripped.
                data, drop_usage = ask_for_usage(op, body, stream)
                strip = UsageChunkFilter() if drop_usage else None
            try:
                try:
                    resp = await self.session.request(
                        request.method, url, data=data() if callable(data) else (data or None), headers=send,
                        timeout=timeout, allow_redirects=False)
                except aiohttp.ClientConnectorError:
                    # Nothing reached the upstream: safe to try another instance, once.
                    self.balancer.failed(inst, connect=True)
                    self.metrics.observe(op, model_id, 502, inst.name, key.name, None)
                    if attempt == 0:
                        self.metrics.retries.inc()
                        tried = inst
                        continue
                    if fallback:
                        raise TryNext("connect error") from None
                    raise ApiError(502, "Upstream connection failed", code="upstream_unreachable") from None
                except TimeoutError:
                    self.balancer.failed(inst, connect=False)
                    if fallback:
                        raise TryNext("timed out") from None
                    raise ApiError(504, f"Upstream {inst.name} timed out", code="upstream_timeout") from None
                except (aiohttp.InvalidURL, ValueError, UnicodeError):
                    # The client's request could not be turned into an upstream one: its fault,
                    # never the instance's (counting it would let anyone eject backends).
                    raise ApiError(400, "Request target or headers cannot be forwarded",
                                   code="invalid_request") from None
                except aiohttp.ClientError as exc:
                    self.balancer.failed(inst, connect=False)
                    if fallback:
                        raise TryNext(type(exc).__name__) from None
                    raise ApiError(502, f"Upstream error: {type(exc).__name__}", code="upstream_error") from None
                try:
                    if fallback and (resp.status >= 500 or resp.status == 429):
                        if resp.status in EJECTING_STATUSES:
                            self.balancer.failed(inst, connect=False)
                        self.metrics.observe(op, model_id, resp.status, inst.name, key.name, None)
                        raise TryNext(f"answered {resp.status}")
                    if answer is not None:
                        return await answer(request, resp, inst, op, model_id, key, start)
                    return await self.relay(request, resp, inst, op, model_id, key, start, strip)
                finally:
                    resp.release()
            finally:
                if slot:
                    self.balancer.release(inst, model_id)
        raise AssertionError("unreachable")

    async def relay(self, request: web.Request, resp: aiohttp.ClientResponse, inst: Instance, op: str,
                    model_id: str, key: ApiKey, start: float,
                    strip: UsageChunkFilter | None = None) -> web.StreamResponse:
        upstream_seconds = time.perf_counter() - start
        status = resp.status
        if status in EJECTING_STATUSES:
            self.balancer.failed(inst, connect=False)
        elif inst.failures:
            self.balancer.succeeded(inst)
        inst.served += 1
        headers = {k: v for k, v in resp.headers.items() if k.lower() in PASS_BACK}
        headers["X-Nexus-Instance"] = inst.name
        if model_id:
            headers["X-Nexus-Model"] = model_id  # the model that served (a fallback's, say)
        self.metrics.observe(op, model_id, status, inst.name, key.name, upstream_seconds)
        length = resp.content_length
        sse = mime(resp) == "text/event-stream"
        if length is not None and not sse and length <= self.settings.buffer_limit:
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                self.balancer.failed(inst, connect=False)
                raise ApiError(502, "Upstream closed the connection mid-response", code="upstream_error") from None
            usage = (_usage(data) or (ollama_usage(data) if op.startswith(NATIVE_PREFIX) else None)) \
                if status == 200 else None
            if usage:
                self.metrics.add_tokens(key.name, usage)
            # every key: the usage ledger; tpm's settlement; then a limited key's x-ratelimit headers
            self.quotas.settle(request, key, usage, failed=status >= 400, model=model_id)
            if key.rpm or key.tpm:
                headers.update(self.quotas.answer_headers(request, key))
            return web.Response(body=data, status=status, headers=headers)
        if status >= 400:
            self.quotas.settle(request, key, None, failed=True, model=model_id)
        if key.rpm or key.tpm:  # sent before the stream: the guard cannot add them after
            headers.update(self.quotas.answer_headers(request, key))
        return await self.relay_stream(request, resp, inst, op, key, headers, sse, strip, model_id)

    async def relay_stream(self, request: web.Request, resp: aiohttp.ClientResponse, inst: Instance,
                           op: str, key: ApiKey, headers: dict[str, str], sse: bool,
                           strip: UsageChunkFilter | None = None, model_id: str = "") -> web.StreamResponse:
        out = web.StreamResponse(status=resp.status, headers=headers)
        if sse:
            out.headers["Cache-Control"] = "no-cache"
        await out.prepare(request)
        started = time.perf_counter()
        first = True
        pending = b""  # a usage object split across chunks (rare: it is the last small event)
        # SSE: OpenAI's `usage`; Ollama's native NDJSON: the last line's eval counts.
        look = sse or op.startswith(NATIVE_PREFIX)
        mark, end, parse = (USAGE_MARK, b"\n\n", _usage) if sse else (OLLAMA_MARK, b"\n", ollama_usage)
        try:
            async for chunk in resp.content.iter_any():
                if first:
                    self.metrics.observe_first_byte(op, time.perf_counter() - started)
                    first = False
                try:
                    data = strip.feed(chunk) if strip is not None else chunk  # streamusage.py
                    if data:
                        await out.write(data)
                except (ConnectionError, RuntimeError, aiohttp.ClientError):
                    # Our client went away: the upstream connection is closed on release, and
                    # it is not the instance's failure.
                    log.debug("client of %s went away mid-stream", op)
                    return out
                if look and (pending or mark in chunk):
                    pending += chunk
                    if pending.endswith(end) or len(pending) > 65536:
                        usage = parse(pending)
                        if usage:
                            look = False
                            self.metrics.add_tokens(key.name, usage)
                            self.quotas.settle(request, key, usage, failed=False, model=model_id)
                        pending = b""
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                TimeoutError) as exc:
            self.balancer.failed(inst, connect=False)
            log.warning("upstream %s ended mid-stream: %s", inst.name, type(exc).__name__)
            if not sse:  # no in-band error for raw bytes: drop the connection so the client knows
                if request.transport is not None:
                    request.transport.close()
                return out
            await out.write(error_event(ApiError(502, f"Upstream {inst.name} ended the stream early",
                                                     type="server_error", code="upstream_disconnected")))
        if strip is not None and strip.pending:
            await out.write(strip.flush())
        if (look or not sse) and resp.status < 400:  # relayed, no usage came: the request still counts
            self.quotas.settle(request, key, None, failed=False, model=model_id)
        await out.write_eof()
        return out


def upstream_target(request: web.Request) -> str:
    """The request's path and query, still percent-encoded, origin-form."""
    raw = request.raw_path
    if raw[:1] == "/":
        return raw
    return request.rel_url.raw_path_qs  # absolute-form (or odd) target: path and query only


def header_value(value: str, name: str) -> str:
    """A header value we pass upstream: printable ASCII only (aiohttp's server accepts more
    than its client sends, and the upstream call would raise on it)."""
    if value.isascii() and value.isprintable():
        return value
    raise ApiError(400, f"{name} header has characters that cannot be forwarded", code="invalid_request")


async def own_route_other_method(request: web.Request) -> None:
    """aiohttp hands a method mismatch on one of the gateway's own routes (GET /v1/models, POST
    /v1/responses, ...) to the catch-all relay route, which knows only the backends' routes: say
    405 with the methods the gateway's own route takes, as for any other route, not 404."""
    allowed: set[str] = set()
    fmt: ErrorFormat | None = None
    for resource in request.app.router.resources():
        if "{tail" in resource.canonical:  # the relay routes themselves
            continue
        match, methods = await resource.resolve(request)
        if match is None and methods:
            allowed |= methods
            fmt = fmt or request.app[ERROR_FORMATS].get(resource.canonical)
    allowed.discard("HEAD")
    if allowed:
        error = ApiError(405, f"Method not allowed; allowed: {', '.join(sorted(allowed))}",
                         code="method_not_allowed", headers={"Allow": ", ".join(sorted(allowed))})
        error.format = fmt
        raise error


async def read_body(request: web.Request, timeout: float) -> bytes:
    try:
        return await read_within(request, timeout)
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request body too large", code="request_too_large") from None


def inspect_json(body: bytes, native: bool = False) -> tuple[str | None, bool]:
    """The two fields routing needs: `model` and `stream`. The body is forwarded unchanged.
    Ollama's native API also names the model `name` (pull, show, delete; `model` wins)."""
    data: Any = loads(body)  # 400 invalid_json, nesting depth bounded
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object", code="invalid_json")
    model = data.get("model") or (data.get("name") if native else None)
    if model is not None and (not isinstance(model, str) or not model or len(model) > 256):
        raise ApiError(400, "model must be a non-empty string", param="model", code="invalid_value")
    return model, data.get("stream") is True


# Ollama's native API (`ollama.<name>` operations, routed from the service's metadata) in two
# scopes a key's --ops must name: inference and listing, and model management (disk, network).
NATIVE_PREFIX = "ollama."
NATIVE_INFERENCE = frozenset({"chat", "generate", "embed", "embeddings", "tags", "show", "ps", "version"})


def native_scope(operation: str) -> str:
    """`ollama.native` or `ollama.admin`; anything not known to be inference is admin."""
    return "ollama.native" if operation[len(NATIVE_PREFIX):] in NATIVE_INFERENCE else "ollama.admin"


def model_allowed(models: frozenset[str], requested: str) -> bool:
    """Ollama names `llama3` and `llama3:latest` the same model."""
    if requested in models:
        return True
    if requested.endswith(":latest"):
        return requested[: -len(":latest")] in models
    return ":" not in requested and f"{requested}:latest" in models


def check_scope(key: ApiKey, operation: str, model_id: str, requested: str | None) -> None:
    if operation.startswith(NATIVE_PREFIX):
        # Native routes carry no routing model: only the key's explicit --ops open them (a key
        # with no --ops limit gets neither scope), and the body's model is checked here.
        scope = native_scope(operation)
        if key.operations is None or (scope not in key.operations and operation not in key.operations):
            raise ApiError(403, f"This API key may not use {operation} (its --ops must name {scope})",
                           code="operation_not_allowed")
        if key.models is not None and requested is not None and not model_allowed(key.models, requested):
            raise ApiError(403, f"This API key may not use model '{requested}'", param="model",
                           code="model_not_allowed")
        return
    if key.operations is not None and operation not in key.operations:
        raise ApiError(403, f"This API key may not use {operation}", code="operation_not_allowed")
    if key.models is not None and model_id and model_id not in key.models and requested not in key.models:
        raise ApiError(403, f"This API key may not use model '{requested or model_id}'",
                       param="model", code="model_not_allowed")

