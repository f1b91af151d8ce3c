"""The /v1/metadata discovery document (docs/service-contract.md, Metadata). These models are the schema:
docs/metadata.schema.json is generated from `MetadataDocument` and a test fails on drift."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceInfo(_Model):
    name: str
    version: str
    instance_id: str


class Capabilities(_Model):
    domains: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    streaming: bool = False


class EndpointInfo(_Model):
    path: str
    method: str
    operation_id: str
    streaming: bool = False
    model_required: bool = False
    # The request body limit the runtime enforces (413 above it); null for pass-through routes,
    # whose upstream decides. Lets a gateway refuse an oversized body before relaying it.
    max_body: int | None = None
    # The shape of every failure of the route (docs/service-contract.md, Errors): what clients,
    # the gateway and `nexusd check` should expect.
    errors: Literal["openai", "anthropic", "ollama"] = "openai"


class Concurrency(_Model):
    max_inflight: int = Field(ge=1)
    max_queue: int = Field(ge=0)


class ModelInfo(_Model):
    id: str
    operations: list[str]
    aliases: list[str] = Field(default_factory=list)
    default_for: list[str] = Field(default_factory=list)
    owned_by: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    # This model's own bound (e.g. one generation at a time per model), on top of the
    # instance's `concurrency`; a gateway queues in front of both.
    concurrency: Concurrency | None = None


class Resources(_Model):
    """Declared needs, in Kubernetes-style quantities: cpu "4" or "500m", memory "16Gi"."""

    cpu: str | None = None
    memory: str | None = None
    gpu: str | None = None
    gpu_memory: str | None = None


class Limits(_Model):
    """What this process's cgroup enforces, read at run time; null = unlimited."""

    cpu: str | None = None
    memory: str | None = None
    cgroup: str | None = None
    status: Literal["matching", "mismatch", "unenforced"] = "unenforced"
    warnings: list[str] = Field(default_factory=list)


class MetadataDocument(_Model):
    schema_version: Literal["v1"] = "v1"
    service: ServiceInfo
    description: str = ""
    capabilities: Capabilities
    endpoints: list[EndpointInfo]
    models: list[ModelInfo]
    concurrency: Concurrency | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    resources: Resources
    limits: Limits
    extra: dict[str, Any] = Field(default_factory=dict)


def json_schema() -> str:
    """The JSON Schema of the document, as committed in docs/metadata.schema.json."""
    schema = MetadataDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://nexusd.dev/schemas/metadata.v1.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
