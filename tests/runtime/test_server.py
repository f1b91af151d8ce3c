"""`nexusd run template` as a real subprocess behaving as a systemd daemon: sd_notify sequence,
readiness gating READY=1, start timeout, watchdog, SIGTERM drain, SIGHUP reload, socket
activation with the real systemd-socket-activate, and configuration errors (exit 78)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.net import free_port, wait_for
from tests.runtime.support import NotifyListener, listening_tcp_ports, spawn


@pytest.fixture(params=["path", "abstract"])
def notify(request, tmp_path):
    sock = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield sock
    sock.close()


@pytest.fixture
def notify_path(tmp_path):
    sock = NotifyListener(tmp_path)
    yield sock
    sock.close()


def http_get(url: str, timeout: float = 30, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_status_while_loading_then_ready_once_checks_pass(tmp_path, notify):
    env = {"NEXUS_TEMPLATE_WARMUP": "3"}
    with spawn(tmp_path, env, notify=notify) as svc:
        loading = notify.wait(lambda m: (m.get("STATUS") or "").startswith("loading 1/"), what="loading")
        assert loading.get("EXTEND_TIMEOUT_USEC") == "30000000"  # asks systemd for more start time
        assert svc.get("/readyz")[0] == 503  # the check fails while loading...
        ready = notify.wait_key("READY=1")
        assert svc.get("/readyz")[0] == 200  # ...and READY=1 comes only once it passes
        assert ready.get("STATUS") == f"serving on http://127.0.0.1:{svc.port}"
        statuses = [m.get("STATUS") for m in notify.messages[:notify.index("READY=1")]]
        assert statuses[0] == "starting" and "loading 12/12" in statuses
        assert svc.stop() == 0


def test_start_timeout_sends_ready_anyway_and_keeps_readyz_503(tmp_path, notify_path):
    env = {"NEXUS_TEMPLATE_WARMUP": "600",
           "NEXUS_TEMPLATE_START_TIMEOUT": "1"}
    with spawn(tmp_path, env, notify=notify_path) as svc:
        ready = notify_path.wait_key("READY=1")
        assert ready.get("STATUS") == "not ready after 1s: loaded: still loading"
        status, body = svc.get("/readyz")
        assert status == 503 and body["status"] == "not_ready"
        assert body["warnings"] == ["not ready after 1s: loaded: still loading"]
        assert svc.get("/health")[0] == 200


def test_watchdog_pings_at_half_the_interval(tmp_path, notify_path):
    env = {"WATCHDOG_USEC": "1000000"}
    # WATCHDOG_PID names the service's own pid: sh sets it to $$, then execs the service.
    with spawn(tmp_path, env, notify=notify_path, prefix=["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"]):
        notify_path.wait_key("READY=1")
        pings = [notify_path.wait_key("WATCHDOG=1").at for _ in range(5)]
    gap = statistics.median(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert 0.35 < gap < 1.0, gap  # WATCHDOG_USEC/2 = 0.5 s, well inside the 1 s timeout


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(tmp_path, notify_path):
    env = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    with spawn(tmp_path, env, notify=notify_path) as svc:
        notify_path.wait_key("READY=1")
        # Three intervals (0.2 s each) of silence, then a reload proves the socket still works.
        deadline = time.monotonic() + 0.6
        while (left := deadline - time.monotonic()) > 0:
            notify_path.receive(left)
        svc.proc.send_signal(signal.SIGHUP)
        notify_path.wait_key("RELOADING=1")
    assert not any("WATCHDOG=1" in m for m in notify_path.messages)


def test_blocked_event_loop_stops_the_watchdog(tmp_path, notify_path):
    env = {"WATCHDOG_USEC": "400000"}
    with spawn(tmp_path, env, service="probe", notify=notify_path) as svc, ThreadPoolExecutor(1) as pool:
        notify_path.wait_key("READY=1")
        notify_path.wait_key("WATCHDOG=1")
        blocked = pool.submit(http_get, svc.url + "/_test/block?seconds=2", 30, "POST")
        deadline = time.monotonic() + 30
        while not blocked.done() and time.monotonic() < deadline:  # receive while it blocks
            notify_path.receive(0.05)
        assert blocked.result(timeout=1)[0] == 200
        for _ in range(2):  # pings resume once the loop is free
            notify_path.wait_key("WATCHDOG=1", timeout=10)
    pings = [m.at for m in notify_path.messages if "WATCHDOG=1" in m]
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) >= 1.5  # interval is 0.2 s


def test_sigterm_drains_a_slow_request_and_exits_0(tmp_path, notify):
    with spawn(tmp_path, {}, service="probe", notify=notify) as svc, ThreadPoolExecutor(1) as pool:
        notify.wait_key("READY=1")
        slow = pool.submit(http_get, svc.url + "/_test/slow?seconds=2")

        def inflight() -> float:
            text = http_get(svc.url + "/metrics")[1]
            fam = {f.name: f for f in text_string_to_metric_families(text)}
            return fam["nexus_http_inflight_requests"].samples[0].value

        wait_for(lambda: inflight() >= 2, timeout=30, what="slow request in flight")
        svc.proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_key("STOPPING=1")
        assert stopping.get("STATUS") == "draining"
        status, body = slow.result(timeout=30)
        assert status == 200 and json.loads(body) == {"slept": 2.0}
        assert svc.proc.wait(30) == 0
        assert not slow.exception()


def test_sighup_reloads_between_reloading_and_ready(tmp_path, notify_path):
    with spawn(tmp_path, {}, notify=notify_path) as svc:
        notify_path.wait_key("READY=1")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        svc.proc.send_signal(signal.SIGHUP)
        reloading = notify_path.wait_key("RELOADING=1")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(reloading.get("MONOTONIC_USEC")) <= after
        ready = notify_path.wait_key("READY=1")
        assert ready.at >= reloading.at and svc.get("/readyz")[0] == 200
        assert svc.stop() == 0


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs Debian's systemd package")
def test_socket_activation_serves_on_the_inherited_socket(tmp_path):
    port, unused = free_port(), free_port()
    activate = [shutil.which("systemd-socket-activate"), "-l", f"127.0.0.1:{port}", "--fdname=api"]
    env: dict[str, str] = {}
    # systemd-socket-activate passes only the variables named with -E to the service.
    for var in ("NEXUS_TEMPLATE_PORT", "NEXUS_LOG_FORMAT", "PYTHONUNBUFFERED", "PATH", "PYTHONPATH", "HOME"):
        activate += ["-E", var]
    with spawn(tmp_path, env, port=unused, prefix=activate) as svc:
        # It listens first, then launches the service on the first connection (served too).
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz", timeout=60)[0] == 200,
                 timeout=60, what="ready on the activated socket")
        listening = listening_tcp_ports(svc.proc.pid)
        assert listening == {port: 3}, listening  # the inherited fd 3, nothing bound itself
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", unused), timeout=5).close()
        assert "inherited socket" in svc.logs()
        assert svc.stop() == 0


def test_invalid_setting_exits_78_naming_the_variable(tmp_path):
    with spawn(tmp_path, {}, port="abc") as svc:  # type: ignore[arg-type]
        assert svc.proc.wait(30) == 78
        lines = svc.logs().strip().splitlines()
    assert len(lines) == 1 and "NEXUS_TEMPLATE_PORT" in lines[0] and "'abc'" in lines[0]


def test_invalid_setting_exits_before_binding(tmp_path):
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # EADDRINUSE, not 78, had it tried to bind
        with spawn(tmp_path, {"NEXUS_TEMPLATE_WARMUP": "-5"}, port=port) as svc:
            assert svc.proc.wait(30) == 78
            lines = svc.logs().strip().splitlines()
    assert len(lines) == 1 and "NEXUS_TEMPLATE_WARMUP" in lines[0]


async def test_a_failing_stop_leaves_no_other_cleanup_undone(caplog):
    """service.stop() raises: the background tasks, the shared HTTP client and the access log's
    flush still happen (each cleanup isolated, the failure logged), and the server says stopped."""
    import io
    import logging

    import aiohttp

    from nexusd.runtime.access import AccessLog, _BufferedLines, json_sink
    from nexusd.runtime.server import Server
    from nexusd.runtime.settings import SharedSettings
    from tests.runtime.probe import ProbeService

    class FailingStop(ProbeService):
        async def stop(self) -> None:
            await super().stop()
            raise RuntimeError("stop failed on purpose")

    caplog.set_level(logging.INFO)  # access records are info records (NEXUS_LOG_LEVEL)
    out, closed = io.StringIO(), []
    lines = _BufferedLines(out)

    def close_access() -> None:
        lines.close()
        closed.append(True)

    access = AccessLog(json_sink("probe", out=lines), close_access)
    server = Server(FailingStop, FailingStop.Settings(port=0), SharedSettings(), access)
    server.check_limits()
    await server.bind()
    await server.start()
    await server.wait_ready()
    client = server.runtime.http  # the shared client exists
    async with aiohttp.ClientSession() as http, http.get(server.runtime.base_url + "/v1/public") as r:
        assert r.status == 200
    await server.stop()
    assert client.closed and closed == [True]
    assert '"path":"/v1/public"' in out.getvalue()  # the buffered access record was written
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "nexusd.server"]
    assert any("the service's stop() failed" in m for m in messages) and messages[-1] == "stopped"
