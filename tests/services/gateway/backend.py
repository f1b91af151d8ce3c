"""A contract-following OpenAI backend for the gateway's tests (a test double of an LLM, image
and speech service, not of the gateway): a real nexusd `Service` on the real runtime, so it has
the real /health, /readyz, /v1/metadata and /metrics, and it speaks OpenAI's wire format for
chat (with SSE and `stream_options.include_usage`), completions, embeddings, images (with
capability URLs), speech and voices. Model `dies-midstream` drops its connection after two SSE
events. Every request's headers are recorded, so tests can check what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nexusd.runtime import (
    ApiError,
    Capabilities,
    Concurrency,
    Endpoint,
    ModelInfo,
    Service,
    ServiceSettings,
    parse_json,
)
from nexusd.runtime.settings import service_config

# A 1x1 PNG: the images the double "generates".
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class BackendSettings(ServiceSettings):
    model_config = service_config("testai")
    events: int = 5
    max_inflight: int = 0  # 0 = no concurrency block in the metadata
    model_inflight: int = 0  # > 0: tiny-chat declares its own concurrency (max_queue 0)
    delay: float = 0.0  # seconds each chat request takes
    file_delay: float = 0.0  # seconds each image-file request takes


class Chat(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = "tiny-chat"
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class Completion(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[str]
    stream: bool = False


class Embedding(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = "tiny-embed"
    input: str | list[str]


class Image(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=4)
    response_format: str = "url"


class Speech(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str = Field(min_length=1)
    voice: Any = "alloy"


class OpenAIDouble(Service):
    name = "testai"
    Settings = BackendSettings
    description = "OpenAI-shaped test double behind the gateway"
    capabilities = Capabilities(domains=["text", "image", "audio"], modalities=["text"], streaming=True)
    settings: BackendSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.files: dict[str, bytes] = {}
        self.public_base = ""
        self.aborted = 0
        self.loaded = True  # tests flip it to make /readyz fail

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/chat/completions", self.chat, "chat.completions", streaming=True),
            Endpoint("POST", "/v1/completions", self.completions, "completions", streaming=True),
            Endpoint("POST", "/v1/embeddings", self.embeddings, "embeddings"),
            Endpoint("POST", "/v1/images/generations", self.images, "images.generate"),
            Endpoint("GET", "/v1/images/files/{file_id}", self.image_file, "images.files", public=True),
            Endpoint("POST", "/v1/audio/speech", self.speech, "audio.speech", streaming=True),
            Endpoint("GET", "/v1/audio/voices", self.voices, "audio.voices"),
        ]

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id="tiny-chat", operations=["chat.completions", "completions"], aliases=["gpt-4o-mini"],
                      default_for=["chat.completions"],  # completions: no default (model required)
                      concurrency=Concurrency(max_inflight=self.settings.model_inflight, max_queue=0)
                      if self.settings.model_inflight else None),
            ModelInfo(id="dies-midstream", operations=["chat.completions"]),
            ModelInfo(id="always-500", operations=["chat.completions"]),  # a broken model, ready instance
            ModelInfo(id="tiny-embed", operations=["embeddings"], aliases=["text-embedding-3-small"],
                      default_for=["embeddings"]),
            ModelInfo(id="stub-image", operations=["images.generate"], aliases=["dall-e-2"],
                      default_for=["images.generate"]),
            ModelInfo(id="test-voice", operations=["audio.speech", "audio.voices"], aliases=["tts-1"],
                      default_for=["audio.speech", "audio.voices"]),
        ]

    def concurrency(self) -> Concurrency | None:
        m = self.settings.max_inflight
        return Concurrency(max_inflight=m, max_queue=1) if m else None

    def checks(self):  # noqa: ANN201
        return {"loaded": self._loaded}

    async def _loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError("unloaded by the test")

    def _record(self, request: web.Request) -> None:
        self.seen.append((request.path, dict(request.headers)))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        body = await parse_json(request, Chat)
        if body.model == "always-500":
            return web.json_response({"error": {"message": "broken", "type": "server_error"}}, status=500)
        if self.settings.delay:
            try:
                await asyncio.sleep(self.settings.delay)
            except asyncio.CancelledError:  # the gateway closed our connection (its client went
                self.aborted += 1  # away) and the runtime cancelled this handler
                raise
        text = "hello from " + self.runtime.instance_id
        usage = {"prompt_tokens": 7, "completion_tokens": self.settings.events,
                 "total_tokens": 7 + self.settings.events}
        base = {"id": "chatcmpl-" + secrets.token_hex(4), "created": int(time.time()), "model": body.model}
        if not body.stream:
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.settings.events):
            if body.model == "dies-midstream" and i == 2:
                assert request.transport is not None
                request.transport.close()  # the process "crashes" mid-stream
                return resp
            chunk = {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
        if (body.stream_options or {}).get("include_usage"):
            await resp.write(b"data: " + json.dumps({**base, "object": "chat.completion.chunk",
                                                     "choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.Response:
        self._record(request)
        body = await parse_json(request, Completion)
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "created": int(time.time()),
                                  "model": body.model, "choices": [
                                      {"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    async def embeddings(self, request: web.Request) -> web.Response:
        self._record(request)
        body = await parse_json(request, Embedding)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
                for i in range(len(inputs))]
        return web.json_response({"object": "list", "data": data, "model": body.model,
                                  "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})

    async def images(self, request: web.Request) -> web.Response:
        self._record(request)
        body = await parse_json(request, Image)
        data = []
        for _ in range(body.n):
            if body.response_format == "b64_json":
                data.append({"b64_json": base64.b64encode(PNG).decode()})
            else:
                file_id = f"{self.runtime.instance_id}.{secrets.token_urlsafe(16)}.png"  # as the images service
                self.files[file_id] = PNG
                data.append({"url": f"{self.public_base}/v1/images/files/{file_id}"})
        return web.json_response({"created": int(time.time()), "data": data})

    async def image_file(self, request: web.Request) -> web.Response:
        self._record(request)
        if self.settings.file_delay:
            await asyncio.sleep(self.settings.file_delay)
        data = self.files.get(request.match_info["file_id"])
        if data is None:
            raise ApiError(404, "No such file", code="not_found")
        return web.Response(body=data, content_type="image/png")

    async def speech(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        body = await parse_json(request, Speech)
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)  # chunked, no length: the gateway must relay it as a stream
        for i in range(4):
            await resp.write(f"AUDIO{i}:{body.input[:16]};".encode())
        await resp.write_eof()
        return resp

    async def voices(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"object": "list", "data": [{"id": "alloy"}, {"id": "echo"}]})
