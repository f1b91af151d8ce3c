"""A real `python -m llama_cpp.server` (SmolLM2 GGUF, `--chat_format chatml-function-calling`
for tools) as a second chat backend of the gateway. llama_cpp.server has no /readyz nor
/v1/metadata, and the gateway's plain-upstreams support (NEXUS_GATEWAY_UPSTREAMS, another
issue) is not there yet, so a small contract adapter stands in front of it: /health, /readyz
and /v1/metadata for discovery, and /v1/chat/completions relayed byte for byte. Generation,
tools, grammar-constrained JSON and SSE are llama_cpp.server's own."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import terminate

MODEL = "smollm2-server"


@contextlib.contextmanager
def llama_server(gguf: str, tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "llama-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", MODEL,
                             "--chat_format", "chatml-function-calling", "--host", "127.0.0.1", "--port", str(port),
                             "--n_ctx", "2048", "--n_threads", "1", "--verbose", "false"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and urllib.request.urlopen(url + "/v1/models", timeout=2).status == 200,
                 timeout=120, what="llama_cpp.server")
        yield url
    finally:
        terminate(proc)
        log.close()


@contextlib.asynccontextmanager
async def contract_adapter(upstream: str) -> AsyncIterator[str]:
    """The service contract in front of llama_cpp.server; yields its base URL."""
    session = aiohttp.ClientSession(auto_decompress=False)
    metadata = {
        "schema_version": "v1", "service": {"name": "llamaserver", "version": "0", "instance_id": "llamaserver-1"},
        "capabilities": {"domains": ["text"], "modalities": ["text"], "streaming": True},
        "endpoints": [{"path": "/v1/chat/completions", "method": "POST", "operation_id": "chat.completions",
                       "streaming": True, "model_required": False}],
        "models": [{"id": MODEL, "operations": ["chat.completions"], "aliases": [], "default_for": []}],
        "resources": {}, "limits": {}}

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "checks": {}})

    async def meta(request: web.Request) -> web.Response:
        return web.json_response(metadata)

    async def chat(request: web.Request) -> web.StreamResponse:
        async with session.post(upstream + "/v1/chat/completions", data=await request.read(),
                                headers={"Content-Type": "application/json"}) as up:
            out = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
            await out.prepare(request)
            async for data in up.content.iter_any():
                await out.write(data)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_get("/health", ok)
    app.router.add_get("/readyz", ok)
    app.router.add_get("/v1/metadata", meta)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await session.close()


@contextlib.contextmanager
def adapter_thread(upstream: str):
    """contract_adapter on an event loop of its own thread, for synchronous tests; yields its URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cm = contract_adapter(upstream)
    url = asyncio.run_coroutine_threadsafe(cm.__aenter__(), loop).result(10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(cm.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
