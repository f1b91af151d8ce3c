"""The gateway's own metrics move with the traffic (labels included), and a gateway listed among
the backends (here: its own observability URL) is ignored rather than routed to (no loop)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for, free_port
from tests.services.gateway.harness import serve_gateway

MSG = [{"role": "user", "content": "hi"}]


async def samples(gateway) -> dict[tuple[str, frozenset], float]:
    async with aiohttp.ClientSession() as s, s.get(gateway.obs + "/metrics") as r:
        text = await r.text()
    return {(x.name, frozenset(x.labels.items())): x.value
            for family in text_string_to_metric_families(text) for x in family.samples}


def value(got, name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


async def test_request_stream_and_instance_metrics(gateway, keys, backend):
    before = await samples(gateway)
    headers = {"Authorization": f"Bearer {keys[1]['admin']}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for stream in (False, True):
            async with s.post(gateway.api + "/v1/chat/completions",
                              json={"model": "tiny-chat", "messages": MSG, "stream": stream}) as r:
                assert r.status == 200
                await r.read()
    after = await samples(gateway)
    inst = backend.runtime.instance_id
    labels = {"operation": "chat.completions", "model": "tiny-chat", "status": "200", "instance": inst}
    assert value(after, "nexus_gateway_requests_total", **labels) - \
        value(before, "nexus_gateway_requests_total", **labels) == 2
    assert value(after, "nexus_gateway_key_requests_total", key="admin") - \
        value(before, "nexus_gateway_key_requests_total", key="admin") == 2
    assert value(after, "nexus_gateway_stream_first_byte_seconds_count", operation="chat.completions") - \
        value(before, "nexus_gateway_stream_first_byte_seconds_count", operation="chat.completions") == 1
    assert value(after, "nexus_gateway_upstream_seconds_count", operation="chat.completions") - \
        value(before, "nexus_gateway_upstream_seconds_count", operation="chat.completions") == 2
    assert value(after, "nexus_gateway_instances", state="ready") == 1
    assert value(after, "nexus_gateway_discovery_events_total", event="added") >= 1


async def test_a_gateway_among_the_backends_is_ignored(keys):
    obs_port = free_port()
    own_obs = f"http://127.0.0.1:{obs_port}"
    async with serve_gateway(keys[0], {"loop": own_obs}, obs_port=obs_port,
                             shared=SharedSettings(etcd_endpoints="", internal_token="")) as gw:
        inst = gw.service.instances.instances[own_obs]

        async def looked_at() -> bool:
            return inst.metadata is not None
        await async_wait_for(looked_at, timeout=10, what="the loop backend's metadata fetched")
        assert inst.is_gateway and gw.service.instances.routable() == []
        async with aiohttp.ClientSession() as s, s.get(gw.obs + "/v1/metadata") as r:
            (described,) = (await r.json())["extra"]["instances"]
        assert described["state"] == "ignored"
