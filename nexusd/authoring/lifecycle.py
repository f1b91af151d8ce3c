"""The checks that need the process or the host: the rendered unit under `systemd-analyze verify`,
and SIGTERM with a request in flight."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nexusd.authoring.contract import Target, concrete
from nexusd.authoring.http import RawExchange
from nexusd.authoring.report import Failed, Skipped, expect


def check_unit(t: Target) -> str:
    from nexusd.units.cli import write_tree
    from nexusd.units.render import render_all

    if t.cls is None:
        raise Skipped(f"{t.name} is not installed here: no unit to render")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise Skipped("systemd-analyze is not installed: unit rendered, not verified")
    nexusd = Path(sys.executable).with_name("nexusd")
    binary = str(nexusd) if nexusd.exists() else shutil.which("nexusd") or sys.executable
    # The instance templates (nexus-<svc>@.service/.socket) are verified with an instance's
    # drop-ins by nexusd's own tests (tests/units/test_render.py); alone, a template socket has no
    # ListenStream= (systemd cannot compute a port from %i) and verify refuses it.
    files = {rel: text for rel, text in render_all(nexusd=binary, services=[t.name]).items()
             if "@" not in rel.split("/")[0]}
    with tempfile.TemporaryDirectory(prefix="nexusd-check-units-") as tmp:
        out = Path(tmp)
        write_tree(out, files)
        for rel in files:  # a drop-in for a unit we do not ship is verified on a stub unit
            head = rel.split("/")[0]
            if "/" in rel and head.endswith(".d") and not (out / head.removesuffix(".d")).exists():
                (out / head.removesuffix(".d")).write_text("[Service]\nExecStart=/bin/true\n")
        units = sorted(str(p) for p in out.iterdir() if p.suffix in (".service", ".socket", ".target"))
        proc = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, cwd=out, timeout=120)
    # verify exits 0 on unknown keys and bad values: any output at all is a failure.
    output = (proc.stdout + proc.stderr).strip()
    expect(proc.returncode == 0 and not output, f"systemd-analyze verify: {output[:500]}")
    return f"systemd-analyze verify: {', '.join(Path(u).name for u in units)}"


def inflight(t: Target) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = t.get(t.obs, "/metrics").body.decode()
    family = next((f for f in text_string_to_metric_families(text) if f.name == "nexus_http_inflight_requests"), None)
    return family.samples[0].value if family and family.samples else 0.0


def check_drain(t: Target) -> str:
    """SIGTERM with a request in flight: STOPPING=1, the request still gets its whole answer,
    exit 0. The request is held in flight by sending its body in two parts around the signal."""
    launched = t.launched
    if launched is None:
        raise Skipped("not started by nexusd check (--url): not stopping it")
    endpoint = next((e for e in (t.metadata or {}).get("endpoints", [])
                     if e["method"] == "POST" and e.get("max_body")), None)
    held = None
    if endpoint is not None:
        body = b'{"nexusd_check": "drain"}'
        idle = inflight(t)  # /metrics may count itself
        held = RawExchange(t.api, "POST", concrete(endpoint["path"]),
                           {**t.headers, "Content-Type": "application/json"}, len(body))
        held.send([body[:10]])
        # SIGTERM only once the handler runs: a connection still in the listen backlog is not in
        # flight, and closing the listener would (rightly) reset it.
        deadline = time.monotonic() + 10
        while inflight(t) <= idle and not held.answered() and time.monotonic() < deadline:
            time.sleep(0.02)
    launched.proc.send_signal(signal.SIGTERM)
    expect(launched.notify.wait_for("STOPPING=1", launched.drain_timeout + 10, launched.alive),
           "no STOPPING=1 on NOTIFY_SOCKET after SIGTERM")
    detail = "STOPPING=1"
    if held is not None and endpoint is not None:
        early = held.answered()
        held.send([body[10:]])
        try:
            answer = held.response()
        except ValueError as exc:
            raise Failed(f"the request in flight at SIGTERM lost its answer: {exc}") from None
        detail += f"; in-flight POST {endpoint['path']} answered {answer.status}" + (
            " (before the drain: nothing held)" if early else " after the drain began")
    code = launched.terminate()
    expect(code == 0, f"exit status {code} after SIGTERM (expected 0):\n{launched.log_tail()}")
    return detail + "; exit 0"
