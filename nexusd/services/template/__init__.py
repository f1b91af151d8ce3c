"""The template service: copy this folder to start a new service (docs/service-contract.md).

One shape for every service package: the Service class here in `__init__.py`; `settings.py`,
`request.py` (request models), `metrics.py` and `backends/` once they outgrow this file.
1. Settings: `model_config = service_config("<name>")` prefixes every field with NEXUS_<NAME>_.
2. Endpoints: parse bodies with `parse_json(request, Model)`, raise `ApiError`; the runtime adds
   /health, /readyz, /metrics, /v1/metadata, request ids, errors in the route's format, metrics.
3. Readiness: named async checks; heavy work in a worker thread (`runtime.admission(...).run`).
4. Register the class in `nexusd/services/__init__.py` or a `nexusd.services` entry point.
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
    settings: TemplateSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # everything stop() touches exists before start()
        self.echoes = Counter("nexus_template_echoes", "Echo requests served", registry=self.runtime.metrics.registry)
        self.loaded = asyncio.Event()
        self.loader: asyncio.Task[None] | None = None

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("POST", "/v1/echo", self.echo, "template.echo", max_body=64 * 1024)]

    def checks(self):
        return {"loaded": self.is_loaded}

    async def start(self) -> None:  # stands in for a model load: not ready until it is done
        self.loader = asyncio.create_task(self.load())

    async def load(self) -> None:
        steps = max(1, int(self.settings.warmup * 4))
        for step in range(steps):
            self.runtime.progress(f"loading {step + 1}/{steps}")
            await asyncio.sleep(self.settings.warmup / steps)
        self.loaded.set()

    async def stop(self) -> None:
        if self.loader is not None:
            self.loader.cancel()

    async def is_loaded(self) -> str:
        if not self.loaded.is_set():
            raise RuntimeError("still loading")
        return f"greeting={self.settings.greeting!r}"

    async def echo(self, request: web.Request) -> web.Response:
        body = await parse_json(request, EchoRequest)
        self.echoes.inc()
        text = " ".join([body.message] * body.repeat)
        return web.json_response({"object": "echo", "message": f"{self.settings.greeting}: {text}"})
