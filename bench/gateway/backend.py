"""A fast OpenAI-shaped backend for the relay benchmark: fixed non-streaming chat answers and
50-event SSE streams, plus just enough of the service contract (/readyz, /v1/metadata) for the
gateway to discover it. Plain aiohttp + uvloop, so the relay, not the backend, is what is measured.

    python bench/gateway/backend.py PORT
"""

from __future__ import annotations

import json
import sys

import uvloop
from aiohttp import web

EVENTS = 50
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}).encode()
CHUNK = b"data: " + json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-model",
    "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}).encode() + b"\n\n"
METADATA = {
    "schema_version": "v1", "service": {"name": "benchai", "version": "0", "instance_id": "benchai-1"},
    "capabilities": {"domains": ["text"], "modalities": ["text"], "streaming": True},
    "endpoints": [{"path": "/v1/chat/completions", "method": "POST", "operation_id": "chat.completions",
                   "streaming": True, "model_required": False}],
    "models": [{"id": "bench-model", "operations": ["chat.completions"], "aliases": [],
                "default_for": ["chat.completions"]}],
    "resources": {}, "limits": {},
}


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' not in body.replace(b" ", b""):
        return web.Response(body=ANSWER, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(EVENTS):
        await resp.write(CHUNK)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready", "checks": {}})


async def metadata(request: web.Request) -> web.Response:
    return web.json_response(METADATA)


async def models(request: web.Request) -> web.Response:
    """What a plain OpenAI-compatible server answers (the gateway's readiness poll of an upstream)."""
    return web.json_response({"object": "list", "data": [{"id": "bench-model", "object": "model"}]})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/readyz", ok)
    app.router.add_get("/health", ok)
    app.router.add_get("/v1/metadata", metadata)
    app.router.add_get("/v1/models", models)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
