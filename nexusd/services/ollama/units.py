"""Unit files the `ollama` service adds to `nexusd units render`.

Ollama's package installs its own `ollama.service` (Type=exec, no readiness, on 11434). Nexus
takes 11434 and moves the daemon behind it with a drop-in, applying this service's declared
limits to the daemon too (the daemon, not our wrapper, holds the model in memory and on the GPU);
our unit wants and orders after the daemon's. GPU device access is left as Ollama's unit has it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from nexusd.runtime.cgroup import parse_bytes

if TYPE_CHECKING:
    from nexusd.runtime.service import Service, UnitContext
    from nexusd.services.ollama.settings import OllamaSettings


def ollama_host(upstream: str) -> str:
    """OLLAMA_HOST takes host:port."""
    parts = urlsplit(upstream)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def unit_files(cls: type[Service], ctx: UnitContext) -> dict[str, str]:
    from nexusd.units.render import cpu_quota, memory_high, systemd_bytes

    settings = cast("OllamaSettings", ctx.settings)
    r = ctx.resources
    daemon = [
        "[Service]",
        f"# The daemon listens behind nexus-{ctx.service} (NEXUS_OLLAMA_UPSTREAM={settings.upstream}),",
        f"# which serves Ollama's API on port {settings.port} with readiness, metrics and discovery.",
        f"Environment=OLLAMA_HOST={ollama_host(settings.upstream)}",
        f"# Limits from nexus-{ctx.service}'s metadata `resources` block: the daemon holds the models.",
    ]
    if r.cpu:
        daemon.append(f"CPUQuota={cpu_quota(r.cpu)}")
    if r.memory:
        limit = parse_bytes(r.memory)
        daemon += [f"MemoryMax={systemd_bytes(limit)}", f"MemoryHigh={systemd_bytes(memory_high(limit))}"]
    wrapper = [
        "[Unit]",
        "# The default engine wraps the Ollama daemon: start it with us and after it. Wants=, not",
        "# Requires=: on hosts using NEXUS_OLLAMA_ENGINE=llamacpp there is no ollama.service.",
        "Wants=ollama.service",
        "After=ollama.service",
    ]
    return {
        "ollama.service.d/nexus.conf": "\n".join(daemon) + "\n",
        f"{ctx.unit}.service.d/ollama.conf": "\n".join(wrapper) + "\n",
    }
