"""Free ports and bounded waiting: the two things every integration test needs."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


def _ports_outside_the_ephemeral_range() -> range:
    """Ports the kernel never picks as an outgoing connection's local port; empty if too few."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - 15000 >= 2000:
        return range(15000, low)
    if 65535 - high >= 2000:
        return range(high + 1, 65536)
    return range(0)


# A port bound to 0 and released is an ephemeral one: any outgoing connection in the meantime may
# take it as its local port before the server we start binds it (then, say, etcd exits with
# "address already in use": the likely cause of one CI failure). So ports come from outside that
# range where the machine leaves room, and none is handed out twice in one process.
_PORTS = _ports_outside_the_ephemeral_range()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range when there is room."""
    for _ in range(1000 if _PORTS else 0):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room outside it: any free port
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> object:
    """Poll until predicate() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


async def async_wait_for(predicate: Callable[[], Awaitable[object]], timeout: float = 10.0,
                         interval: float = 0.05, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = await predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001
            last_exc = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))
