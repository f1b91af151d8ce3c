"""Run `nexusd run <service>` as a real subprocess on a free port and stop it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.net import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def terminate(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, wait (bounded), SIGKILL if it will not go: every test's process teardown."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class ServiceProcess:
    service: str
    port: int
    proc: subprocess.Popen
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                body = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            body, status = e.read().decode(), e.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def service_env(service: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and not k.endswith("_BASE_URL")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update({f"NEXUS_{service.upper()}_PORT": str(port), "NEXUS_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@contextmanager
def run_service(service: str, tmp_path: Path, *, wait_ready: bool = True, ready_timeout: float = 60,
                port: int | None = None, env: dict[str, str] | None = None, args: list[str] | None = None):
    """Start the service, wait for /readyz 200 (bounded), yield it, always stop it."""
    port = port or free_port()
    stderr_path = tmp_path / f"{service}-{port}.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexusd.cli", "run", service, *(args or [])],
            env=service_env(service, port, **(env or {})), stdout=err, stderr=err, cwd=REPO,
        )
    sp = ServiceProcess(service, port, proc, stderr_path)
    try:
        if wait_ready:
            wait_for(lambda: proc.poll() is None and sp.ready() or _raise_if_dead(sp),
                     timeout=ready_timeout, what=f"{service} ready")
        yield sp
    finally:
        sp.stop()


def _raise_if_dead(sp: ServiceProcess) -> bool:
    if sp.proc.poll() is not None:
        raise AssertionError(f"{sp.service} exited with {sp.proc.returncode}:\n{sp.logs()[-3000:]}")
    return False
