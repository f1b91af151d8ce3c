"""One supervised child: started with inherited listening sockets (LISTEN_FDS, as systemd socket
activation does) and its own NOTIFY_SOCKET, so `READY=1` means exactly what it means under
systemd. Its output is prefixed with its name; when it dies it is restarted with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# A tiny exec shim moves the sockets to fds 3.. and sets LISTEN_PID to its own pid, which the
# exec'd program keeps: what systemd (or systemd-socket-activate) does between fork and exec.
_SHIM = (
    "import os,sys\n"
    "src=[int(f) for f in os.environ.pop('NEXUS_DEV_FDS').split()]\n"
    "for i,fd in enumerate(src): os.dup2(fd, 3+i)\n"
    "[os.close(fd) for fd in src if fd >= 3+len(src)]\n"
    "os.environ['LISTEN_PID']=str(os.getpid())\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec: the child gets SIGTERM if `nexusd dev` itself is killed, so nothing is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    notify_dir: Path = Path("/tmp")
    color: str = ""
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    status: str = ""
    restarts: int = 0
    stopping: bool = False

    async def start(self) -> None:
        self.ready.clear()
        notify_path = self.notify_dir / f"{self.name}.notify"
        notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self._notify.bind(str(notify_path))
        # High fd numbers so the shim's moves to 3.. never overwrite a source fd.
        fds = [fcntl_dup_high(s.fileno()) for s in self.sockets.values()]
        env = {**self.env, "NOTIFY_SOCKET": str(notify_path)}
        argv = self.argv
        if fds:
            env |= {"LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": ":".join(self.sockets),
                    "NEXUS_DEV_FDS": " ".join(map(str, fds))}
            argv = [sys.executable, "-S", "-c", _SHIM, *argv]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, env=env, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only `nexusd dev`, which stops children in order
            preexec_fn=_die_with_parent,
        )
        for fd in fds:
            os.close(fd)
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._listen())]

    async def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        prefix = f"{self.color}{self.name:>8} |\033[0m " if self.color else f"{self.name:>8} | "
        async for line in self.proc.stdout:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._notify, 4096)
            for item in data.decode(errors="replace").splitlines():
                key, _, value = item.partition("=")
                if key == "READY" and value == "1":
                    self.ready.set()
                elif key == "STATUS":
                    self.status = value

    async def wait(self) -> int:
        assert self.proc
        code = await self.proc.wait()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._notify.close()
        return code

    async def stop(self, timeout: float = 15) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


def fcntl_dup_high(fd: int, minimum: int = 64) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD, minimum)


async def supervise(child: Child, on_exit: asyncio.Event) -> None:
    """Restart a child that dies on its own, with exponential backoff (1 s … 30 s)."""
    backoff = 1.0
    while True:
        started = time.monotonic()
        code = await child.wait()
        if child.stopping or on_exit.is_set():
            return
        if time.monotonic() - started > 60:
            backoff = 1.0
        print(f"nexusd dev: {child.name} exited with {code}; restarting in {backoff:g}s", file=sys.stderr)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30)
        if on_exit.is_set():
            return
        child.restarts += 1
        await child.start()
