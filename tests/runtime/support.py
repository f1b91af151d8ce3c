"""Helpers for the runtime tests: a real sd_notify receiver, a journald-native record parser,
listening-socket inspection through /proc, and an in-process server for fast HTTP tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nexusd.runtime.server import Server
from nexusd.runtime.service import Service
from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import free_port
from tests.helpers.proc import REPO, ServiceProcess, service_env


@dataclass
class Message:
    at: float
    fields: list[tuple[str, str]]

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.fields if k == key), None)

    def __contains__(self, item: str) -> bool:
        """`"READY=1" in msg` matches a field exactly; `"STATUS" in msg` matches the key."""
        if "=" in item:
            return tuple(item.split("=", 1)) in self.fields
        return any(k == item for k, _ in self.fields)


@dataclass
class NotifyListener:
    """The systemd side of sd_notify: a datagram socket bound by the test, by path or abstract."""

    tmp_path: Path
    abstract: bool = False
    messages: list[Message] = field(default_factory=list)
    service: ServiceProcess | None = None  # when set, waits fail at once if it has exited

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.abstract:
            name = f"nexus-test-notify-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = self.tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)

    def receive(self, timeout: float) -> Message | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = [tuple(line.split("=", 1)) for line in data.decode().splitlines() if "=" in line]
        msg = Message(time.monotonic(), fields)  # type: ignore[arg-type]
        self.messages.append(msg)
        return msg

    def wait(self, predicate: Callable[[Message], bool], timeout: float = 30, what: str = "message") -> Message:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.receive(min(left, 0.5))
            if msg is not None and predicate(msg):
                return msg
            if msg is None and self.service is not None and self.service.proc.poll() is not None:
                raise AssertionError(f"{self.service.service} exited with {self.service.proc.returncode} "
                                     f"before {what}:\n{self.service.logs()[-3000:]}")
        raise AssertionError(f"no {what} within {timeout}s; got {[m.fields for m in self.messages]}")

    def wait_key(self, item: str, timeout: float = 30) -> Message:
        return self.wait(lambda m: item in m, timeout, item)

    def index(self, item: str) -> int:
        return next(i for i, m in enumerate(self.messages) if item in m)

    def close(self) -> None:
        self.sock.close()


def parse_journal_record(data: bytes) -> dict[str, str]:
    """systemd's native journal protocol: KEY=value\\n, or KEY\\n<le64 size><bytes>\\n."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            fields[line.decode()] = data[nl + 9:nl + 9 + size].decode()
            i = nl + 9 + size + 1
    return fields


def listening_tcp_ports(pid: int) -> dict[int, int]:
    """{port: fd} of the TCP sockets process `pid` holds in LISTEN state (from /proc)."""
    inode_fd: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inode_fd[target[8:-1]] = int(fd)
    ports: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inode_fd:  # 0A = TCP_LISTEN
                ports[int(local.rsplit(":", 1)[1], 16)] = inode_fd[inode]
    return ports


@contextlib.asynccontextmanager
async def serve_inprocess(service_cls: type[Service], shared: SharedSettings | None = None,
                          **settings: object) -> AsyncIterator[Server]:
    """The real Server phases (limits, bind, start, ready) on the test's loop, on port 0;
    always stopped. `server.url` is the API listener's base URL."""
    server = Server(service_cls, service_cls.Settings(**{"port": 0, **settings}),
                    shared or SharedSettings())
    server.check_limits()
    await server.bind()
    try:
        await server.start()
        await server.wait_ready()
        server.url = server.runtime.base_url  # type: ignore[attr-defined]
        yield server
    finally:
        await server.stop()


@contextlib.contextmanager
def spawn(tmp_path: Path, env: dict[str, str], *, service: str = "template", port: int | None = None,
          prefix: list[str] | None = None, notify: NotifyListener | None = None):
    """`nexusd run <service>` (for "probe": tests/runtime/probe.py, run the same way) as a
    subprocess, optionally behind a wrapper that execs it (so the pid stays the service's),
    without waiting for readiness; always stopped."""
    port = port or free_port()
    if notify is not None:
        env = {"NOTIFY_SOCKET": notify.address, **env}
    log = tmp_path / f"{service}-{port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m",
             *(["tests.runtime.probe"] if service == "probe" else ["nexusd.cli", "run", service])],
            env=service_env(service, port, **env), stdout=err, stderr=err, cwd=REPO,
        )
    sp = ServiceProcess(service, port, proc, log)
    if notify is not None:
        notify.service = sp
    try:
        yield sp
    finally:
        sp.stop()
