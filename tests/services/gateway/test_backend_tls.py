"""TLS between the gateway and its backends (issue 11, item 10): every service can serve HTTPS
on its API port with the same NEXUS_<SERVICE>_TLS_CERT/_KEY options as the gateway, advertises
an https:// URL, and the gateway verifies backends against NEXUS_BACKEND_CA: with the right CA
it relays (the internal token travels encrypted), with an unknown one the instance is never
ready."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import aiohttp

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.helpers.proc import run_service
from tests.helpers.tls import make_certs
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import make_keys, serve, serve_gateway

TOKEN = "internal-secret-token"


def https_get(url: str, ca: str) -> int:
    with urllib.request.urlopen(url, timeout=5, context=ssl.create_default_context(cafile=ca)) as r:
        return r.status


async def test_service_serves_https_and_the_gateway_verifies_it(tmp_path):
    certs = make_certs(tmp_path / "certs")
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    env = {"NEXUS_TEMPLATE_TLS_CERT": str(certs.server_cert), "NEXUS_TEMPLATE_TLS_KEY": str(certs.server_key),
           "NEXUS_INTERNAL_TOKEN": TOKEN}
    with run_service("template", tmp_path, wait_ready=False, env=env) as template:
        url = f"https://127.0.0.1:{template.port}"

        async def up() -> bool:
            return https_get(url + "/readyz", str(certs.ca)) == 200
        await async_wait_for(up, timeout=30, what="template ready over HTTPS")
        try:  # plain HTTP on the TLS port gets nowhere
            urllib.request.urlopen(f"http://127.0.0.1:{template.port}/health", timeout=5)
            raise AssertionError("plain HTTP answered on the TLS port")
        except (urllib.error.URLError, ConnectionError):
            pass

        shared = SharedSettings(etcd_endpoints="", internal_token=TOKEN, backend_ca=str(certs.ca))
        async with serve_gateway(tmp_path / "keys", {"template": url}, shared=shared) as gw:
            async def routed() -> bool:
                return bool(gw.service.instances.routable())
            await async_wait_for(routed, timeout=15, what="https backend routable")
            async with aiohttp.ClientSession() as s, s.post(
                    gw.api + "/v1/echo", json={"message": "hi"}, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200 and (await r.json())["message"] == "echo: hi"

        # a gateway that does not trust that CA never sends it anything past the TLS handshake
        untrusting = SharedSettings(etcd_endpoints="", internal_token=TOKEN)
        async with serve_gateway(tmp_path / "keys", {"template": url}, shared=untrusting) as gw:
            async def failed() -> str:
                (inst,) = gw.service.instances.instances.values()
                return inst.last_error
            error = await async_wait_for(failed, timeout=15, what="poll failed")
            assert "certificate" in str(error).lower() and not gw.service.instances.routable()


async def test_registration_advertises_https(tmp_path):
    certs = make_certs(tmp_path / "certs")
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=""),
                     tls_cert=str(certs.server_cert), tls_key=str(certs.server_key)) as backend:
        assert backend.runtime.base_url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        async with aiohttp.ClientSession() as s, s.get(backend.runtime.base_url + "/v1/metadata", ssl=ctx) as r:
            assert json.loads(await r.read())["service"]["name"] == "testai"
