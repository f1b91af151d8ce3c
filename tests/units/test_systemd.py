"""The rendered units under a real systemd (the host's, booted as PID 1 in a sandbox: sandbox.sh).

nexusd is pip-installed (with its dependencies) into a venv under /srv, `nexusd units install`
runs inside the sandbox, and the template service is driven with systemctl and journalctl.
The sandbox shares the host network: the template gets a free port through its env file (and the
socket unit through a drop-in). The tests run in file order and share one sandbox.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from nexusd.runtime.cgroup import parse_bytes, parse_cpu
from nexusd.services.template import TemplateService
from tests.helpers.net import free_port, wait_for
from tests.units.sandbox import Sandbox, make_venv, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"real systemd: {unavailable()}")

UNIT = "nexus-template.service"
SOCKET = "nexus-template.socket"
WATCHDOG_SEC = 2  # the drop-in shortens the rendered 30 s so the watchdog test is quick


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    return make_venv(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def box(tmp_path_factory, venv, port):
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox")).start()
    try:
        # The admin's env file exists before install: install must keep it.
        sandbox.write("/etc/nexus/template.env", f"NEXUS_TEMPLATE_PORT={port}\nNEXUS_TEMPLATE_WARMUP=1.5\n", 0o600)
        # Test-only settings, in a drop-in as an operator would: a short watchdog, and no start
        # rate limit (the tests restart often).
        sandbox.write(f"/etc/systemd/system/{UNIT}.d/test.conf",
                      f"[Unit]\nStartLimitIntervalSec=0\n[Service]\nWatchdogSec={WATCHDOG_SEC}\n")
        sandbox.write(f"/etc/systemd/system/{SOCKET}.d/test.conf",
                      f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
        sandbox.installed = sandbox.run(str(venv / "bin/nexusd"), "units", "install").stdout
        yield sandbox
    finally:
        sandbox.stop()


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def main_pid(box: Sandbox) -> int:
    return int(box.show(UNIT, "MainPID")["MainPID"])


def test_install_writes_units_and_keeps_the_admins_env_file(box, venv, port):
    assert "kept    /etc/nexus/template.env" in box.installed
    assert (box.root / "etc/nexus/template.env").read_text().startswith(f"NEXUS_TEMPLATE_PORT={port}\n")
    unit = (box.root / "etc/systemd/system" / UNIT).read_text()
    assert f"ExecStart={venv}/bin/nexusd run template" in unit  # install passes the real binary
    assert box.run("id", "-un", "nexus").stdout.strip() == "nexus"  # sysusers.d ran
    assert "ran     systemctl daemon-reload" in box.installed
    assert box.show(UNIT, "LoadState")["LoadState"] == "loaded"


def test_start_blocks_until_ready(box, port):
    started = time.monotonic()
    box.run("systemctl", "start", UNIT)
    took = time.monotonic() - started
    # No polling: when `systemctl start` returns, READY=1 was sent, so /readyz already passes,
    # although the service spent 1.5 s loading (NEXUS_TEMPLATE_WARMUP) with /readyz at 503.
    assert get(port, "/readyz")[0] == 200
    props = box.show(UNIT, "ActiveState", "SubState", "StatusText", "Type", "NotifyAccess")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["StatusText"].startswith("serving on http://127.0.0.1:")
    assert took >= 1.5, f"systemctl start returned after {took:.2f}s, before the warmup ended"


def test_limits_match_resources_and_metadata(box, port):
    declared = TemplateService.default_resources
    props = box.show(UNIT, "MemoryMax", "CPUQuotaPerSecUSec")
    assert int(props["MemoryMax"]) == parse_bytes(declared.memory)
    quota = props["CPUQuotaPerSecUSec"]  # e.g. "1s" or "500ms"
    usec = float(quota[:-2]) * 1000 if quota.endswith("ms") else float(quota[:-1]) * 1_000_000
    assert usec == parse_cpu(declared.cpu) * 1_000_000
    status, doc = get(port, "/v1/metadata")
    assert status == 200
    assert doc["resources"]["memory"] == declared.memory and doc["resources"]["cpu"] == declared.cpu
    limits = doc["limits"]  # read by the service itself from its cgroup (v1 memory controller here)
    assert (limits["status"], limits["memory"], limits["cpu"]) == ("matching", declared.memory, declared.cpu), limits
    assert limits["cgroup"] == f"/system.slice/{UNIT}"


def test_reload_reloads_and_keeps_serving(box, port):
    pid = main_pid(box)
    before = box.journal(UNIT).count("reloading")
    box.run("systemctl", "reload", UNIT)
    wait_for(lambda: box.journal(UNIT).count("reloading") == before + 1, timeout=10, what="reload logged")
    assert main_pid(box) == pid  # same process: reloaded, not restarted
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
    assert get(port, "/readyz")[0] == 200


def test_journal_finds_a_request_by_its_id(box, port):
    rid = f"units-test-{uuid.uuid4().hex}"
    assert get(port, "/v1/metadata", {"X-Request-ID": rid})[0] == 200
    records = wait_for(lambda: box.run("journalctl", "--no-pager", "-o", "json", "-u", UNIT,
                                       f"REQUEST_ID={rid}").stdout.strip(), timeout=10, what="journal record")
    docs = [json.loads(line) for line in records.splitlines()]
    access = [d for d in docs if d.get("PATH") == "/v1/metadata"]
    assert len(access) == 1, docs
    assert access[0]["STATUS"] == "200" and access[0]["NEXUS_SERVICE"] == "template"
    assert access[0]["_SYSTEMD_UNIT"] == UNIT


def test_socket_activated_restart_refuses_and_loses_nothing(box, port):
    box.run("systemctl", "stop", UNIT)
    box.run("systemctl", "start", SOCKET, UNIT)
    assert "inherited socket" in box.journal(UNIT, "-n", "20")
    results: list[tuple[str, str]] = []  # (instance id, "") or ("", error)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:  # a new connection per request: a refused connect would show here
                status, doc = get(port, "/v1/metadata", timeout=30)
                results.append((doc["service"]["instance_id"], "") if status == 200 else ("", f"HTTP {status}"))
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none hidden
                results.append(("", repr(exc)))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            seen = len(results)
            wait_for(lambda seen=seen: len(results) > seen + 20, timeout=30, what="requests flowing")
            box.run("systemctl", "restart", UNIT)
        seen = len(results)
        wait_for(lambda: len(results) > seen + 20, timeout=30, what="requests after the last restart")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    errors = [e for _, e in results if e]
    assert errors == [], f"{len(errors)} of {len(results)} failed: {errors[:5]}"
    instances = {i for i, _ in results}
    assert len(instances) == 4, "requests must span the first process and three restarts"


def test_hung_event_loop_ends_in_watchdog_and_restart(box, port):
    pid = main_pid(box)
    restarts = int(box.show(UNIT, "NRestarts")["NRestarts"])
    # A hung process (stopped) sends no WATCHDOG=1 any more. That a blocked event loop alone
    # stops the pings is tested in tests/runtime/test_server.py (the package ships no route
    # that blocks it).
    box.run("kill", "-STOP", str(pid))
    wait_for(lambda: "Failed with result 'watchdog'" in box.journal(UNIT, "-n", "50"),
             timeout=WATCHDOG_SEC * 10, what="watchdog failure")
    assert "Watchdog timeout" in box.journal(UNIT, "-n", "50")
    wait_for(lambda: int(box.show(UNIT, "NRestarts")["NRestarts"]) == restarts + 1, timeout=30,
             what="automatic restart")
    wait_for(lambda: box.show(UNIT, "ActiveState")["ActiveState"] == "active", timeout=30, what="active again")
    assert main_pid(box) != pid
    assert get(port, "/readyz")[0] == 200
