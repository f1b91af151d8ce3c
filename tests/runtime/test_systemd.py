"""sd_notify and LISTEN_FDS parsing, against a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import os
import time

import pytest

from nexusd.runtime import systemd
from tests.runtime.support import NotifyListener


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    sock = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield sock
    sock.close()


def test_notifier_sends_fields(listener):
    notifier = systemd.Notifier(listener.address)
    assert notifier.enabled
    assert notifier.status("loading 1/3")
    assert notifier.ready("serving")
    assert notifier.notify("EXTEND_TIMEOUT_USEC=2500000")  # what Runtime.progress() sends
    notifier.stopping()
    assert listener.receive(5).fields == [("STATUS", "loading 1/3")]
    assert listener.receive(5).fields == [("READY", "1"), ("STATUS", "serving")]
    assert listener.receive(5).fields == [("EXTEND_TIMEOUT_USEC", "2500000")]
    assert listener.receive(5).fields == [("STOPPING", "1"), ("STATUS", "draining")]
    notifier.close()


def test_reloading_carries_monotonic_usec(listener):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.Notifier(listener.address).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = listener.receive(5)
    assert msg.get("RELOADING") == "1"
    assert before <= int(msg.get("MONOTONIC_USEC")) <= after


def test_notifier_is_a_silent_no_op_outside_systemd(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = systemd.Notifier()
    assert not notifier.enabled and notifier.ready() is False and notifier.watchdog() is False
    gone = systemd.Notifier(str(tmp_path / "no-such-socket"))  # systemd went away: never raises
    assert gone.enabled and gone.ready() is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    (None, None, None),
    ("0", None, None),
    ("bogus", None, None),
    ("1000000", None, 0.5),
    ("1000000", "self", 0.5),
    ("1000000", "1", None),  # meant for another process
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for var, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, str(os.getpid()) if value == "self" else value)
    assert systemd.watchdog_interval() == expected


def test_listen_fds_for_another_pid_are_ignored_and_unset(monkeypatch):
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "api")
    assert systemd.listen_fds() == {}
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ


def test_no_listen_fds(monkeypatch):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert systemd.listen_fds() == {}
