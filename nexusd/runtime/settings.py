"""Settings from the environment: shared `NEXUS_*` and per-service `NEXUS_<SERVICE>_*`.

Each service subclasses `ServiceSettings` and sets `model_config = service_config("images")`.
Settings are read once at start and passed in; nothing reads the environment later.
An invalid value is a configuration error: `load_settings` raises `ConfigError`, and the CLI
exits with 78 (EX_CONFIG, which the units list in `RestartPreventExitStatus=`).
"""

from __future__ import annotations

import os
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EX_CONFIG = 78
S = TypeVar("S", bound=BaseSettings)


class ConfigError(Exception):
    """A setting that cannot be used; the message is one line naming the variable."""


def env_prefix(service: str) -> str:
    """`demo-svc` → NEXUS_DEMO_SVC_: a hyphen is not valid in a shell or systemd variable name."""
    return f"NEXUS_{service.upper().replace('-', '_')}_"


def service_config(service: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=env_prefix(service), extra="ignore", validate_default=True)


class SharedSettings(BaseSettings):
    """Settings every service reads (docs/service-contract.md, Settings)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_", extra="ignore")

    etcd_endpoints: str = Field("", description="Comma-separated etcd URLs; empty = no etcd")
    etcd_ca: str = Field("", description="CA bundle for etcd TLS")
    etcd_cert: str = Field("", description="Client certificate for etcd TLS")
    etcd_key: str = Field("", description="Client key for etcd TLS")
    etcd_user: str = Field("", description="etcd user name")
    etcd_password: str = Field("", description="etcd password")
    etcd_ttl: int = Field(10, ge=2, le=300, description="Registration lease TTL, seconds")
    advertise_url: str = Field("", description="Base URL other hosts should use for this service")
    log_format: Literal["auto", "json", "journal", "text"] = Field(
        "auto", description="auto = journal when stderr is the journal, else JSON lines"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="One record per request (on/off)")
    access_log_probes: bool = Field(False, description="Access records for /health, /readyz and /metrics "
                                    "too (off: probes are only counted in /metrics)")
    strict_limits: bool = Field(False, description="Refuse to start when cgroup limits differ from resources")
    internal_token: str = Field("", description="When set, API routes require this token")
    backend_ca: str = Field("", description="Gateway: CA bundle that https:// backends are verified against "
                                            "(default: the system's CAs)")
    gpu_memory: str = Field("", description="GPU memory cap for this process, e.g. 12Gi")
    cgroup_root: str = Field(
        "/", description="Test/diagnostic: root holding proc/self/cgroup and sys/fs/cgroup for limits"
    )

    @property
    def etcd_endpoint_list(self) -> list[str]:
        return [e.strip() for e in self.etcd_endpoints.split(",") if e.strip()]


class ServiceSettings(BaseSettings):
    """Fields every service has; a service adds its own in a subclass."""

    model_config = service_config("service")

    host: str = Field("127.0.0.1", description="Address to bind")
    port: int = Field(9000, ge=0, le=65535, description="Port to bind (0 = any free port)")
    start_timeout: float = Field(
        90, gt=0, description="Seconds to become ready; also the unit's TimeoutStartSec="
    )
    drain_timeout: float = Field(20, ge=0, description="Seconds to finish in-flight requests on stop")
    max_body: int = Field(1 << 20, gt=0, description="Default request body limit in bytes")
    cpu: str | None = Field(None, description="Override the declared CPU resource (e.g. 4)")
    memory: str | None = Field(None, description="Override the declared memory (e.g. 16Gi)")
    gpu: str | None = Field(None, description="Override the declared GPU (e.g. nvidia-gpu)")
    gpu_memory: str | None = Field(None, description="Override the declared GPU memory (e.g. 12Gi)")
    tls_cert: str = Field("", description="HTTPS on the API port: certificate chain (PEM); a relative name is "
                                          "looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
    tls_key: str = Field("", description="HTTPS on the API port: private key (PEM), as tls_cert")

    @model_validator(mode="after")
    def _tls_files(self) -> ServiceSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
        for name in ("tls_cert", "tls_key") if creds else ():
            value = getattr(self, name)
            if value and not os.path.isabs(value):
                setattr(self, name, os.path.join(creds, value))
        return self


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def load_settings(settings_cls: type[S]) -> S:
    try:
        return settings_cls()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        secret = any(w in field for w in ("token", "password", "key", "secret"))
        shown = "" if isinstance(value, dict) or secret else f" (got {str(value)[:60]!r})"
        raise ConfigError(f"{env_name(settings_cls, field)}: {err['msg']}{shown}") from None
