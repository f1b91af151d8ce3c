"""The `ollama` LLM service on port 11434: OpenAI chat completions, completions and embeddings.

Two engines (NEXUS_OLLAMA_ENGINE): `ollama` wraps the host's Ollama daemon and makes it a full
Nexus service (readiness, metadata, metrics, registration; native /api/* passed through), and
`llamacpp` runs GGUF files in-process with llama-cpp-python. This module parses and bounds the
OpenAI requests and picks the model; the engine answers. See docs/ollama.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from nexusd.runtime import Capabilities, Endpoint, Resources, Service, parse_json
from nexusd.runtime.errors import ApiError
from nexusd.runtime.metadata import Concurrency, ModelInfo
from nexusd.services.ollama.backends import Engine
from nexusd.services.ollama.metrics import LlmMetrics
from nexusd.services.ollama.request import ChatRequest, CompletionRequest, EmbeddingRequest
from nexusd.services.ollama.settings import OllamaSettings
from nexusd.services.ollama.units import unit_files

if TYPE_CHECKING:
    from nexusd.runtime.service import UnitContext


def make_engine(service: OllamaService) -> Engine:
    if service.settings.engine == "llamacpp":
        from nexusd.services.ollama.backends.llamacpp import LlamaCppEngine

        return LlamaCppEngine(service)
    from nexusd.services.ollama.backends.ollama import OllamaEngine

    return OllamaEngine(service)


class OllamaService(Service):
    name = "ollama"
    Settings = OllamaSettings
    description = "LLM: OpenAI chat/completions/embeddings over an Ollama daemon or embedded llama.cpp"
    capabilities = Capabilities(domains=["llm"], modalities=["text"], streaming=True)
    # A GPU host running 7-13B models; override with NEXUS_OLLAMA_CPU/_MEMORY/_GPU. No gpu_memory:
    # the runtime enforces it through torch, which neither Ollama nor llama.cpp uses (importing
    # torch here only costs start time and memory); llama.cpp's share is n_gpu_layers + context.
    default_resources = Resources(cpu="8", memory="32Gi", gpu="nvidia-gpu")
    watchdog_sec = 30
    error_formats = {"/api/": "ollama"}  # unknown /api/... paths answer in Ollama's shape (llamacpp)
    settings: OllamaSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.llm_metrics = LlmMetrics(self.runtime.metrics.registry)
        self.engine = make_engine(self)

    @classmethod
    def extra_unit_files(cls, ctx: UnitContext) -> dict[str, str]:
        """Drop-ins: Ollama's unit moves behind us; ours wants it (see units.py)."""
        return unit_files(cls, ctx)

    # --- what the service offers -------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/chat/completions", self.chat, "chat.completions", streaming=True),
            Endpoint("POST", "/v1/completions", self.completions, "completions", streaming=True),
            Endpoint("POST", "/v1/embeddings", self.embeddings, "embeddings"),
            Endpoint("GET", "/v1/models", self.engine.list_models, "models.list"),
            *self.engine.endpoints(),
        ]

    def models(self) -> list[ModelInfo]:
        return self.engine.models()

    def options(self) -> dict[str, Any]:
        return {
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": self.settings.max_tokens,
                           "description": "capped at NEXUS_OLLAMA_MAX_TOKENS"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "stop": {"type": ["string", "array"], "maxItems": 4},
            "seed": {"type": "integer"},
            "stream": {"type": "boolean"},
        }

    def concurrency(self) -> Concurrency | None:
        return self.engine.concurrency()

    def checks(self):
        return self.engine.checks()

    def extra_metadata(self) -> dict[str, Any]:
        return self.engine.extra_metadata()

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    # --- handlers ----------------------------------------------------------------------
    def pick_model(self, requested: str | None, operation: str) -> str:
        """The request's model, or the operation's default_for model (docs/service-contract.md, Metadata)."""
        if requested:
            return requested
        for m in self.models():
            if operation in m.default_for:
                return m.id
        raise ApiError(400, f"model: required (no default model for {operation})", param="model",
                       code="missing_required_parameter")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await parse_json(request, ChatRequest)
        return await self.engine.chat(request, body, self.pick_model(body.model, "chat.completions"))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await parse_json(request, CompletionRequest)
        return await self.engine.completions(request, body, self.pick_model(body.model, "completions"))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await parse_json(request, EmbeddingRequest)
        return await self.engine.embeddings(request, body, self.pick_model(body.model, "embeddings"))
