"""Where the gateway looks for backends, and why a route has none: for the 503 message, the
status page, `/v1/metadata` (`discovery`, `unserved`), `nexusd status`, and one log line at start.

The reasons name what to configure: the sources are etcd (NEXUS_ETCD_ENDPOINTS), the nexusd
units enabled on this host (without etcd), and static backends (<NAME>_BASE_URL,
NEXUS_GATEWAY_STATIC_BACKENDS).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from typing import TYPE_CHECKING, Any

from nexusd.services.gateway.routing import KNOWN_ROUTES
from nexusd.status import describe_source as _where

if TYPE_CHECKING:
    from nexusd.services.gateway import GatewayService

log = logging.getLogger("nexusd.gateway.discovery")
# Which built-in service serves an operation the gateway always knows (for the hint).
SERVED_BY = {"chat.completions": "ollama", "completions": "ollama", "embeddings": "ollama",
             "images.generate": "images", "audio.speech": "tts", "audio.voices": "tts"}


def sources(gw: GatewayService) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if gw.etcd is not None:
        out.append({"source": "etcd", "endpoints": gw.etcd.shared.etcd_endpoint_list,
                    "connected": gw.etcd.connected, "listed": gw.etcd.synced.is_set(),
                    "revision": gw.etcd.revision,
                    "registrations": len(gw.instances.sources("etcd:"))})
    local = getattr(gw, "local_units", None)
    if local is not None:
        out.append({"source": "units", **local.state()})
    if gw.settings.static_backends:
        out.append({"source": "static", "backends": dict(gw.settings.static_backends)})
    if gw.upstreams.loaded.upstreams:  # plain OpenAI-compatible upstreams (upstreams.py)
        out.append({"source": "upstreams", "file": str(gw.settings.upstreams),
                    "upstreams": {n: u.base_url for n, u in gw.upstreams.loaded.upstreams.items()}})
    return out


def describe(gw: GatewayService) -> str:
    return "; ".join(_where(s) for s in sources(gw)) or "none"


def why(gw: GatewayService, op: str) -> str:
    """Why no ready instance serves `op`, and what to configure."""
    service = SERVED_BY.get(op)
    start = f" (e.g. `systemctl enable --now nexus-{service}`)" if service else ""
    declared = [i for i in gw.instances.instances.values() if i.metadata and any(
        ep.get("operation_id") == op for ep in i.metadata.get("endpoints", []))]
    if declared:
        return f"{len(declared)} instance(s) serve it but none is ready: " + "; ".join(
            f"{i.name}: {i.last_error or i.state(time.monotonic())}" for i in declared)
    srcs = sources(gw)
    etcd = next((s for s in srcs if s["source"] == "etcd"), None)
    if etcd:
        where = ",".join(etcd["endpoints"])
        if not etcd["connected"]:
            return (f"etcd at {where} is {'unreachable' if etcd['listed'] else 'not reached yet'} "
                    "(is nexus-etcd.service or your cluster up?)")
        if not etcd["registrations"] and not gw.instances.instances:
            return (f"no service is registered in etcd at {where}: start one{start} with the same "
                    "NEXUS_ETCD_ENDPOINTS (/etc/nexus/common.env)")
    elif not any(s["source"] in ("static", "upstreams") or any(x["enabled"] for x in s.get("services", [])) for s in srcs):
        return ("no backends: no etcd (NEXUS_ETCD_ENDPOINTS is empty), no static backends "
                "(<NAME>_BASE_URL), and no nexusd service is enabled on this host; start one" + start
                + ", or set NEXUS_ETCD_ENDPOINTS in /etc/nexus/common.env (docs/multi-host.md)")
    if not gw.instances.instances:
        return "no instance discovered yet (" + describe(gw) + ")"
    return f"none of the discovered instances serves it; start a service that does{start}"


def unserved(gw: GatewayService) -> dict[str, str]:
    ops = {op for op, _ in KNOWN_ROUTES.values()}
    table = gw.proxy.table
    return {op: why(gw, op) for op in sorted(ops) if not table.by_operation.get(op)}


def report(gw: GatewayService) -> dict[str, Any]:
    return {"discovery": sources(gw), "unserved": unserved(gw)}


async def log_once_ready(gw: GatewayService) -> None:
    """At start: the sources, then (after the first look at them) what no instance serves."""
    log.info("discovery sources: %s", describe(gw))
    await gw.instances.polled_once.wait()
    if gw.etcd is not None:
        try:
            await asyncio.wait_for(gw.etcd.synced.wait(), 10)
        except TimeoutError:
            pass
        await gw.instances.poll_all()  # what etcd listed, polled once
    by_reason: dict[str, list[str]] = {}
    for op, reason in unserved(gw).items():
        by_reason.setdefault(reason, []).append(op)
    for reason, ops in by_reason.items():
        log.warning("no ready instance for %s: %s", ", ".join(ops), reason)


def html_section(report: dict[str, Any]) -> str:
    """The status page's Discovery section (statuspage.py calls this)."""
    e = html.escape
    rows = "".join(f"<li>{e(_where(s))}</li>" for s in report.get("discovery") or []) or \
        "<li>none: no etcd, no static backends, no local units</li>"
    missing = "".join(f"<tr><td>{e(op)}</td><td>{e(reason)}</td></tr>"
                      for op, reason in (report.get("unserved") or {}).items())
    table = (f"<table><thead><tr><th>operation</th><th>why no instance</th></tr></thead>"
             f"<tbody>{missing}</tbody></table>") if missing else "<p class=empty>Every route has an instance.</p>"
    return f"<h2>Discovery</h2>\n<ul>{rows}</ul>\n{table}\n"
