"""The template service: copy this folder to start a new service.

How to add a service:
 1. Copy `nexusd/services/template/` to `nexusd/services/<name>/` and rename the classes.
 2. Settings: subclass `ServiceSettings`; `model_config = service_config("<name>")` gives every
    field the `NEXUS_<NAME>_` prefix. Set your default port with `port: int = ...`.
 3. Endpoints: return `Endpoint(method, path, handler, operation_id)` from `endpoints()`; parse
    bodies with `parse_json(request, YourModel)`; raise `ApiError` for client errors. The runtime
    adds /health, /readyz, /metrics, /v1/metadata, request ids, error envelopes and metrics.
 4. Readiness: return named async checks from `checks()`; raise (or time out) when not ready.
 5. Metrics: create them on `self.runtime.metrics.registry`.
 6. Register the class in `nexusd/services/__init__.py` (BUILTIN) or with an entry point in the
    `nexusd.services` group. `nexusd list`, the units and the contract tests pick it up.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import Counter
from pydantic import BaseModel, Field

from nexusd.runtime import Capabilities, Endpoint, Resources, Service, ServiceSettings, parse_json
from nexusd.runtime.settings import service_config


class TemplateSettings(ServiceSettings):
    model_config = service_config("template")
    port: int = Field(9000, ge=0, le=65535, description="Port to bind (0 = any free port)")
    greeting: str = Field("echo", max_length=64, description="Prefix added to every echo")
    warmup: float = Field(0, ge=0, le=3600, description="Seconds of simulated loading before ready")


class EchoRequest(BaseModel):
    message: str = Field(min_length=1, max_length=4096)
    repeat: int = Field(1, ge=1, le=10)


class TemplateService(Service):
    name = "template"
    Settings = TemplateSettings
    description = "Reference service: echoes a validated message"
    capabilities = Capabilities(domains=["example"], modalities=["text"])
    default_resources = Resources(cpu="1", memory="256Mi")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.echoes = Counter("nexus_template_echoes", "Echo requests served",
                              registry=self.runtime.metrics.registry)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("POST", "/v1/echo", self.echo, "template.echo", max_body=64 * 1024)]

    async def start(self) -> None:
        # Stands in for a model load: readiness fails until it is done.
        self.loaded = asyncio.Event()
        self.loader = asyncio.create_task(self.load())

    async def load(self) -> None:
        steps = max(1, int(self.settings.warmup * 4))
        for step in range(steps):
            self.runtime.progress(f"loading {step + 1}/{steps}")
            await asyncio.sleep(self.settings.warmup / steps)
        self.loaded.set()

    async def stop(self) -> None:
        self.loader.cancel()

    def checks(self):
        return {"loaded": self.is_loaded}

    async def is_loaded(self) -> str:
        if not self.loaded.is_set():
            raise RuntimeError("still loading")
        return f"greeting={self.settings.greeting!r}"

    async def echo(self, request: web.Request) -> web.Response:
        body = await parse_json(request, EchoRequest)
        self.echoes.inc()
        text = " ".join([body.message] * body.repeat)
        return web.json_response({"object": "echo", "message": f"{self.settings.greeting}: {text}"})
