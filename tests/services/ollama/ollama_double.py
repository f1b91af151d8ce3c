"""A TEST DOUBLE of the Ollama daemon's HTTP API — not Ollama.

No Ollama binary can be installed here, so the native routes the `ollama` engine depends on are
played by this small aiohttp app, shaped as Ollama's API documentation (docs/api.md in the
ollama repository) shows them: /api/version, /api/tags, /api/ps, /api/show, streaming /api/pull
NDJSON (status / digest / total / completed, then "success", or an {"error": ...} line),
/api/chat and /api/generate (NDJSON streams), /api/embed, HEAD/POST /api/blobs/:digest, and the
/v1 error shapes Ollama answers with. The real /v1 generation path is tested against
`llama_cpp.server` instead (see test_relay.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

VERSION = "0.6.2"


def _model(name: str, size: int, family: str = "llama") -> dict[str, Any]:
    return {
        "name": name, "model": name, "modified_at": "2025-01-01T00:00:00Z", "size": size,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {"format": "gguf", "family": family, "families": [family],
                    "parameter_size": "1B", "quantization_level": "Q4_0"},
    }


@dataclass
class OllamaDouble:
    # Models already present (/api/tags) and those the "library" can pull, with layer sizes.
    present: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "tinyllama:latest": _model("tinyllama:latest", 637_700_138),
        "all-minilm:latest": _model("all-minilm:latest", 45_960_996, family="bert"),
    })
    library: dict[str, list[int]] = field(default_factory=lambda: {"llama3.2:latest": [2_019_393_188, 1_428]})
    pull_gate: asyncio.Event | None = None  # when set, pulls pause at 50% until the event is set
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)  # /v1 streams whose client went away
    blobs: dict[str, int] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 40)
        r = app.router
        r.add_get("/", lambda _: web.Response(text="Ollama is running"))
        r.add_get("/api/version", self.version)
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/show", self.show)
        r.add_post("/api/pull", self.pull)
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/generate", self.generate)
        r.add_post("/api/embed", self.embed)
        r.add_route("HEAD", "/api/blobs/{digest}", self.blob_head)
        r.add_post("/api/blobs/{digest}", self.blob_upload)
        r.add_post("/v1/chat/completions", self.v1_chat)
        r.add_post("/v1/embeddings", self.v1_embeddings)
        r.add_get("/v1/models", self.v1_models)
        return app

    async def start(self) -> str:
        self.runner = web.AppRunner(self.app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append((request.method, request.path, dict(request.headers), body))
        return body

    # --- model management ------------------------------------------------------------------
    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": list(self.present.values())})

    async def ps(self, request: web.Request) -> web.Response:
        loaded = [{**m, "expires_at": "2025-01-01T00:05:00Z", "size_vram": m["size"]}
                  for m in list(self.present.values())[:1]]
        return web.json_response({"models": loaded})

    async def show(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        m = self.present.get(body.get("model", ""))
        if m is None:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        caps = ["embedding"] if m["details"]["family"] == "bert" else ["completion"]
        return web.json_response({"details": m["details"], "capabilities": caps,
                                  "model_info": {"general.architecture": m["details"]["family"]}})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = body.get("model", "")
        name = name if ":" in name else f"{name}:latest"
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)

        async def line(doc: dict[str, Any]) -> None:
            await resp.write(json.dumps(doc).encode() + b"\n")

        await line({"status": "pulling manifest"})
        layers = self.library.get(name)
        if layers is None:
            await line({"error": "pull model manifest: file does not exist"})
            return resp
        for i, total in enumerate(layers):
            digest = "sha256:" + hashlib.sha256(f"{name}{i}".encode()).hexdigest()
            for step in range(5):
                if i == 0 and step == 2 and self.pull_gate is not None:
                    await self.pull_gate.wait()
                await line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": total,
                            "completed": total * step // 4})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            await line({"status": status})
        self.present[name] = _model(name, sum(layers))
        return resp

    # --- generation (native) -----------------------------------------------------------------
    async def _ndjson(self, request: web.Request, model: str, key: str, words: list[str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for w in words:
            part = {"role": "assistant", "content": w} if key == "message" else w
            await resp.write(json.dumps({"model": model, "created_at": "2025-01-01T00:00:00Z",
                                         key: part, "done": False}).encode() + b"\n")
        final = {"model": model, "created_at": "2025-01-01T00:00:00Z",
                 key: {"role": "assistant", "content": ""} if key == "message" else "", "done": True,
                 "done_reason": "stop", "total_duration": 1000, "load_duration": 10,
                 "prompt_eval_count": 5, "prompt_eval_duration": 100, "eval_count": len(words),
                 "eval_duration": 800}
        await resp.write(json.dumps(final).encode() + b"\n")
        return resp

    async def _generation(self, request: web.Request, key: str) -> web.StreamResponse:
        body = await self._body(request)
        model = body.get("model", "")
        if (model if ":" in model else f"{model}:latest") not in self.present:
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        words = ["Hello", " there", "!"]
        if body.get("stream", True):
            return await self._ndjson(request, model, key, words)
        part = {"role": "assistant", "content": "".join(words)} if key == "message" else "".join(words)
        return web.json_response({"model": model, "created_at": "2025-01-01T00:00:00Z", key: part,
                                  "done": True, "done_reason": "stop", "prompt_eval_count": 5,
                                  "eval_count": len(words)})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "message")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "response")

    async def embed(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"model": body["model"], "embeddings": [[0.1, 0.2, 0.3] for _ in inputs],
                                  "total_duration": 1000, "load_duration": 10, "prompt_eval_count": 8})

    async def blob_head(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if request.match_info["digest"] in self.blobs else 404)

    async def blob_upload(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        sha, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():  # streamed, as Ollama does
            sha.update(chunk)
            size += len(chunk)
        if f"sha256:{sha.hexdigest()}" != digest:
            return web.json_response({"error": "digest mismatch, file must be downloaded again"}, status=400)
        self.blobs[digest] = size
        return web.Response(status=201)

    # --- OpenAI compatibility (/v1), including Ollama's error shapes -------------------------
    async def v1_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model = body.get("model")
        if model == "missing":  # Ollama's openai middleware: OpenAI-like object, its own type
            return web.json_response({"error": {"message": f'model "{model}" not found, try pulling it first',
                                                "type": "api_error", "param": None, "code": None}}, status=404)
        if model == "crash":
            return web.json_response({"error": "llama runner process has terminated: exit status 2"}, status=500)
        if model == "busy":
            return web.json_response({"error": "server busy, please try again.  maximum pending requests exceeded"},
                                     status=503)
        if model == "long":
            return web.json_response({"error": "the input length exceeds the context length"}, status=400)
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        base = {"id": "chatcmpl-1", "created": int(time.time()), "model": model, "system_fingerprint": "fp_ollama"}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi there!"}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        slow = model == "slow"
        try:
            for i in range(200 if slow else 3):
                delta = {"role": "assistant", "content": f"w{i} "}
                chunk = {**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if slow:
                    await asyncio.sleep(0.05)  # a slow model, not synchronisation
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
            self.disconnected.append(model)
        return resp

    async def v1_embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"object": "list", "model": body["model"],
                                  "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                           for i in range(len(inputs))],
                                  "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)}})

    async def v1_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "library"} for n in self.present]})
