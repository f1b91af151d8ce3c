"""Builds one aiohttp application per listener: the contract routes (`/health`, `/readyz`,
`/metrics`, `/v1/metadata`) and the service's endpoints, each handler wrapped by the runtime's
RequestPipeline (pipeline.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web, web_response

from nexusd.runtime.errors import ErrorFormat
from nexusd.runtime.metadata import EndpointInfo, MetadataDocument, ServiceInfo
from nexusd.runtime.pipeline import (
    ERROR_FORMATS,
    RequestPipeline,
    add_request_id_header,
    catch_all,
    unmatched,
)
from nexusd.runtime.service import Endpoint, Listener, Service

if TYPE_CHECKING:
    from nexusd.runtime.access import AccessSink
    from nexusd.runtime.health import Readiness


# `Server: nexusd` on every response, not Python's and aiohttp's versions. aiohttp reads this
# module global for each response that sets no Server header (its own 400s included); setting
# the header per response instead would cost every request.
web_response.SERVER_SOFTWARE = "nexusd"


def metadata_document(service: Service) -> MetadataDocument:
    rt = service.runtime
    from nexusd.runtime.metadata import Limits

    return MetadataDocument(
        service=ServiceInfo(name=service.name, version=service.version, instance_id=rt.instance_id),
        description=service.description,
        capabilities=service.capabilities,
        endpoints=[
            EndpointInfo(path=e.path, method=e.method, operation_id=e.operation_id,
                         streaming=e.streaming, model_required=e.model_required,
                         max_body=None if e.passthrough else (e.max_body or service.settings.max_body),
                         errors=e.errors)
            for e in service.endpoints() if e.listed
        ],
        models=service.models(),
        concurrency=service.concurrency(),
        options=service.options(),
        resources=service.resources,
        limits=rt.limits or Limits(),
        extra=service.extra_metadata(),
    )


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


class ContractRoutes:
    def __init__(self, service: Service, readiness: Readiness) -> None:
        self.service = service
        self.readiness = readiness

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": self.service.name})

    async def readyz(self, request: web.Request) -> web.Response:
        report = await self.readiness.run()
        self.service.runtime.metrics.ready.set(1 if report.ready else 0)
        return web.json_response(report.body(), status=200 if report.ready else 503, dumps=_dumps)

    async def metadata(self, request: web.Request) -> web.Response:
        doc = metadata_document(self.service).model_dump(mode="json")
        return web.json_response(doc, dumps=_dumps)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.service.runtime.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp


def build_app(service: Service, listener: Listener, readiness: Readiness,
              access: AccessSink | None = None) -> web.Application:
    """One app per listener. Every route's handler is wrapped by the RequestPipeline (request id,
    token, limits, guard, envelopes, metrics, access record); a final catch-all route gives
    unmatched paths the same treatment (404/405 envelopes)."""
    routes = ContractRoutes(service, readiness)
    shared = service.shared
    pipeline = RequestPipeline(service.runtime.metrics, internal_token=shared.internal_token,
                               access=shared.access_log, guard=service.guard(listener), sink=access,
                               log_probes=shared.access_log_probes)
    app = web.Application(
        client_max_size=service.settings.max_body,
        handler_args={"tcp_keepalive": True},
    )

    formats: dict[str, ErrorFormat] = {}  # resource → its routes' error format, for 405s
    app[ERROR_FORMATS] = formats

    def add(method: str, path: str, handler: Any, endpoint: Endpoint | None = None,
            liveness: bool = False, probe: bool = False) -> None:
        resource = app.router.add_resource(path)
        wrapped = pipeline.wrap(handler, endpoint, resource.canonical, guarded=not liveness,
                                probe=probe or liveness)
        resource.add_route(method, wrapped)
        if endpoint is not None:
            formats[resource.canonical] = endpoint.errors
        if liveness:
            resource.add_route("HEAD", wrapped)

    add("GET", "/health", routes.health, liveness=True)  # liveness is never guarded
    if listener.observability:
        add("GET", "/readyz", routes.readyz, probe=True)
        add("GET", "/metrics", routes.metrics, probe=True)
        add("GET", "/v1/metadata", routes.metadata)
    served = []
    for ep in service.endpoints():
        # An endpoint is served on the listener it names (e.g. the gateway's status page on "obs").
        if ep.listener != listener.name:
            continue
        # Every endpoint gets an explicit limit so the pipeline always applies it.
        ep = ep if ep.max_body is not None else _with_limit(ep, service.settings.max_body)
        add(ep.method, ep.path, ep.handler, ep)
        served.append(ep)
    # Unmatched paths: under a declared prefix in that prefix's error format (longest first),
    # then everything else in OpenAI's; the catch-alls come last, so they only get the rest.
    not_served = unmatched(formats)
    for prefix, fmt in sorted(service.error_formats.items(), key=lambda kv: -len(kv[0])):
        app.router.add_resource(catch_all(prefix)).add_route(
            "*", pipeline.wrap(not_served, None, "unmatched", errors=fmt))
    app.router.add_resource(catch_all()).add_route("*", pipeline.wrap(not_served, None, "unmatched"))
    # Responses a handler prepares itself (streams, relays) get X-Request-ID through this hook;
    # the pipeline adds it to every other response. An app without such endpoints skips the
    # hook: aiohttp awaits the signal for every response (~1-2 µs) once it has a receiver.
    if any(ep.streaming or ep.passthrough or ep.method == "*" for ep in served):
        app.on_response_prepare.append(add_request_id_header)
    return app


def _with_limit(ep: Endpoint, limit: int) -> Endpoint:
    from dataclasses import replace

    return replace(ep, max_body=None) if ep.passthrough else replace(ep, max_body=limit)
