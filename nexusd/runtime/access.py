"""Access records, one per request, without the `logging` machinery.

Access records are the one log line written per request, so they are on the hot path: through
`logging` (record, filter, formatter, write, flush) they cost ~22 µs a request, a third of what
the runtime adds (bench/runtime_echo). Here each format builds its line directly:
- json / text: lines are buffered and written with one write+flush every FLUSH_DELAY (20 ms):
  under load one syscall carries hundreds of records (a write per record costs ~5 µs); the
  buffer is also flushed when the server closes its AccessLog on stop (and at exit, should the
  process end without stopping), so nothing is lost on a clean shutdown;
- journal: one native datagram per record (journald needs each record as its own datagram).
The records carry the same fields as the `logging` ones (docs/service-contract.md); they never
include headers or bodies.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexusd.runtime.logs import escape_controls, journal_field

# (method, path, status, duration in ms, request id)
AccessSink = Callable[[str, str, int, float, str], None]


FLUSH_DELAY = 0.02  # seconds an access line may wait in the buffer


@dataclass(frozen=True)
class AccessLog:
    """Where a server's access records go: `write` on every request, `close` once on stop.
    Made by `open_access_log` for a process and passed to the server explicitly."""

    write: AccessSink
    close: Callable[[], None]


class _BufferedLines:
    """Collects lines and writes them every FLUSH_DELAY: one syscall for a burst."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.lines: list[str] = []
        self.scheduled = False
        atexit.register(self.flush)  # until close(): a process that exits without stopping

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)

    def add(self, line: str) -> None:
        self.lines.append(line)
        if not self.scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
                self.scheduled = True
            except RuntimeError:  # no loop (e.g. a test calling the sink directly)
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        if self.lines:
            data, self.lines = "".join(self.lines), []
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing better to do
                pass


def _plain(s: str) -> bool:
    """True when s needs no JSON escaping (the usual path or id): skips json.dumps (~1.5 µs)."""
    return s.isprintable() and '"' not in s and "\\" not in s


def json_sink(service: str, stream: Any = None, out: _BufferedLines | None = None) -> AccessSink:
    out = out or _BufferedLines(stream)
    head = f'{{"ts":%.6f,"level":"info","service":{json.dumps(service)},"logger":"nexusd.access","msg":'
    dumps = json.dumps

    def sink(method: str, path: str, status: int, ms: float, rid: str) -> None:
        if _plain(path) and _plain(rid):
            out.add(f'{head % time.time()}"{method} {path} {status} {ms:.1f}ms","request_id":"{rid}",'
                    f'"method":"{method}","path":"{path}","status":{status},"duration_ms":{ms:.3f}}}\n')
            return
        msg = dumps(f"{method} {path} {status} {ms:.1f}ms")
        out.add(f'{head % time.time()}{msg},"request_id":{dumps(rid)},"method":"{method}",'
                f'"path":{dumps(path)},"status":{status},"duration_ms":{ms:.3f}}}\n')

    return sink


def text_sink(service: str, stream: Any = None, out: _BufferedLines | None = None) -> AccessSink:
    out = out or _BufferedLines(stream)

    def sink(method: str, path: str, status: int, ms: float, rid: str) -> None:
        path = escape_controls(path)  # a decoded %0A must not start a forged line
        out.add(f"{time.strftime('%H:%M:%S')} I nexusd.access: {method} {path} {status} {ms:.1f}ms [{rid}]\n")

    return sink


def journal_sink(service: str, address: str, sock: socket.socket | None = None) -> AccessSink:
    sock = sock or socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    fixed = b"".join([
        journal_field("PRIORITY", 6), journal_field("SYSLOG_IDENTIFIER", f"nexus-{service}"),
        journal_field("NEXUS_SERVICE", service), journal_field("LOGGER", "nexusd.access"),
    ])

    def sink(method: str, path: str, status: int, ms: float, rid: str) -> None:
        datagram = b"".join([
            journal_field("MESSAGE", f"{method} {path} {status} {ms:.1f}ms"), fixed,
            journal_field("REQUEST_ID", rid), journal_field("METHOD", method),
            journal_field("PATH", path), journal_field("STATUS", status),
            journal_field("DURATION_MS", f"{ms:.3f}"),
        ])
        try:
            sock.sendto(datagram, address)
        except OSError:  # journal gone or full: fall back to stderr rather than lose it
            sys.stderr.write(f"{method} {path} {status} {ms:.1f}ms [{rid}]\n")

    return sink


def open_access_log(service: str, fmt: str, journal_address: str) -> AccessLog:
    """The access log of a process logging in `fmt` (json, text or journal; see logs.py)."""
    if fmt == "journal":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return AccessLog(journal_sink(service, journal_address, sock), sock.close)
    out = _BufferedLines()
    return AccessLog((text_sink if fmt == "text" else json_sink)(service, out=out), out.close)
