"""Without etcd, the gateway calls the nexusd services enabled on its host where their installed
units listen; and when a route has no instance it says why and what to configure (503 message,
/v1/metadata, status page). Real units from `nexusd units install --root`, a real template
service in process, a real gateway. (The same under a real systemd: tests/units/test_journey.py.)"""

from __future__ import annotations

import aiohttp

from nexusd.runtime.settings import SharedSettings
from nexusd.services.template import TemplateService
from nexusd.units.install import install
from tests.helpers.net import async_wait_for
from tests.services.gateway.harness import make_keys, routable, serve, serve_gateway

NO_ETCD = SharedSettings(etcd_endpoints="", internal_token="")


def installed_host(root, template_port: int):
    """A host where `nexusd units install --no-etcd` ran, template enabled on a moved port."""
    install(root, "/opt/nexusd/bin/nexusd", etcd=False)
    units = root / "etc/systemd/system"
    (units / "nexus-template.socket.d").mkdir()
    (units / "nexus-template.socket.d/port.conf").write_text(
        f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{template_port}\n")
    (units / "nexus.target.wants").mkdir()
    (units / "nexus.target.wants/nexus-template.service").symlink_to(units / "nexus-template.service")
    return units


async def test_enabled_local_units_are_routed_and_follow_reload(tmp_path):
    key = make_keys(tmp_path / "keys", {"admin": {}})["admin"]
    async with serve(TemplateService, NO_ETCD) as template:
        port = int(template.url.rsplit(":", 1)[1])
        units = installed_host(tmp_path / "root", port)
        async with serve_gateway(tmp_path / "keys", {}, shared=NO_ETCD, local_units=str(units)) as gw:
            await async_wait_for(lambda: _true(routable(gw, "template.echo")), timeout=10, what="template routed")
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
                async with s.post(gw.api + "/v1/echo", json={"message": "hi"}) as r:
                    assert r.status == 200, await r.text()
                async with s.post(gw.api + "/v1/images/generations", json={"prompt": "x"}) as r:
                    body = await r.json()
                    assert r.status == 503
                    assert body["error"]["message"] == (
                        "No ready instance serves images.generate: none of the discovered instances "
                        "serves it; start a service that does (e.g. `systemctl enable --now nexus-images`)")
                async with s.get(gw.obs + "/v1/metadata") as r:
                    extra = (await r.json())["extra"]
                async with s.get(gw.obs + "/") as r:
                    page = await r.text()
            (src,) = extra["discovery"]
            enabled = {x["service"]: x["url"] for x in src["services"] if x["enabled"]}
            assert src["source"] == "units" and enabled == {"template": f"http://127.0.0.1:{port}"}
            # installed but not enabled: listed, not called
            assert {x["service"] for x in src["services"]} >= {"images", "tts", "ollama"}
            assert [i["sources"] for i in extra["instances"]] == [["unit:template"]]
            assert "images.generate" in extra["unserved"] and "template.echo" not in extra["unserved"]
            assert "<h2>Discovery</h2>" in page and "nexus-images" in page
            assert f"template http://127.0.0.1:{port}" in page

            (units / "nexus.target.wants/nexus-template.service").unlink()  # systemctl disable
            await gw.service.reload()
            assert gw.service.instances.instances == {}


async def test_no_source_at_all_says_what_to_configure(tmp_path, caplog):
    key = make_keys(tmp_path / "keys", {"admin": {}})["admin"]
    caplog.set_level("INFO", logger="nexusd.gateway.discovery")
    async with serve_gateway(tmp_path / "keys", {}, shared=NO_ETCD, local_units="") as gw, \
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        # Logged once at start: the sources (none), then what has no instance and why.
        async def warned() -> bool:
            return any("no ready instance for audio.speech, audio.voices: no backends" in r.getMessage()
                       for r in caplog.records)
        await async_wait_for(warned, timeout=10, what="the start-up warning")
        assert [r.getMessage() for r in caplog.records if "discovery sources" in r.getMessage()] == [
            "discovery sources: none"]
        async with s.post(gw.api + "/v1/audio/speech", json={"input": "x", "voice": "a", "model": "m"}) as r:
            body = await r.json()
        assert r.status == 503 and r.headers["Retry-After"]
        message = body["error"]["message"]
        assert message.startswith("No ready instance serves audio.speech: no backends: no etcd")
        assert "`systemctl enable --now nexus-tts`" in message and "NEXUS_ETCD_ENDPOINTS" in message
        async with s.get(gw.obs + "/v1/metadata") as r:
            extra = (await r.json())["extra"]
        assert extra["discovery"] == [] and set(extra["unserved"]) >= {"audio.speech", "chat.completions"}


async def test_etcd_that_cannot_be_reached_is_named(tmp_path):
    from tests.helpers.net import free_port

    key = make_keys(tmp_path / "keys", {"admin": {}})["admin"]
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    shared = SharedSettings(etcd_endpoints=endpoint, internal_token="")
    async with serve(TemplateService, NO_ETCD) as template:
        port = int(template.url.rsplit(":", 1)[1])
        units = installed_host(tmp_path / "root", port)
        # With etcd configured the local units are not read: etcd is the one dynamic source. It
        # never becomes ready (etcd not listed): start_timeout=1 lets the test go on after 1 s.
        async with serve_gateway(tmp_path / "keys", {}, shared=shared, local_units=str(units),
                                 etcd_retry=0.2, start_timeout=1) as gw, \
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
            assert gw.service.local_units is None
            async with s.post(gw.api + "/v1/echo", json={"message": "hi"}) as r:
                assert r.status == 404  # no instance declares it: not even a known route
            async with s.post(gw.api + "/v1/images/generations", json={"prompt": "x"}) as r:
                message = (await r.json())["error"]["message"]
            assert f"etcd at {endpoint} is" in message and "nexus-etcd.service" in message


async def _true(value: bool) -> bool:
    return value
