"""What a service is to the runtime: endpoints, models, checks, and lifecycle hooks.

A service subclasses `Service`, sets `name` and `Settings`, and returns its `Endpoint`s.
The runtime adds the contract routes (`/health`, `/readyz`, `/metrics`, `/v1/metadata`),
the per-request handling (request id, errors, metrics, access log, internal auth, body limits),
sd_notify, etcd registration and signal handling. See docs/service-contract.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

from nexusd import __version__
from nexusd.runtime.errors import ErrorFormat
from nexusd.runtime.metadata import Capabilities, Concurrency, ModelInfo, Resources
from nexusd.runtime.settings import ServiceSettings, SharedSettings

if TYPE_CHECKING:
    from nexusd.runtime.context import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A readiness check returns None (or a short detail string) when healthy and raises when not.
Check = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class Endpoint:
    """One HTTP route of a service, as the router and the metadata document see it."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    streaming: bool = False
    model_required: bool = False
    max_body: int | None = None  # None = the service's NEXUS_<SERVICE>_MAX_BODY
    public: bool = False  # True: reachable without NEXUS_INTERNAL_TOKEN (capability URLs)
    passthrough: bool = False  # True: keep the handler's own error shape (e.g. Ollama's /api/*)
    listed: bool = True  # False: serve it but leave it out of /v1/metadata endpoints
    listener: str = "api"
    # The shape of every error this route answers (see runtime/errors.py): "openai",
    # "anthropic" (/v1/messages) or "ollama" (/api/*).
    errors: ErrorFormat = "openai"


@dataclass(frozen=True)
class Listener:
    """A socket the service serves on; `name` is the systemd FileDescriptorName=."""

    name: str
    host: str
    port: int
    observability: bool = True  # serve /health, /readyz, /metrics, /v1/metadata here
    ssl_context: Any = None  # an ssl.SSLContext: serve HTTPS on this socket


CONFIG_DIR = "/etc/nexus"


@dataclass
class UnitContext:
    """What a service's unit hooks see (`nexusd units render`): its static description from the
    settings' defaults, never the environment, and the host facts the renderer was given."""

    service: str
    nexusd: str
    settings: ServiceSettings
    resources: Resources
    listeners: list[Listener]
    groups: list[str] = field(default_factory=list)
    config_dir: str = CONFIG_DIR

    @property
    def unit(self) -> str:
        return f"nexus-{self.service}"

    @property
    def env_file(self) -> str:
        return f"{self.config_dir}/{self.service}.env"


class Service:
    """Base class for a nexusd service. Override what you need; the defaults do nothing.

    What a service *is* (name, settings, listeners, resources, unit needs) is static: class
    attributes and classmethods of its settings, readable without constructing it (units, the
    dev stack). What it *serves* (endpoints, models, checks) needs an instance."""

    name: ClassVar[str] = "service"
    version: ClassVar[str] = __version__
    Settings: ClassVar[type[ServiceSettings]] = ServiceSettings
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    default_resources: ClassVar[Resources] = Resources()
    socket_activation: ClassVar[bool] = True
    watchdog_sec: ClassVar[int] = 30
    # Error format of paths no endpoint serves (404s, and the guard's refusals there), by path
    # prefix: e.g. {"/api/": "ollama"}. Everything else unmatched gets OpenAI's.
    error_formats: ClassVar[dict[str, ErrorFormat]] = {}

    def __init__(self, settings: ServiceSettings, shared: SharedSettings, runtime: Runtime) -> None:
        self.settings = settings
        self.shared = shared
        self.runtime = runtime

    # --- what the service offers -------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return []

    def models(self) -> list[ModelInfo]:
        return []

    def options(self) -> dict[str, Any]:
        """The request settings a user may pass (JSON-schema-like), for /v1/metadata."""
        return {}

    def concurrency(self) -> Concurrency | None:
        return None

    def checks(self) -> dict[str, Check]:
        """Named readiness checks; /readyz and READY=1 use the same list."""
        return {}

    @classmethod
    def listeners_for(cls, settings: ServiceSettings) -> list[Listener]:
        """The sockets the service binds, from its settings alone (static description)."""
        return [Listener("api", settings.host, settings.port)]

    @classmethod
    def resources_for(cls, settings: ServiceSettings) -> Resources:
        """Declared resources: the class default, overridden by settings (static description)."""
        overrides = {
            k: getattr(settings, k)
            for k in ("cpu", "memory", "gpu", "gpu_memory")
            if getattr(settings, k) is not None
        }
        return cls.default_resources.model_copy(update=overrides)

    def listeners(self) -> list[Listener]:
        """What the server binds: `listeners_for(settings)`, with HTTPS on the API listener when
        NEXUS_<SERVICE>_TLS_CERT/_KEY are set; override to add what else needs an instance."""
        from dataclasses import replace

        from nexusd.runtime.settings import env_name
        from nexusd.runtime.tls import server_context

        s = self.settings
        tls = server_context(s.tls_cert, s.tls_key, env_name(type(s), "")[:-1])
        return [replace(li, ssl_context=tls) if tls and li.name == "api" else li for li in self.listeners_for(s)]

    def guard(self, listener: Listener) -> Callable[[web.Request], None] | None:
        """A synchronous check run before every handler of one listener (unmatched routes
        included; not /health nor `public` endpoints): raise ApiError to refuse. Cheaper per
        request than a middleware when nothing needs awaiting."""
        return None

    def extra_metadata(self) -> dict[str, Any]:
        return {}

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open clients, start background loads. Runs before sockets accept requests."""

    async def stop(self) -> None:
        """Close what start() opened. Runs after in-flight requests drained."""

    async def reload(self) -> None:
        """SIGHUP: reload what can be reloaded (keys, static routes)."""

    # --- systemd units (see nexusd/units/__init__.py) -----------------------------------
    @classmethod
    def unit_directives(cls, ctx: UnitContext) -> list[str]:
        """Extra lines for the [Service] section of nexus-<name>.service (e.g. LoadCredential=)."""
        return []

    @classmethod
    def extra_unit_files(cls, ctx: UnitContext) -> dict[str, str]:
        """Extra files rendered next to the units: relative path → content (e.g. a drop-in)."""
        return {}

    # --- helpers for subclasses ---------------------------------------------------------
    @property
    def resources(self) -> Resources:
        return self.resources_for(self.settings)
