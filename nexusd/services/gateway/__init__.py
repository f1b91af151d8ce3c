"""The gateway: the one OpenAI-compatible front door (docs/gateway.md).

Two listeners: `api` (NEXUS_GATEWAY_PORT, 8800: /health and the API, behind API keys) and
`obs` (NEXUS_GATEWAY_OBS_PORT, 8801 on NEXUS_GATEWAY_OBS_HOST: /health, /readyz, /metrics and
/v1/metadata with the instances and routes). Modules, one per concept: settings, keys, auth,
ratelimit, instances (metadata + readiness polling), discovery (env + etcd), routing, balancer,
proxy (relay and SSE), aggregation (/v1/models, files, report), metrics.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import ssl
from dataclasses import replace
from typing import Any

from nexusd.runtime import Capabilities, Endpoint, Listener, ModelInfo, Resources, Service
from nexusd.runtime.etcd import etcd_client
from nexusd.runtime.settings import ConfigError
from nexusd.runtime.tls import client_context, server_context
from nexusd.services.gateway import diagnosis
from nexusd.services.gateway.aggregation import Aggregation
from nexusd.services.gateway.aliases import conflicts
from nexusd.services.gateway.allowlist import AllowList
from nexusd.services.gateway.auth import make_auth_check
from nexusd.services.gateway.balancer import Balancer
from nexusd.services.gateway.discovery import EtcdDiscovery, add_static
from nexusd.services.gateway.fallbacks import Fallbacks
from nexusd.services.gateway.instances import Instance, InstanceSet
from nexusd.services.gateway.keys import KeyFileError, KeyStore
from nexusd.services.gateway.ledger import Ledger, usage_id, usage_store
from nexusd.services.gateway.localunits import LocalUnitsDiscovery
from nexusd.services.gateway.metrics import GatewayMetrics, InstanceCollector
from nexusd.services.gateway.multipart import MultipartRelay
from nexusd.services.gateway.protocols import ProtocolRoutes
from nexusd.services.gateway.proxy import Proxy
from nexusd.services.gateway.quotas import Quotas
from nexusd.services.gateway.quotashare import QuotaShare
from nexusd.services.gateway.ratelimit import FileRouteLimits
from nexusd.services.gateway.response_store import ResponseStore
from nexusd.services.gateway.routing import RoutingTable
from nexusd.services.gateway.settings import GatewaySettings, split_list
from nexusd.services.gateway.statuspage import RecentErrors, status_handler
from nexusd.services.gateway.upstreams import UpstreamSet

log = logging.getLogger("nexusd.gateway")


class GatewayService(Service):
    name = "gateway"
    Settings = GatewaySettings
    description = "OpenAI-compatible front door: API keys, discovery, routing, load balancing, streaming relay"
    capabilities = Capabilities(domains=["gateway"], modalities=["text", "image", "audio"], streaming=True)
    default_resources = Resources(cpu="2", memory="512Mi")

    settings: GatewaySettings

    def __init__(self, settings: GatewaySettings, shared, runtime) -> None:
        # Callers of the gateway authenticate with API keys; NEXUS_INTERNAL_TOKEN is what the
        # gateway *sends* upstream, so the runtime must not demand it from our clients.
        self.internal_token = shared.internal_token
        super().__init__(settings, shared.model_copy(update={"internal_token": ""}), runtime)
        registry = runtime.metrics.registry
        self.gw_metrics = GatewayMetrics(registry)
        self.keys = KeyStore(settings.keys_file)
        backend_tls = client_context(shared.backend_ca)  # https:// backends: verified
        self.instances = InstanceSet(
            poll_interval=settings.poll_interval, metadata_every=settings.metadata_refresh,
            default_inflight=settings.default_max_inflight, default_queue=settings.default_max_queue,
            on_change=self.rebuild, on_event=self._discovery_event,
            headers={"X-Nexus-Internal-Token": self.internal_token} if self.internal_token else None,
            allow=AllowList(split_list(settings.allowed_backends)) if settings.allowed_backends.strip() else None,
            ssl=backend_tls,
        )
        self.balancer = Balancer(cooldown=settings.eject_cooldown, eject_after=settings.eject_after,
                                 queue_timeout=settings.queue_timeout, on_eject=self._ejected)
        self.proxy = Proxy(settings, self.balancer, self.gw_metrics, self.internal_token, ssl=backend_tls)
        self.proxy.table.explain = self._explain
        self.uploads = MultipartRelay(self.proxy, settings.max_upload)
        self.proxy.quotas = Quotas(QuotaShare(  # per-key quotas, summed over every gateway via etcd
            runtime.instance_id, (lambda: etcd_client(shared)) if shared.etcd_endpoint_list else None))
        self.ledger = Ledger(usage_id(settings), usage_store(settings, shared),  # usage and budgets
                             period=settings.usage_period, days=settings.usage_days)
        self.proxy.quotas.ledger = self.ledger
        self.upstreams = UpstreamSet(self.instances, retry=settings.poll_interval, on_change=self.rebuild)
        self.aggregation = Aggregation(self)
        self.protocols = ProtocolRoutes(self.proxy, ResponseStore(
            settings.responses_store_count, settings.responses_store_bytes, settings.responses_store_ttl))
        self.aliases: dict[str, str] = {}  # as loaded from the upstreams file
        self.alias_conflicts: list[str] = []
        self.etcd: EtcdDiscovery | None = None
        if shared.etcd_endpoint_list:
            self.etcd = EtcdDiscovery(shared, self.instances, retry=settings.etcd_retry,
                                      on_event=self._discovery_event)
        # Without etcd: the nexusd services enabled on this host, from their units.
        self.local_units = LocalUnitsDiscovery(settings.local_units, self.instances) \
            if self.etcd is None and settings.local_units else None
        self._diagnosis: asyncio.Task[None] | None = None
        registry.register(InstanceCollector(self._snapshot))
        self.file_limits = FileRouteLimits(per_minute=settings.file_fetches_per_minute,
                                           inflight=settings.file_fetch_inflight,
                                           trusted=settings.trusted_proxy_networks)
        self._openapi_doc: bytes | None = None
        self.recent_errors = RecentErrors()
        self._status_page = status_handler(self.extra_metadata, self.recent_errors, self.version)
        self._auth = make_auth_check(self.keys, self._rejected,
                                     failures_per_minute=settings.auth_failures_per_minute,
                                     trusted_proxies=settings.trusted_proxy_networks)

    # --- what the runtime asks -----------------------------------------------------------
    @classmethod
    def listeners_for(cls, settings: GatewaySettings) -> list[Listener]:  # type: ignore[override]
        s = settings
        return [Listener("api", s.host, s.port, observability=False), Listener("obs", s.obs_host, s.obs_port)]

    def listeners(self) -> list[Listener]:
        api, obs = self.listeners_for(self.settings)
        return [replace(api, ssl_context=self._tls()), obs]

    def _tls(self) -> ssl.SSLContext | None:
        return server_context(self.settings.tls_cert, self.settings.tls_key, "NEXUS_GATEWAY")

    def guard(self, listener: Listener) -> Any:
        return self._auth if listener.name == "api" else None

    def endpoints(self) -> list[Endpoint]:
        # Every API route a key reaches is admitted against the key's quotas (quotas.py).
        guard = self.proxy.quotas.guard
        return [replace(ep, handler=guard(ep.handler)) if ep.listener == "api" and not ep.public else ep
                for ep in self._endpoints()]

    def _endpoints(self) -> list[Endpoint]:
        relay = self.proxy.handle
        return [
            Endpoint("POST", "/v1/chat/completions", relay, "chat.completions", streaming=True),
            Endpoint("POST", "/v1/completions", relay, "completions", streaming=True),
            Endpoint("POST", "/v1/embeddings", relay, "embeddings"),
            Endpoint("POST", "/v1/images/generations", relay, "images.generate"),
            Endpoint("POST", "/v1/audio/speech", relay, "audio.speech", streaming=True),
            Endpoint("GET", "/v1/audio/voices", relay, "audio.voices"),
            # multipart uploads: their own relay and body bound (multipart.py)
            Endpoint("POST", "/v1/audio/transcriptions", self.uploads.handle, "audio.transcriptions",
                     streaming=True, max_body=self.settings.max_upload),
            Endpoint("POST", "/v1/audio/translations", self.uploads.handle, "audio.translations",
                     max_body=self.settings.max_upload),
            # Responses and Messages, translated to chat.completions (protocols.py).
            Endpoint("POST", "/v1/responses", self.protocols.responses_create, "responses.create", streaming=True),
            Endpoint("GET", "/v1/responses/{response_id}", self.protocols.responses_get, "responses.retrieve"),
            Endpoint("DELETE", "/v1/responses/{response_id}", self.protocols.responses_delete, "responses.delete"),
            # Every failure on these two in Anthropic's shape, the key check's included.
            Endpoint("POST", "/v1/messages", self.protocols.messages_create, "messages.create", streaming=True,
                     errors="anthropic"),
            Endpoint("POST", "/v1/messages/count_tokens", self.protocols.messages_count_tokens,
                     "messages.count_tokens", errors="anthropic"),
            Endpoint("GET", "/v1/models", self.aggregation.list_models, "models.list"),
            Endpoint("GET", "/v1/models/{model:[\\s\\S]+}", self.aggregation.get_model, "models.retrieve"),
            Endpoint("GET", "/v1/images/files/{file_id}", self.aggregation.image_file, "images.files",
                     public=True),  # capability URL: no key, no guard
            Endpoint("GET", "/openapi.json", self._openapi, "gateway.openapi", listed=False),
            # Ollama's native API (declared by the ollama service): errors in Ollama's shape.
            Endpoint("*", "/api/{tail:[\\s\\S]*}", relay, "gateway.relay", listed=False, errors="ollama"),
            # Whatever else a service declares in its metadata (e.g. /v1/echo), and the 404s.
            Endpoint("*", "/{tail:[\\s\\S]*}", relay, "gateway.relay", listed=False),
            # 8801: the operators' status page (server-rendered, refreshes itself).
            Endpoint("GET", "/", self._status_page, "gateway.status", listed=False, listener="obs"),
        ]

    async def _openapi(self, request: Any) -> Any:
        from aiohttp import web

        from nexusd.services.gateway.openapi import document

        if self._openapi_doc is None:  # built once: it imports the services' request models
            self._openapi_doc = json.dumps(document(self.version)).encode()
        return web.Response(body=self._openapi_doc, content_type="application/json")

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m["id"], operations=[], aliases=m["aliases"], owned_by=m["owned_by"])
                for m in self.proxy.table.models]

    def checks(self):
        return {"discovery": self._discovery_ready}

    def extra_metadata(self) -> dict[str, Any]:
        return {**self.aggregation.report(), **diagnosis.report(self), "quotas": self.proxy.quotas.report(),
                "usage": self.ledger.report(),
                "aliases": self.proxy.aliases, "alias_conflicts": self.alias_conflicts}

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        logging.getLogger().addHandler(self.recent_errors)
        self._load_keys()
        self._load_upstreams()
        self.instances.self_urls = self._own_urls()
        await self.proxy.start()
        self.proxy.quotas.share.start()
        self.ledger.start()
        await self.instances.start()
        await self.upstreams.start()
        add_static(self.instances, self.settings.static_backends or {})
        if self.etcd is not None:
            await self.etcd.start()
        if self.local_units is not None:
            await self.local_units.start()
        self._diagnosis = asyncio.create_task(diagnosis.log_once_ready(self), name="gateway-diagnosis")
        # The relay allocates many short-lived objects per request; with the default gen-0
        # threshold (700) the collector runs every few requests and walks every object of a big
        # heap (pydantic, grpc, prometheus). Freezing what start-up made and collecting gen 0
        # less often cut ~20-30 µs of CPU per request in bench/gateway.
        gc.collect()
        gc.freeze()
        gc.set_threshold(7000, 50, 100)

    async def stop(self) -> None:
        logging.getLogger().removeHandler(self.recent_errors)
        if self._diagnosis is not None:
            self._diagnosis.cancel()
        if self.local_units is not None:
            await self.local_units.stop()
        if self.etcd is not None:
            await self.etcd.stop()
        await self.upstreams.stop()
        await self.instances.stop()
        await self.proxy.quotas.share.stop()
        await self.ledger.stop()
        await self.proxy.stop()

    async def reload(self) -> None:
        self._load_keys()
        if self.local_units is not None:
            self.local_units.rescan()
        self._load_upstreams()
        self.rebuild()

    def _load_upstreams(self) -> None:
        # One parse of the upstreams file: [upstreams.*], [fallbacks], [aliases].
        if not self.upstreams.load(self.settings.upstreams, at_start=not self.runtime.ready):
            return
        aliases = self.upstreams.loaded.aliases
        clash = conflicts(aliases, self.proxy.table.known_models)
        if clash:
            message = (f"{self.settings.upstreams}: [aliases] {', '.join(clash)}: "
                       "already the name of a served model (a model id or a metadata alias)")
            if not self.runtime.ready:
                raise ConfigError(f"NEXUS_GATEWAY_UPSTREAMS: {message}")
            log.error("aliases not reloaded, keeping the previous ones: %s", message)
        else:
            self.aliases = aliases
            if aliases:
                log.info("loaded %d model aliases", len(aliases))
        self.proxy.fallbacks = Fallbacks(self.upstreams.loaded.fallbacks)

    def _load_keys(self) -> None:
        try:
            count = self.keys.reload()
        except KeyFileError as exc:
            if not self.keys.keys and not self.runtime.ready:
                raise ConfigError(f"NEXUS_GATEWAY_KEYS_FILE: {exc}") from None
            raise
        if count == 0:
            log.warning("no API keys loaded from %s: every API request will get 401 "
                        "(add one with `nexusd keys add NAME`)", self.keys.path)
        else:
            log.info("loaded %d API keys", count)

    def _own_urls(self) -> set[str]:
        s = self.settings
        hosts = {s.host, "127.0.0.1", "localhost"}
        return {f"http://{h}:{s.port}" for h in hosts} | {f"https://{h}:{s.port}" for h in hosts}

    async def _discovery_ready(self) -> str:
        # Ready once every source has been looked at once; backends being down is not our
        # unreadiness (the gateway then answers 503 per route, and stays the front door).
        if not self.instances.polled_once.is_set():
            raise RuntimeError("first poll of the static backends not done")
        if not self.upstreams.polled_once.is_set():
            raise RuntimeError("first poll of the plain upstreams not done")
        if self.etcd is not None and not self.etcd.synced.is_set():
            raise RuntimeError("etcd not listed yet")
        ready = len(self.instances.routable())
        return f"{ready}/{len(self.instances.instances)} instances ready"

    # --- callbacks ---------------------------------------------------------------------
    def rebuild(self) -> None:
        known = [i for i in self.instances.instances.values() if i.metadata is not None and not i.is_gateway]
        table = RoutingTable.build(self.instances.routable(), known)
        table.explain = self._explain
        # A backend found after the aliases were loaded may serve a model by an alias's name:
        # its model keeps the name, the alias is set aside (aliases.py).
        clash = conflicts(self.aliases, table.known_models)
        if clash != self.alias_conflicts:
            if clash:
                log.error("[aliases] %s set aside: a backend serves a model by that name", ", ".join(clash))
            self.alias_conflicts = clash
        aliases = {a: m for a, m in self.aliases.items() if a not in clash}
        self.proxy.table = table
        self.proxy.aliases = self.protocols.aliases = aliases

    def _explain(self, op: str) -> str:
        return ": " + diagnosis.why(self, op)  # the 503 says why no instance serves op

    def etcd_state(self) -> dict[str, Any] | None:
        if self.etcd is None:
            return None
        return {"connected": self.etcd.connected, "revision": self.etcd.revision}

    def _snapshot(self) -> list[dict[str, Any]]:
        import time

        now = time.monotonic()
        return [i.describe(now) for i in self.instances.instances.values()]

    def _discovery_event(self, event: str) -> None:
        self.gw_metrics.discovery_events.labels(event).inc()

    def _ejected(self, inst: Instance) -> None:
        log.warning("ejecting %s for %gs after failures", inst.name, self.settings.eject_cooldown)
        self.gw_metrics.ejections.labels(inst.name).inc()
        self.instances.poll_soon()

    def _rejected(self, reason: str) -> None:
        self.gw_metrics.rejected.labels(reason).inc()
