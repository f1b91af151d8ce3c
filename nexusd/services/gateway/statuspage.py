"""The status page at 8801 `/`: server-rendered HTML from the same report as `/v1/metadata`
(instances, readiness, routes, models) plus the most recent warnings and errors. No build step,
no JavaScript: it refreshes itself with a meta tag."""

from __future__ import annotations

import collections
import html
import logging
import time
from typing import Any

from aiohttp import web

from nexusd.services.gateway.diagnosis import html_section as discovery_html

REFRESH_SECONDS = 5
_STATE_COLORS = {"ready": "#1a7f37", "not_ready": "#bf8700", "ejected": "#cf222e",
                 "unknown": "#6e7781", "ignored": "#6e7781", "invalid": "#cf222e",
                 "refused": "#cf222e"}


class RecentErrors(logging.Handler):
    """Keeps the last warnings and errors of this process for the page (never request bodies:
    the runtime's log records carry none)."""

    def __init__(self, size: int = 50) -> None:
        super().__init__(level=logging.WARNING)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.appendleft({
            "time": time.strftime("%H:%M:%S", time.localtime(record.created)),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()[:300],
            "request_id": getattr(record, "request_id", None),
        })


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _etcd(state: dict[str, Any] | None) -> str:
    if not state:
        return "off (see Discovery)"
    return f"connected, revision {state.get('revision')}" if state.get("connected") else "disconnected"


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(report: dict[str, Any], errors: list[dict[str, Any]], version: str) -> str:
    instances = sorted(report.get("instances", []), key=lambda i: (i.get("service") or "", i["base_url"]))
    services = sorted({i.get("service") or "?" for i in instances})
    inst_rows = []
    for i in instances:
        state = i.get("state", "unknown")
        badge = f'<span class=badge style="background:{_STATE_COLORS.get(state, "#6e7781")}">{_e(state)}</span>'
        limits = i.get("limits") or {}
        resources = i.get("resources") or {}
        inst_rows.append([
            f"<b>{_e(i.get('service'))}</b>", _e(i.get("instance_id")), _e(i["base_url"]), badge,
            f"{_e(i.get('outstanding'))} / {_e(i.get('max_inflight'))}", _e(i.get("served")),
            _e(", ".join(i.get("models") or [])),
            _e(f"cpu {resources.get('cpu') or '-'}, mem {resources.get('memory') or '-'}"),
            _e(f"cpu {limits.get('cpu') or '-'}, mem {limits.get('memory') or '-'} ({limits.get('status', '?')})"),
            _e(", ".join(i.get("sources") or [])), _e(i.get("last_error")),
        ])
    route_rows = [[_e(r["method"]), f"<code>{_e(r['path'])}</code>", _e(r["operation_id"]),
                   "yes" if r.get("streaming") else ""] for r in report.get("routes", [])]
    model_rows = [[_e(m["operation_id"]), _e(m["model"]), _e(m.get("model_id")), _e(", ".join(m["instances"]))]
                  for m in report.get("models", [])]
    error_rows = [[_e(e["time"]), _e(e["level"]), _e(e["logger"]), _e(e["message"]), _e(e.get("request_id"))]
                  for e in errors]
    ready = sum(1 for i in instances if i.get("state") == "ready")
    etcd = report.get("etcd")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta http-equiv=refresh content="{REFRESH_SECONDS}">
<title>nexusd status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1f2328}}
h1{{font-size:1.4rem;margin:0 0 .2rem}} h2{{font-size:1.1rem;margin:1.4rem 0 .4rem}}
table{{border-collapse:collapse;width:100%}} th,td{{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}}
th{{background:#f6f8fa}} .badge{{color:#fff;border-radius:1rem;padding:.05rem .5rem;font-size:12px}}
.empty{{color:#6e7781}} code{{font-size:13px}} .summary{{color:#57606a}}
</style></head><body>
<h1>nexusd gateway</h1>
<p class=summary>version {_e(version)} · services: {_e(", ".join(services) or "none")} · {ready}/{len(instances)} instances ready
 · etcd: {_e(_etcd(etcd))}
 · allowed backends: {_e(report.get("allowed_backends", "unrestricted"))} · refreshes every {REFRESH_SECONDS}s · {_e(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>
{discovery_html(report)}<h2>Instances</h2>
{_table(["service", "instance", "base URL", "state", "in flight", "served", "models", "declared", "cgroup limits", "sources", "last error"], inst_rows, "No instances discovered yet.")}
<h2>Routes</h2>
{_table(["method", "path", "operation", "streaming"], route_rows, "No routes yet.")}
<h2>Models</h2>
{_table(["operation", "model or alias", "model id", "instances"], model_rows, "No models yet.")}
<h2>Recent errors</h2>
{_table(["time", "level", "logger", "message", "request id"], error_rows, "No warnings or errors.")}
</body></html>
"""


def status_handler(report, errors: RecentErrors, version: str):
    async def status_page(request: web.Request) -> web.Response:
        return web.Response(text=render(report(), list(errors.records), version), content_type="text/html")

    return status_page
