"""`nexusd status [--gateway URL] [--json]`: services, instances, readiness, models, and
declared resources vs cgroup limits, read from the gateway's observability port (8801)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show services, instances and readiness from the gateway")
    p.add_argument("--gateway", default="http://127.0.0.1:8801",
                   help="the gateway's observability URL (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_status)


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
    return {"services": services, "routes": len(report.get("routes", [])), "etcd": report.get("etcd")}


def _fmt(d: dict[str, Any]) -> str:
    return f"cpu={d.get('cpu') or '-'} mem={d.get('memory') or '-'}"


def run_status(args: argparse.Namespace) -> int:
    try:
        report = fetch_report(args.gateway)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"nexusd status: cannot read {args.gateway}/v1/metadata: {exc}", file=sys.stderr)
        return 1
    summary = summarize(report)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if not summary["services"]:
        print("no services discovered")
    for service, instances in sorted(summary["services"].items()):
        print(service)
        for i in instances:
            limits = i["limits"]
            print(f"  {i['state']:<9} {i['instance_id'] or '-'}  {i['base_url']}")
            print(f"            models: {', '.join(i['models']) or '-'}")
            print(f"            declared {_fmt(i['resources'])}  cgroup {_fmt(limits)} ({limits.get('status', '?')})")
    not_ready = [i for v in summary["services"].values() for i in v if i["state"] != "ready"]
    return 0 if not not_ready else 3
