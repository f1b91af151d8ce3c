"""Helpers every benchmark uses: free ports and a process's CPU time from /proc."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_ready(proc: subprocess.Popen, log: IO[bytes], port: int, path: str, timeout: float, what: str) -> None:
    """Poll http://127.0.0.1:PORT/PATH until it answers 200; if `proc` exits or `timeout` passes
    first, kill it and fail with the tail of its `log`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            log.seek(0)
            raise RuntimeError(f"{what} did not become ready:\n" + log.read().decode(errors="replace")[-2000:])
        time.sleep(0.2)


def stop_processes(procs: list[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM to all, then SIGKILL to whatever still runs after `grace` seconds (a service still
    draining requests of an interrupted run, a gateway slowed down by valgrind)."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
