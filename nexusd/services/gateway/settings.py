"""Gateway settings (`NEXUS_GATEWAY_*`) and the static backends found in the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from nexusd.runtime.settings import ServiceSettings, service_config
from nexusd.services.gateway.allowlist import parse_entries
from nexusd.services.gateway.ratelimit import Network, parse_networks

# The seed's convention: any <NAME>_BASE_URL is a backend. OPENAI_BASE_URL is what clients use
# to reach *us*, so it is never a backend.
IGNORED_BASE_URLS = frozenset({"OPENAI_BASE_URL"})


def env_base_urls(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {
        name[: -len("_BASE_URL")].lower(): value.strip().rstrip("/")
        for name, value in sorted(environ.items())
        if name.endswith("_BASE_URL") and name not in IGNORED_BASE_URLS
        and value.strip().startswith(("http://", "https://"))
    }


def split_list(value: str) -> list[str]:
    return [v for v in value.replace(",", " ").split() if v]


class GatewaySettings(ServiceSettings):
    model_config = service_config("gateway")

    port: int = Field(8800, ge=0, le=65535, description="API port (clients, API keys)")
    obs_host: str = Field("127.0.0.1", description="Address of the observability listener")
    obs_port: int = Field(8801, ge=0, le=65535,
                          description="Observability port: /health /readyz /metrics /v1/metadata")
    max_body: int = Field(4 << 20, gt=0, description="Request body limit in bytes")
    max_upload: int = Field((25 << 20) + (64 << 10), gt=0,
                            description="Body limit of the audio upload routes (multipart): OpenAI's 25 MiB plus the form")
    keys_file: Path = Field(Path("/etc/nexus/api-keys"), description="API keys file (hashes only); reloaded on SIGHUP")
    static_backends: dict[str, str] | None = Field(
        None, description='Static backends, JSON {"name": "base URL"}; default: every <NAME>_BASE_URL variable')
    poll_interval: float = Field(2.0, gt=0, le=60, description="Seconds between /readyz polls of each instance")
    metadata_refresh: float = Field(30.0, gt=0, description="Seconds between /v1/metadata refetches")
    connect_timeout: float = Field(3.0, gt=0, le=60, description="Upstream connect timeout, seconds")
    body_timeout: float = Field(30.0, gt=0, le=3600,
                                description="Seconds a client may take to send its request body, then 408")
    read_timeout: float = Field(300.0, gt=0, description="Upstream read timeout (between bytes), seconds")
    read_timeouts: dict[str, float] = Field(
        {}, description='Per-operation read timeouts, JSON: {"images.generate": 600}')
    default_max_inflight: int = Field(256, ge=1, description="Per-instance concurrency when its metadata has none")
    default_max_queue: int = Field(1024, ge=0, description="Per-instance wait queue when its metadata has none")
    queue_timeout: float = Field(30.0, gt=0, description="Seconds a request may wait for a slot, then 503")
    eject_cooldown: float = Field(10.0, gt=0, description="Seconds an ejected instance gets no traffic")
    eject_after: int = Field(3, ge=1, description="Consecutive 5xx answers that eject an instance")
    upstream_connections: int = Field(256, ge=1, description="Keep-alive pool size per upstream host")
    buffer_limit: int = Field(8 << 20, gt=0,
                              description="Answers with a known length up to this size are read whole; larger ones stream")
    auth_failures_per_minute: int = Field(
        30, ge=1, description="Failed authentications a client address may make per minute (burst as large); "
                              "past it, 429 before any key is checked")
    trusted_proxies: str = Field(
        "", description="Comma-separated CIDRs of reverse proxies whose X-Forwarded-For names the client "
                        "address (for the per-address limits); unset: the socket's peer is the client")
    local_units: str = Field("/etc/systemd/system", description="Without NEXUS_ETCD_ENDPOINTS: find the nexusd "
                             "services enabled on this host from the units here; empty = off")
    file_fetches_per_minute: int = Field(
        120, ge=1, description="Image-file fetches (the public capability URLs) a client address may make per minute")
    file_fetch_inflight: int = Field(
        16, ge=1, description="Image-file fetches in flight per instance; more get 429 (generation slots are not used)")
    allowed_backends: str = Field(
        "", description="CIDRs and hostnames (comma-separated) that instances registered in etcd may be at; "
                        "others are never contacted nor sent the internal token. Unset: unrestricted")
    upstreams: Path = Field(Path("/etc/nexus/upstreams.toml"),
                            description="Upstreams file (TOML, optional): plain OpenAI-compatible upstreams, "
                                        "[fallbacks] and [aliases] (the model names clients send → served "
                                        "models); reloaded on SIGHUP")
    responses_store_count: int = Field(10000, ge=0, description="Responses kept for previous_response_id "
                                                                "(store: true), at most; 0 = none")
    responses_store_bytes: int = Field(64 << 20, ge=0, description="Responses store: bytes at most")
    responses_store_ttl: float = Field(3600.0, gt=0, description="Responses store: seconds a response is kept")
    etcd_retry: float = Field(2.0, gt=0, le=60, description="Seconds between etcd reconnect attempts (max backoff)")
    usage_dir: Path | None = Field(None, description="Usage ledger without etcd: one file per UTC day and gateway "
                                   "here. Default: $STATE_DIRECTORY/usage (the unit's, /var/lib/nexus/gateway/usage); "
                                   "neither set: in memory only. With etcd it lives in etcd")
    usage_days: int = Field(90, ge=1, description="Usage ledger: days kept; older days are deleted")
    usage_period: float = Field(5.0, gt=0, le=300, description="Usage ledger: seconds between writes of this "
                                                               "gateway's counts (and reads of the others')")
    usage_id: str = Field("", pattern=r"^[A-Za-z0-9_.@:-]*$",
                          description="Usage ledger: this gateway's id, stable across restarts "
                                      "(default <host>-<port>, @N for an instance)")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        parse_networks(split_list(v))  # a typo fails at start, naming the setting
        return v

    @field_validator("allowed_backends")
    @classmethod
    def _allow_list(cls, v: str) -> str:
        parse_entries(split_list(v))
        return v

    @property
    def trusted_proxy_networks(self) -> list[Network]:
        return parse_networks(split_list(self.trusted_proxies))

    @field_validator("static_backends", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # The generated env file lists it as `NEXUS_GATEWAY_STATIC_BACKENDS=`: uncommented, it
        # must mean "not set" (the <NAME>_BASE_URL default), not an invalid dict.
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _backends_from_environment(self) -> GatewaySettings:
        # Read once, with the other settings: the seed's <NAME>_BASE_URL convention.
        if self.static_backends is None:
            self.static_backends = env_base_urls()
        return self  # tls_cert/tls_key: the runtime's (every service has them)
