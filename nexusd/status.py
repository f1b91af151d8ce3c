"""`nexusd status [--gateway URL] [--json]`: services, instances, readiness, models, and
declared resources vs cgroup limits, read from the gateway's observability port (8801), plus
where the gateway looks for backends and why a route has none.

Without --gateway: the gateway installed on this host, where its `obs` socket unit listens (so a
port moved with a drop-in is followed), else http://127.0.0.1:8801."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show services, instances and readiness from the gateway")
    p.add_argument("--gateway", default=None,
                   help="the gateway's observability URL (default: this host's nexus-gateway, else "
                        f"{DEFAULT_GATEWAY})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_status)


DEFAULT_GATEWAY = "http://127.0.0.1:8801"


def local_gateway() -> str:
    from nexusd.units.local import scan

    gateway = next((s for s in scan() if s.name == "gateway"), None)
    return (gateway.urls.get("obs") if gateway else None) or DEFAULT_GATEWAY


def fetch_report(gateway: str, timeout: float = 5) -> dict[str, Any]:
    with urllib.request.urlopen(gateway.rstrip("/") + "/v1/metadata", timeout=timeout) as r:
        doc = json.load(r)
    return doc.get("extra", {})


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, list[dict[str, Any]]] = {}
    for inst in report.get("instances", []):
        services.setdefault(inst.get("service") or "?", []).append({
            "instance_id": inst.get("instance_id"), "base_url": inst.get("base_url"),
            "state": inst.get("state"), "models": inst.get("models") or [],
            "resources": inst.get("resources") or {}, "limits": inst.get("limits") or {},
        })
    return {"services": services, "routes": len(report.get("routes", [])), "etcd": report.get("etcd"),
            "discovery": report.get("discovery", []), "unserved": report.get("unserved", {})}


def describe_source(src: dict[str, Any]) -> str:
    if src.get("source") == "etcd":
        state = "connected" if src.get("connected") else \
            "UNREACHABLE" if src.get("listed", True) else "connecting"
        return f"etcd {','.join(src.get('endpoints', []))} ({state}, {src.get('registrations', 0)} registrations)"
    if src.get("source") == "units":
        on = [f"{s['service']} {s['url']}" for s in src.get("services", []) if s.get("enabled") and s.get("url")]
        return f"nexusd units enabled on this host ({src.get('unit_dir')}): {', '.join(on) or 'none'}"
    if src.get("source") == "static":
        return "static backends: " + ", ".join(f"{k}={v}" for k, v in src.get("backends", {}).items())
    if src.get("source") == "upstreams":
        return f"plain upstreams ({src.get('file')}): " + ", ".join(
            f"{k}={v}" for k, v in src.get("upstreams", {}).items())
    return str(src)  # a source this version does not know


def _fmt(d: dict[str, Any]) -> str:
    return f"cpu={d.get('cpu') or '-'} mem={d.get('memory') or '-'}"


def run_status(args: argparse.Namespace) -> int:
    gateway = args.gateway or local_gateway()
    try:
        report = fetch_report(gateway)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"nexusd status: cannot read {gateway}/v1/metadata: {exc}", file=sys.stderr)
        return 1
    summary = summarize(report)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"gateway {gateway}")
    for src in summary["discovery"] or [{"source": "none"}]:
        print("discovery: " + (describe_source(src) if src.get("source") != "none" else
                               "none (no etcd, no static backends, no local units)"))
    if not summary["services"]:
        print("no services discovered")
    for service, instances in sorted(summary["services"].items()):
        print(service)
        for i in instances:
            limits = i["limits"]
            print(f"  {i['state']:<9} {i['instance_id'] or '-'}  {i['base_url']}")
            print(f"            models: {', '.join(i['models']) or '-'}")
            print(f"            declared {_fmt(i['resources'])}  cgroup {_fmt(limits)} ({limits.get('status', '?')})")
    for op, reason in sorted(summary["unserved"].items()):
        print(f"no instance for {op}: {reason}")
    not_ready = [i for v in summary["services"].values() for i in v if i["state"] != "ready"]
    return 0 if not not_ready else 3
