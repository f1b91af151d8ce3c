"""Logs: native journald records (to a datagram socket the test binds), JSON lines on stderr,
the access-log switch, and no secret or body in any record."""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.request

from nexusd.runtime.logs import JournalHandler, _ContextFilter, request_id_var, stderr_is_journal
from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.runtime.support import parse_journal_record

TOKEN = "tok-SECRET-7f3a9c"
BODY_MARK = "BODY-SECRET-51d2"


def post_echo(url: str, headers: dict[str, str], message: str = BODY_MARK) -> int:
    req = urllib.request.Request(url + "/v1/echo", data=json.dumps({"message": message}).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class JournalSink:
    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.raw: list[bytes] = []

    def records(self) -> list[dict[str, str]]:
        while True:
            try:
                self.raw.append(self.sock.recv(1 << 20))
            except TimeoutError:
                break
        return [parse_journal_record(r) for r in self.raw]


def test_journal_records_carry_fields_and_no_secrets(tmp_path):
    sink = JournalSink(tmp_path / "journal.sock")
    env = {"NEXUS_LOG_FORMAT": "journal", "NEXUS_JOURNAL_SOCKET": str(tmp_path / "journal.sock"),
           "NEXUS_INTERNAL_TOKEN": TOKEN}
    with run_service("template", tmp_path, env=env) as svc:
        assert post_echo(svc.url, {"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "journal-rid-1"}) == 200
        assert post_echo(svc.url, {"Authorization": "Bearer wrong-" + TOKEN, "X-Request-ID": "journal-rid-2"}) == 401

        def access(rid: str) -> dict[str, str] | None:
            return next((r for r in sink.records() if r.get("REQUEST_ID") == rid and "STATUS" in r), None)

        ok = wait_for(lambda: access("journal-rid-1"), timeout=10, what="access record")
        denied = wait_for(lambda: access("journal-rid-2"), timeout=10, what="401 access record")
        assert svc.stop() == 0
    records = sink.records()
    sink.sock.close()

    assert ok["PRIORITY"] == "6" and ok["NEXUS_SERVICE"] == "template"
    assert ok["SYSLOG_IDENTIFIER"] == "nexus-template"
    assert (ok["METHOD"], ok["PATH"], ok["STATUS"]) == ("POST", "/v1/echo", "200")
    assert float(ok["DURATION_MS"]) >= 0
    assert ok["MESSAGE"].startswith("POST /v1/echo 200 ")
    assert denied["STATUS"] == "401"
    assert any(r["MESSAGE"].startswith("ready: serving on") for r in records)  # lifecycle records too
    assert any(r["MESSAGE"] == "stopped" for r in records)
    for raw in sink.raw:  # nothing of the key, the Authorization header or the body, anywhere
        assert TOKEN.encode() not in raw and BODY_MARK.encode() not in raw and b"Bearer" not in raw


def test_json_lines_on_stderr_by_default(tmp_path):
    with run_service("template", tmp_path, env={"NEXUS_INTERNAL_TOKEN": TOKEN}) as svc:
        assert post_echo(svc.url, {"X-Nexus-Internal-Token": TOKEN, "X-Request-ID": "json-rid-1"}) == 200
        svc.stop()
        lines = [json.loads(line) for line in svc.logs().splitlines()]
    access = [rec for rec in lines if rec.get("request_id") == "json-rid-1"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/echo"
    assert access[0]["service"] == "template" and access[0]["level"] == "info"
    assert TOKEN not in svc.logs() and BODY_MARK not in svc.logs()


def test_access_log_off(tmp_path):
    with run_service("template", tmp_path, env={"NEXUS_ACCESS_LOG": "off"}) as svc:
        assert post_echo(svc.url, {"X-Request-ID": "quiet-1"}) == 200
        assert svc.stop() == 0
        lines = [json.loads(line) for line in svc.logs().splitlines()]
    assert any(rec["msg"] == "stopped" for rec in lines)
    assert not any("status" in rec for rec in lines)


def test_multiline_message_uses_the_binary_safe_field_form(tmp_path):
    sink = JournalSink(tmp_path / "j.sock")
    handler = JournalHandler("probe", str(tmp_path / "j.sock"))
    handler.addFilter(_ContextFilter("probe"))
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "line one\nline two", None, None)
    token = request_id_var.set("rid-9")
    try:
        assert handler.filter(record)
        handler.emit(record)
    finally:
        request_id_var.reset(token)
        handler.close()
    (rec,) = sink.records()
    sink.sock.close()
    assert b"MESSAGE\n" in sink.raw[0]
    assert rec["MESSAGE"] == "line one\nline two" and rec["PRIORITY"] == "3"
    assert rec["REQUEST_ID"] == "rid-9" and rec["NEXUS_SERVICE"] == "probe"


def test_stderr_is_journal_matches_device_and_inode(tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w") as fake_stderr:
        monkeypatch.setattr("sys.stderr", fake_stderr)
        st = os.fstat(fake_stderr.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal()


def _access_paths(logs: str) -> set[str]:
    return {rec["path"] for rec in (json.loads(line) for line in logs.splitlines())
            if rec.get("logger") == "nexusd.access"}


def _probe_and_echo(svc) -> None:
    for path in ("/health", "/readyz", "/metrics"):
        assert svc.get(path)[0] == 200
    assert post_echo(svc.url, {"X-Request-ID": "probe-log-1"}) == 200


def test_probes_are_not_access_logged_by_default_but_still_counted(tmp_path):
    """Readiness polls (the gateway's, every 2 s) must not flood the journal (issue 11 item 8)."""
    with run_service("template", tmp_path) as svc:
        _probe_and_echo(svc)
        metrics = svc.get("/metrics")[1]
        assert svc.stop() == 0
        paths = _access_paths(svc.logs())
    assert paths == {"/v1/echo"}
    assert 'route="/readyz",status="200"' in metrics and 'route="/health",status="200"' in metrics


def test_probe_access_records_can_be_turned_back_on(tmp_path):
    with run_service("template", tmp_path, env={"NEXUS_ACCESS_LOG_PROBES": "1"}) as svc:
        _probe_and_echo(svc)
        assert svc.stop() == 0
        paths = _access_paths(svc.logs())
    assert {"/health", "/readyz", "/metrics", "/v1/echo"} <= paths
