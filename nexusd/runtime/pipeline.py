"""What the runtime does around every handler, on the hot path of every request: request id,
internal token, per-route body limit, the service's guard, errors in the route's format
(errors.py), metrics and the access record.

It wraps each route's handler when the route is added, rather than running as an aiohttp
middleware: aiohttp builds a middleware chain per request (functools.partial + update_wrapper
for each, plus its own current-app fix-up), which cost more than everything done here
(bench/runtime_echo). Wrapping also lets each route know its endpoint and metrics label up
front. Unmatched paths reach a catch-all route (see app.py) wrapped the same way, so 404/405
get the same envelopes, ids, metrics and access records (and a declared path prefix its own
error format: `Service.error_formats`)."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from nexusd.runtime.access import AccessSink
from nexusd.runtime.errors import (
    CLIENT_CLOSED,
    ApiError,
    ErrorFormat,
    from_http_exception,
    renderer,
)
from nexusd.runtime.logs import request_id_var
from nexusd.runtime.metrics import Metrics
from nexusd.runtime.service import Endpoint

access_log = logging.getLogger("nexusd.access")
error_log = logging.getLogger("nexusd.errors")

REQUEST_ID = "X-Request-ID"


# New ids: a random per-process prefix and a counter, 32 hex digits like a uuid4's hex but
# without a getrandom() call per request; unique across instances by the prefix.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _request_id(request: web.Request) -> str:
    rid = request.headers.get(REQUEST_ID)
    # Accept the caller's id only when it is short and printable; it ends up in logs and headers.
    if rid and len(rid) <= 128 and rid.isprintable() and " " not in rid:
        return rid
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _set_body_limit(request: web.Request, limit: int) -> web.Request:
    """The per-route body limit. aiohttp has only a per-app one; request.clone() would do but
    costs ~30 µs a request, so set the attribute that read()/post() check when it exists."""
    if getattr(request, "_client_max_size", None) is not None:
        request._client_max_size = limit
        return request
    return request.clone(client_max_size=limit)


def _has_token(request: web.Request, token: str) -> bool:
    given = request.headers.get("X-Nexus-Internal-Token", "")
    if not given:
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode(), token.encode())


class RequestPipeline:
    """Wraps handlers with the runtime's per-request work. One per listener app."""

    def __init__(self, metrics: Metrics, *, internal_token: str, access: bool,
                 guard: Callable[[web.Request], None] | None = None, sink: AccessSink | None = None,
                 log_probes: bool = False) -> None:
        """`guard`: the service's synchronous check run just before the handler (e.g. the
        gateway's API keys); it raises ApiError to refuse. `sink`: the process's access log
        (access.py); None writes access records through `logging` (in-process servers).
        `log_probes`: access records for /health, /readyz and /metrics too (they are counted in
        /metrics either way; a readiness poll every 2 s is ~43,000 journal lines a day)."""
        self.stats = metrics.http
        self.internal_token = internal_token
        self.guard = guard
        self.sink = sink
        self.access = access and access_log.isEnabledFor(logging.INFO)
        self.log_probes = log_probes

    def wrap(self, handler: Any, endpoint: Endpoint | None, label: str, guarded: bool = True,
             errors: ErrorFormat | None = None, probe: bool = False) -> Any:
        """`guarded=False` (liveness) and `public` endpoints (capability URLs) skip the guard.
        `probe` routes (/health, /readyz, /metrics) get no access record unless `log_probes`.
        Errors are rendered in `errors`, else the endpoint's format, else OpenAI's; an ApiError
        that names its own `format` (the catch-all's 405) keeps it."""
        stats, observe = self.stats, self.stats.observe
        internal_token, sink = self.internal_token, self.sink
        access = self.access and (self.log_probes or not probe)
        public = endpoint is not None and endpoint.public
        guard = self.guard if guarded and not public else None
        # What this route checks, decided when it is added.
        needs_token = bool(internal_token) and endpoint is not None and not public
        max_body = endpoint.max_body if endpoint is not None else None
        passthrough = endpoint is not None and endpoint.passthrough
        fmt: ErrorFormat = errors or (endpoint.errors if endpoint is not None else "openai")
        render = renderer(fmt)

        async def handle(request: web.Request) -> web.StreamResponse:
            rid = _request_id(request)
            ctx_token = request_id_var.set(rid)
            start = time.perf_counter()
            stats.inflight += 1
            status = 500
            try:
                try:
                    if needs_token and not _has_token(request, internal_token):
                        raise ApiError(401, "This service requires the internal token", code="invalid_internal_token")
                    if max_body is not None:
                        length = request.content_length
                        if length is not None and length > max_body:
                            raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=length)
                        request = _set_body_limit(request, max_body)
                    if guard is not None:
                        guard(request)
                    response = await handler(request)
                except ApiError as exc:
                    response = exc.response(exc.format) if exc.format else render(exc)
                except web.HTTPException as exc:
                    if passthrough or exc.status < 400:
                        # pass-through errors and redirects raised as exceptions pass unchanged
                        exc.headers[REQUEST_ID] = rid
                        raise
                    response = render(from_http_exception(exc))
                except asyncio.CancelledError:
                    status = CLIENT_CLOSED  # the client went away (see disconnect handling in server.py)
                    raise
                except Exception:
                    error_log.exception("unhandled error in %s %s", request.method, request.path)
                    response = render(ApiError(500, f"Internal error (request id {rid})", code="internal_error"))
                status = response.status
                if not response.prepared:  # streamed responses got it in on_response_prepare
                    response.headers[REQUEST_ID] = rid
                return response
            finally:
                stats.inflight -= 1
                elapsed = time.perf_counter() - start
                observe(label, request.method, status, elapsed)
                if access and sink is not None:
                    sink(request.method, request.path, status, elapsed * 1000, rid)
                elif access:
                    # makeRecord + handle rather than .info(): skips Logger.findCaller's stack walk
                    # (~25 µs a record), pointless for a record whose origin is always this line.
                    access_log.handle(access_log.makeRecord(
                        access_log.name, logging.INFO, __file__, 0, "%s %s %d %.1fms",
                        (request.method, request.path, status, elapsed * 1000), None, "handle",
                        {"method": request.method, "path": request.path, "status": status,
                         "duration_ms": round(elapsed * 1000, 3)},
                    ))
                request_id_var.reset(ctx_token)

        return handle


def unmatched(formats: dict[str, ErrorFormat]) -> Any:
    """The catch-all routes' handler: 405 when another route has this path (in that route's
    error format: `formats` maps resource → format), else 404."""

    async def handler(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        fmt: ErrorFormat | None = None
        for resource in request.app.router.resources():
            if UNMATCHED in resource.canonical:
                continue
            match, methods = await resource.resolve(request)
            if match is None and methods:
                allowed |= methods
                fmt = fmt or formats.get(resource.canonical)
        if allowed:
            error = from_http_exception(web.HTTPMethodNotAllowed(request.method, allowed))
            error.format = fmt
            raise error
        raise web.HTTPNotFound()

    return handler


UNMATCHED = "{nexus_unmatched"
# resource → its routes' error format (app.py): for a 405 that a service's own catch-all route
# (the gateway's relay) answers in the format of the route owning the path.
ERROR_FORMATS = web.AppKey("nexus_error_formats", dict)


def catch_all(prefix: str = "/") -> str:
    """The catch-all route under a path prefix ("/" = everything). [\\s\\S]: a decoded %0A in a
    path must match too."""
    return prefix.rstrip("/") + "/{nexus_unmatched:[\\s\\S]*}"


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: streaming responses send their headers inside the handler, while
    the pipeline's contextvar is still set, so the id is added here for them."""
    rid = request_id_var.get()
    if rid and REQUEST_ID not in response.headers:
        response.headers[REQUEST_ID] = rid
