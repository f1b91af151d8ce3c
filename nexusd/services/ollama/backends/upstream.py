"""Talking to the Ollama daemon: its errors in OpenAI terms, and the native /api/* pass-through.

Ollama answers errors as `{"error": "model 'x' not found"}` on /api/* and, on /v1, either that or
an OpenAI-like object with its own types (`api_error`). Clients of our /v1 get the OpenAI envelope
with the right status; clients of /api/* get Ollama's bytes unchanged, as the `ollama` CLI expects.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import web

from nexusd.runtime.errors import ApiError

log = logging.getLogger("nexusd.ollama")

# Errors that mean "the daemon is not there (yet)": 503 + Retry-After, never a bare 500.
DOWN_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError, ConnectionError)

# RFC 9110 §7.6.1 hop-by-hop headers, plus what aiohttp recomputes itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host",
})


def daemon_down(upstream: str, exc: BaseException, retry_after: int) -> ApiError:
    detail = str(exc) or type(exc).__name__
    return ApiError(503, f"The Ollama daemon at {upstream} is not reachable: {detail}",
                    code="upstream_unavailable", headers={"Retry-After": str(retry_after)})


def _is_context_error(message: str) -> bool:
    m = message.lower()
    return "context" in m and any(w in m for w in ("length", "window", "exceed", "too long"))


async def upstream_error(resp: aiohttp.ClientResponse, retry_after: int) -> ApiError:
    """A non-2xx answer from the daemon as an OpenAI error with the right status."""
    raw = await resp.read()
    status = resp.status
    message, code, param = "", None, None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, str):
        message = err
    elif isinstance(err, dict):
        message = str(err.get("message") or "")
        code = err.get("code") if isinstance(err.get("code"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
    if not message:
        message = raw[:500].decode(errors="replace").strip() or f"upstream answered HTTP {status}"
    headers: dict[str, str] = {}
    if _is_context_error(message) or code == "context_length_exceeded":
        return ApiError(400, message, code="context_length_exceeded", param=param or "messages")
    if status == 404:
        code = code or ("model_not_found" if "model" in message.lower() else "not_found")
    elif status in (429, 503):
        headers["Retry-After"] = resp.headers.get("Retry-After", str(retry_after))
    elif status >= 500:
        # The daemon failed (runner crashed, out of memory): a bad gateway from our side.
        status, code = 502, code or "upstream_error"
    elif status not in (400, 401, 403, 404, 405, 408, 409, 413, 415, 422):
        status = 400 if status < 500 else 502
    return ApiError(status, message, code=code, param=param, headers=headers)


def forward_headers(request: web.Request, strip_auth: bool) -> dict[str, str]:
    out = {}
    for k, v in request.headers.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk == "x-nexus-internal-token":
            continue
        if strip_auth and lk == "authorization":  # the internal token is not the daemon's business
            continue
        out[k] = v
    return out


async def passthrough(request: web.Request, http: aiohttp.ClientSession, upstream: str, *,
                      strip_auth: bool, retry_after: int, body: bytes | None = None) -> web.StreamResponse:
    """Relay one request to the daemon byte for byte, streaming both bodies (NDJSON progress of
    /api/pull and /api/chat arrives as it is produced; /api/blobs uploads have no size limit
    because the body is never held in memory)."""
    data: aiohttp.StreamReader | bytes | None = request.content if request.body_exists else None
    headers = forward_headers(request, strip_auth)
    if body is not None:  # a body the service rewrote (native caps): its own length
        data = body
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    try:
        up = await http.request(request.method, upstream + str(request.rel_url), data=data,
                                headers=headers, allow_redirects=False)
    except DOWN_ERRORS as exc:
        down = {"error": f"ollama daemon at {upstream} is not reachable: {exc or type(exc).__name__}"}
        return web.json_response(down, status=503, headers={"Retry-After": str(retry_after)})
    complete = False
    try:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in HOP_BY_HOP:
                resp.headers.add(k, v)
        await resp.prepare(request)
        if request.method != "HEAD":
            async for chunk in up.content.iter_any():
                await resp.write(chunk)  # raises when the client left: the finally closes upstream
        complete = True
        await resp.write_eof()
        return resp
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client left during %s %s; upstream request closed", request.method, request.path)
        return resp
    except (aiohttp.ClientPayloadError, *DOWN_ERRORS) as exc:
        log.warning("daemon stream broke during %s %s: %s", request.method, request.path, exc)
        return resp
    finally:
        if complete:
            up.release()
        else:
            up.close()  # closing (not releasing) the connection cancels the daemon's work
