"""Engines behind the `ollama` service's OpenAI endpoints: `ollama` relays to an Ollama daemon,
`llamacpp` runs GGUF files in-process. The service parses and bounds requests; an engine answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nexusd.runtime.metadata import Concurrency, ModelInfo
from nexusd.runtime.service import Check, Endpoint

if TYPE_CHECKING:
    from nexusd.services.ollama import OllamaService
    from nexusd.services.ollama.request import ChatRequest, CompletionRequest, EmbeddingRequest


class Engine(ABC):
    def __init__(self, service: OllamaService) -> None:
        self.service = service
        self.settings = service.settings
        self.runtime = service.runtime
        self.metrics = service.llm_metrics

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def checks(self) -> dict[str, Check]:
        return {}

    def models(self) -> list[ModelInfo]:
        return []

    def endpoints(self) -> list[Endpoint]:
        """Engine-specific routes (the daemon's native /api/*)."""
        return []

    def concurrency(self) -> Concurrency | None:
        return None

    def extra_metadata(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    async def chat(self, request: web.Request, body: ChatRequest, model: str) -> web.StreamResponse:
        ...

    @abstractmethod
    async def completions(self, request: web.Request, body: CompletionRequest, model: str) -> web.StreamResponse:
        ...

    @abstractmethod
    async def embeddings(self, request: web.Request, body: EmbeddingRequest, model: str) -> web.StreamResponse:
        ...

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        created = 0
        data = [{"id": m.id, "object": "model", "created": created, "owned_by": m.owned_by or "nexus"}
                for m in self.models()]
        return web.json_response({"object": "list", "data": data})
