"""Registrations are not trusted blindly (issue 11, items 4 and 6): malformed metadata marks
one instance invalid and discovery goes on; unknown fields are ignored; the allow-list keeps
the internal token away from unlisted addresses; an instance_id cannot be hijacked."""

from __future__ import annotations

import copy

import aiohttp

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.conftest import INTERNAL
from tests.services.gateway.harness import serve, serve_gateway
from tests.services.gateway.registrants import Registrant, register

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def instances(gw) -> dict[str, dict]:
    return {i["base_url"]: i for i in (await get_json(gw.obs + "/v1/metadata"))["extra"]["instances"]}


async def wait_state(gw, url: str, state: str) -> dict:
    async def reached() -> dict | None:
        inst = (await instances(gw)).get(url)
        return inst if inst and inst["state"] == state else None
    return await async_wait_for(reached, timeout=15, what=f"{url} {state}")  # type: ignore[return-value]


async def chat(gw, key: str) -> int:
    async with aiohttp.ClientSession() as s, s.post(gw.api + "/v1/chat/completions", json=CHAT,
                                                    headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status


def shared(etcd) -> SharedSettings:
    return SharedSettings(etcd_endpoints=etcd.endpoint, internal_token=INTERNAL)


async def test_malformed_metadata_marks_one_instance_invalid_and_discovery_goes_on(etcd, keys):
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as good:
        doc = await get_json(good.url + "/v1/metadata")  # a well-formed document to break
    no_id = copy.deepcopy(doc)
    del no_id["models"][0]["id"]
    no_method = copy.deepcopy(doc)
    del no_method["endpoints"][0]["method"]
    newer = copy.deepcopy(doc)  # a newer peer: more fields than we know, otherwise fine
    newer["service"]["instance_id"] = "newer-1"
    newer["future_field"] = {"x": 1}
    newer["models"] = [{"id": "newer-model", "operations": ["chat.completions"], "future": True}]
    oversized = b'{"pad": "' + b"x" * (2 << 20) + b'"}'

    async with serve_gateway(keys[0], {}, shared=shared(etcd)) as gw, \
            Registrant(no_id) as bad1, Registrant(no_method) as bad2, Registrant(oversized) as bad3, \
            Registrant(newer) as peer:
        for i, r in enumerate((bad1, bad2, bad3)):
            await register(etcd.endpoint, "testai", f"bad-{i}", r.url)
        await register(etcd.endpoint, "testai", "newer-1", peer.url)
        reasons = [(await wait_state(gw, r.url, "invalid"))["invalid"] for r in (bad1, bad2, bad3)]
        assert "models.0.id" in reasons[0] and "endpoints.0.method" in reasons[1]
        assert "larger than 1048576 bytes" in reasons[2]
        await wait_state(gw, peer.url, "ready")
        # registered after the bad ones: still discovered and routable
        async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as good:
            await register(etcd.endpoint, "testai", good.runtime.instance_id, good.url)
            await wait_state(gw, good.url, "ready")
            assert await chat(gw, keys[1]["admin"]) == 200
            models = await get_json(gw.obs + "/v1/metadata")
            assert {"newer-model", "tiny-chat"} <= {m["model"] for m in models["extra"]["models"]}
            async with aiohttp.ClientSession() as s, s.get(gw.obs + "/") as r:
                page = await r.text()
            assert "invalid" in page and "models.0.id" in page and "allowed backends: unrestricted" in page


async def test_allow_list_keeps_the_token_from_unlisted_addresses(etcd, keys):
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as good:
        doc = await get_json(good.url + "/v1/metadata")
        doc["service"]["instance_id"] = "outsider-1"
        async with serve_gateway(keys[0], {}, shared=shared(etcd), allowed_backends="127.0.0.1/32") as gw, \
                Registrant(doc, host="127.0.0.2") as outsider:
            await register(etcd.endpoint, "testai", "outsider-1", outsider.url)
            await register(etcd.endpoint, "testai", good.runtime.instance_id, good.url)
            refused = await wait_state(gw, outsider.url, "refused")
            assert "127.0.0.2" in refused["refused"] and "NEXUS_GATEWAY_ALLOWED_BACKENDS" in refused["refused"]
            await wait_state(gw, good.url, "ready")
            assert await chat(gw, keys[1]["admin"]) == 200
            assert outsider.seen == []  # never contacted: no token, no client request
            report = await get_json(gw.obs + "/v1/metadata")
            assert report["extra"]["allowed_backends"] == "127.0.0.1/32"


async def test_instance_id_cannot_be_hijacked(etcd, keys):
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as good, \
            serve_gateway(keys[0], {}, shared=shared(etcd)) as gw:
        good_id = good.runtime.instance_id
        await register(etcd.endpoint, "testai", good_id, good.url)
        await wait_state(gw, good.url, "ready")
        doc = await get_json(good.url + "/v1/metadata")  # the same id, from another base URL
        doc["models"] = [{"id": "tiny-chat", "operations": ["chat.completions"], "aliases": [], "default_for": []}]
        async with Registrant(doc) as thief:
            await register(etcd.endpoint, "testai", good_id + "-x", thief.url)
            held = await wait_state(gw, thief.url, "invalid")
            assert held["invalid"] == f"instance_id {good_id!r} is already held by {good.url}"
            for _ in range(6):
                assert await chat(gw, keys[1]["admin"]) == 200
            assert [p for p, _ in thief.seen if not p.startswith(("/readyz", "/v1/metadata"))] == []


async def test_allow_list_hostnames_are_resolved(etcd, keys):
    """A hostname in the list allows the addresses it resolves to (looked up at each poll)."""
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as good:
        port = good.url.rsplit(":", 1)[1]
        by_name = f"http://localhost:{port}"  # the same backend, registered by host name
        async with serve_gateway(keys[0], {}, shared=shared(etcd), allowed_backends="localhost") as gw, \
                Registrant({}, host="127.0.0.2") as outsider:
            await register(etcd.endpoint, "testai", good.runtime.instance_id, by_name)
            await register(etcd.endpoint, "testai", "outsider-2", outsider.url)
            await wait_state(gw, by_name, "ready")
            assert "not in NEXUS_GATEWAY_ALLOWED_BACKENDS" in (await wait_state(gw, outsider.url, "refused"))["refused"]
            assert await chat(gw, keys[1]["admin"]) == 200 and outsider.seen == []
