"""Instance units: several copies of one service on one host, e.g. one LLM per GPU.

`nexus-<service>@.service` and its `@.socket` templates are rendered for every service
(render.py). systemd cannot compute a port from `%i`, so `nexusd units render|install
--instances SERVICE=LIST` writes, for each instance N, the drop-ins that make it concrete:

- `nexus-<service>@N.socket.d/instance.conf` (one per listener socket): `ListenStream=` on the
  instance's port;
- `nexus-<service>@N.service.d/instance.conf`: the same ports as `NEXUS_<SVC>_PORT` /
  `NEXUS_<SVC>_<LISTENER>_PORT` (what the service reports; the socket it inherits is the one it
  serves on) and, when the service declares a GPU (`resources.gpu`), `CUDA_VISIBLE_DEVICES=N`.
  Both are Environment= lines, so `/etc/nexus/<service>@N.env` (read after `<service>.env`)
  overrides them: an EnvironmentFile= wins over Environment= in systemd.

The port allocator (docs/operations.md, "One LLM per GPU"): instance N's listener k of a service
with L listeners gets `base + N*L + k`, where `base` is the plain unit's first port + 100 (the
template's 9000 → instances 9100, 9101, ...) unless `--port-base SERVICE=PORT` moves it. A port
another rendered unit uses (every service's plain listeners, ports in the rendered files such
as the wrapped Ollama daemon's 11436 or the local etcd's, ports in settings defaults) or that two
instances would share is refused: InstanceError, nothing is written.

Instance limits: each instance is its own cgroup, so the template's CPUQuota=/MemoryMax= (the
metadata `resources` block) hold per instance.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

from nexusd.runtime.service import Service, UnitContext
from nexusd.runtime.settings import env_prefix
from nexusd.services import load_service, service_names
from nexusd.units.render import MARKER, context, listen_address, socket_units

BASE_OFFSET = 100  # default base: the plain unit's first port + this
_PORT_IN_TEXT = re.compile(r"[\w.\]]:(\d{2,5})\b")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class InstanceError(ValueError):
    """A bad --instances/--port-base value or a port conflict: said to the user, exit status 2."""


def parse_numbers(text: str) -> list[int]:
    """`0-3` → [0, 1, 2, 3]; `1,2` and `0-1,5` too. Numbers start at 0 (the GPU index)."""
    out: set[int] = set()
    for part in text.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise InstanceError(f"bad instance list {text!r}: use N, N-M or a comma-separated mix (e.g. 0-3)")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise InstanceError(f"bad instance range {part!r}: {hi} < {lo}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def parse_assignments(values: list[str] | None, what: str) -> dict[str, str]:
    """`["ollama=0-3", "tts=0"]` → {"ollama": "0-3", "tts": "0"} (a service named twice: refused)."""
    out: dict[str, str] = {}
    for value in values or []:
        service, sep, rest = value.partition("=")
        if not sep or not service or not rest:
            raise InstanceError(f"bad {what} {value!r}: expected SERVICE=VALUE")
        if service in out:
            raise InstanceError(f"{what}: {service} given twice")
        out[service] = rest
    return out


def parse_instances(values: list[str] | None) -> dict[str, list[int]]:
    return {s: parse_numbers(v) for s, v in parse_assignments(values, "--instances").items()}


def parse_port_bases(values: list[str] | None) -> dict[str, int]:
    out = {}
    for service, value in parse_assignments(values, "--port-base").items():
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise InstanceError(f"--port-base {service}={value}: not a port")
        out[service] = int(value)
    return out


def _settings_ports(settings: Any) -> set[int]:
    """Ports in settings defaults: `*port` fields and URLs (e.g. the wrapped Ollama daemon's)."""
    ports = set()
    for name, value in settings.model_dump().items():
        if name.endswith("port") and isinstance(value, int) and value > 0:
            ports.add(value)
        elif isinstance(value, str) and "://" in value:
            try:
                port = urlsplit(value).port
            except ValueError:
                continue
            if port:
                ports.add(port)
    return ports


def reserved_ports(contexts: dict[str, tuple[type[Service], UnitContext]], files: dict[str, str]) -> dict[int, str]:
    """port → what uses it, for every rendered unit and every service's defaults."""
    used: dict[int, str] = {}
    for name, (_, ctx) in contexts.items():
        for port in _settings_ports(ctx.settings):
            used.setdefault(port, f"nexus-{name} (settings default)")
        for lst in ctx.listeners:
            if lst.port:
                used[lst.port] = f"{ctx.unit} ({lst.name} listener)"
    for path, text in files.items():
        for line in text.splitlines():
            if not line.startswith("#"):
                for m in _PORT_IN_TEXT.finditer(line):
                    used.setdefault(int(m[1]), path)
    return used


def allocate(ctx: UnitContext, numbers: list[int], base: int | None) -> dict[int, list[int]]:
    """Instance N → its ports, one per listener: base + N*L + k."""
    if not ctx.listeners:
        return {n: [] for n in numbers}
    count = len(ctx.listeners)
    if base is None:
        if not ctx.listeners[0].port:
            raise InstanceError(f"{ctx.service}: its port default is 0 (any): give --port-base {ctx.service}=PORT")
        base = ctx.listeners[0].port + BASE_OFFSET
    return {n: [base + n * count + k for k in range(count)] for n in numbers}


def _port_env(service: str, listener_index: int, listener_name: str) -> str:
    """As the settings name them: the first listener's is NEXUS_<SVC>_PORT (packaging.manifest)."""
    middle = "" if listener_index == 0 else listener_name.upper() + "_"
    return f"{env_prefix(service)}{middle}PORT"


def instance_dropins(cls: type[Service], ctx: UnitContext, number: int, ports: list[int]) -> dict[str, str]:
    head = f"{MARKER} --instances {ctx.service}=...: do not edit.\n"
    svc_head = head + (f"# Instance {number} of {ctx.unit}@.service: override in /etc/nexus/{ctx.service}@{number}.env\n"
                       f"# (read after {ctx.service}.env). The port allocator: docs/operations.md.\n")
    sock_head = head + ("# Move it with --port-base, or a drop-in sorting after this one "
                        "(ListenStream= empty, then the new one).\n")
    env = [f"Environment={_port_env(ctx.service, k, lst.name)}={port}"
           for k, (lst, port) in enumerate(zip(ctx.listeners, ports, strict=True))]
    if ctx.resources.gpu:
        env += ["# One GPU per instance: instance N sees GPU N only (as its device 0).",
                f"Environment=CUDA_VISIBLE_DEVICES={number}"]
    files = {f"{ctx.unit}@{number}.service.d/instance.conf": svc_head + "[Service]\n" + "\n".join(env) + "\n"}
    for template, lst, port in zip(socket_units(cls, ctx, instance=True), ctx.listeners, ports, strict=False):
        unit = template.replace("@.", f"@{number}.")
        listen = listen_address(dataclasses.replace(lst, port=port))
        files[f"{unit}.d/instance.conf"] = sock_head + f"[Socket]\nListenStream={listen}\n"
    return files


def render_instances(contexts: dict[str, tuple[type[Service], UnitContext]], files: dict[str, str],
                     instances: dict[str, list[int]], port_bases: dict[str, int]) -> dict[str, str]:
    """The drop-ins of every requested instance, after checking every port is free."""
    unknown = sorted((set(instances) | set(port_bases)) - set(contexts))
    if unknown:
        raise InstanceError(f"unknown or not rendered service(s): {', '.join(unknown)}")
    everyone = dict(contexts)
    for name in service_names():  # a port of a service left out of this rendering is still taken
        if name not in everyone:
            cls = load_service(name)
            everyone[name] = (cls, context(cls))
    used = reserved_ports(everyone, files)
    out: dict[str, str] = {}
    for service, numbers in sorted(instances.items()):
        cls, ctx = contexts[service]
        for number, ports in allocate(ctx, numbers, port_bases.get(service)).items():
            for port in ports:
                if port > 65535:
                    raise InstanceError(f"{ctx.unit}@{number}: port {port} is past 65535: lower --port-base")
                if port in used:
                    raise InstanceError(f"{ctx.unit}@{number}: port {port} is taken by {used[port]}: "
                                        f"move the instances with --port-base {service}=PORT")
                used[port] = f"{ctx.unit}@{number}"
            out.update(instance_dropins(cls, ctx, number, ports))
    return out
