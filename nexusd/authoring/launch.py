"""Start a service the way systemd does, for `nexusd check`: `nexusd run NAME` in a child process
with `NOTIFY_SOCKET` pointing at a datagram socket we read, on free ports."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nexusd.runtime.service import Service
from nexusd.runtime.settings import env_name

# Variables systemd sets for its child: inherited from our own unit they would confuse the child.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
                     "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")


class NotifySocket:
    """The receiving end of sd_notify(3): every datagram's `KEY=value` lines, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def _drain(self, timeout: float) -> None:
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        while readable:
            self.messages.extend(self.sock.recv(65536).decode(errors="replace").splitlines())
            readable, _, _ = select.select([self.sock], [], [], 0)

    def wait_for(self, line: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
        """True once `line` (e.g. READY=1) has arrived; False at the timeout or when not alive()."""
        deadline = time.monotonic() + timeout
        while line not in self.messages:
            if not alive() or time.monotonic() >= deadline:
                self._drain(0)
                return line in self.messages
            self._drain(min(0.2, deadline - time.monotonic()))
        return True

    def status(self) -> str:
        self._drain(0)
        return next((m[7:] for m in reversed(self.messages) if m.startswith("STATUS=")), "")

    def close(self) -> None:
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_settings(cls: type[Service]) -> dict[str, str]:
    """Listener name → the settings field that binds it (`port` for the first listener,
    `<listener>_port` for others, else the field whose default is the listener's port)."""
    from nexusd.units.render import context

    ctx = context(cls)
    fields = {f: getattr(ctx.settings, f) for f in type(ctx.settings).model_fields
              if f == "port" or f.endswith("_port")}
    found: dict[str, str] = {}
    for i, listener in enumerate(ctx.listeners):
        preferred = "port" if i == 0 else f"{listener.name}_port"
        if fields.get(preferred) == listener.port:
            found[listener.name] = preferred
            continue
        match = [f for f, v in fields.items() if v == listener.port and f not in found.values()]
        if len(match) != 1:
            raise RuntimeError(f"cannot tell which setting binds the {listener.name!r} listener; "
                               "start the service yourself and pass --url")
        found[listener.name] = match[0]
    return found


@dataclass
class Launched:
    """A service started by `launch`: its base URLs, the notify socket and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    notify: NotifySocket
    urls: dict[str, str]  # listener name → base URL
    observability: str  # the listener serving /readyz, /metrics, /v1/metadata
    log_path: Path
    start_timeout: float
    drain_timeout: float
    workdir: tempfile.TemporaryDirectory[str] = field(repr=False)

    @property
    def api(self) -> str:
        """Where the endpoints are: the listener they name, "api" unless they say otherwise."""
        return self.urls.get("api", next(iter(self.urls.values())))

    @property
    def obs(self) -> str:
        return self.urls[self.observability]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def terminate(self) -> int | None:
        """SIGTERM and wait (bounded by the drain timeout); None if it had to be killed."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.drain_timeout + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def close(self) -> None:
        self.terminate()
        self.notify.close()
        self.workdir.cleanup()


def launch(cls: type[Service], env: dict[str, str] | None = None) -> Launched:
    from nexusd.units.render import context

    workdir = tempfile.TemporaryDirectory(prefix=f"nexusd-check-{cls.name}-")
    notify = NotifySocket(Path(workdir.name) / "notify")
    child_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    child_env.update(env or {})
    ctx = context(cls)
    urls, observability = {}, ""
    fields = port_settings(cls)
    for listener in ctx.listeners:
        field_name = fields[listener.name]
        port = free_port()
        child_env[env_name(cls.Settings, field_name)] = str(port)
        scheme = "https" if listener.ssl_context else "http"
        urls[listener.name] = f"{scheme}://127.0.0.1:{port}"
        if listener.observability and not observability:
            observability = listener.name
    child_env.update({"NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"})
    start_timeout, drain_timeout = (_seconds(child_env, cls, f, getattr(ctx.settings, f))
                                    for f in ("start_timeout", "drain_timeout"))
    log_path = Path(workdir.name) / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", cls.name],
                                env=child_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    return Launched(cls.name, proc, notify, urls, observability or next(iter(urls)), log_path,
                    start_timeout, drain_timeout, workdir)


def _seconds(env: dict[str, str], cls: type[Service], field_name: str, default: float) -> float:
    """A timeout as the child will read it (its environment, else the default): how long to wait."""
    try:
        return float(env.get(env_name(cls.Settings, field_name), default))
    except ValueError:  # the child refuses it at start (exit 78), which the check reports
        return float(default)
