"""Starting real gateways and backends for the tests: in process (the runtime's own Server
phases on the test's loop, port 0) or as `nexusd run gateway` subprocesses."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusd.runtime.server import Server
from nexusd.runtime.service import Service
from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway import GatewayService
from nexusd.services.gateway.keys import ApiKey, new_key, write_keys
from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import REPO, service_env, terminate


def make_keys(path: Path, specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Write a keys file; returns name -> plaintext key (what a client sends)."""
    plain: dict[str, str] = {}
    records: list[ApiKey] = []
    for name, scope in specs.items():
        text, record = new_key(name, **scope)
        plain[name] = text
        records.append(record)
    write_keys(path, records)
    return plain


@contextlib.asynccontextmanager
async def serve(service_cls: type[Service], shared: SharedSettings | None = None,
                **settings: Any) -> AsyncIterator[Server]:
    """The real Server phases on the test's loop; always stopped."""
    server = Server(service_cls, service_cls.Settings(**{"port": 0, **settings}),
                    shared or SharedSettings(etcd_endpoints="", internal_token=""))
    await server.bind()
    try:
        await server.start()
        await server.wait_ready()
        server.url = server.runtime.base_url  # type: ignore[attr-defined]
        if hasattr(server.service, "public_base"):
            server.service.public_base = server.runtime.base_url  # type: ignore[attr-defined]
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def serve_gateway(keys_file: Path, backends: dict[str, str] | None = None,
                        shared: SharedSettings | None = None, **settings: Any) -> AsyncIterator[Server]:
    params = {"obs_port": 0, "keys_file": keys_file, "static_backends": backends or {},
              "poll_interval": 0.1, **settings}
    async with serve(GatewayService, shared, **params) as server:
        host, port = server.bound["api"]
        server.api = f"http://{host}:{port}"  # type: ignore[attr-defined]
        host, port = server.bound["obs"]
        server.obs = f"http://{host}:{port}"  # type: ignore[attr-defined]
        yield server


def routable(server: Server, operation: str) -> bool:
    return bool(server.service.proxy.table.by_operation.get(operation))  # type: ignore[attr-defined]


@dataclass
class GatewayProcess:
    proc: subprocess.Popen
    port: int
    obs_port: int
    log_path: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def obs(self) -> str:
        return f"http://127.0.0.1:{self.obs_port}"

    def get_json(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def metadata(self) -> dict[str, Any]:
        return self.get_json(self.obs + "/v1/metadata")[1]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_gateway(tmp_path: Path, env: dict[str, str]) -> Iterator[GatewayProcess]:
    """`python -m nexusd.cli run gateway` on free ports; waits for /readyz on the obs port."""
    port, obs_port = free_port(), free_port()
    log_path = tmp_path / f"gateway-{port}.log"
    full_env = service_env("gateway", port, **{"NEXUS_GATEWAY_OBS_PORT": str(obs_port),
                                               "NEXUS_GATEWAY_POLL_INTERVAL": "0.2", **env})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "gateway"], env=full_env,
                                stdout=log, stderr=log, cwd=REPO)
    gw = GatewayProcess(proc, port, obs_port, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}:\n{gw.logs()[-3000:]}")
        return gw.get_json(gw.obs + "/readyz")[0] == 200

    try:
        wait_for(ready, timeout=30, what="gateway ready")
        yield gw
    finally:
        terminate(proc)
