"""The diffusers backend on a tiny random-weight Stable Diffusion pipeline built from configs
(fixtures/tiny_pipeline.py): the real diffusers code path on CPU, through HTTP."""

from __future__ import annotations

import asyncio
import base64
import io

import aiohttp
import pytest
from PIL import Image

from nexusd.services.images import ImagesService
from tests.helpers.net import async_wait_for
from tests.runtime.support import NotifyListener, serve_inprocess
from tests.services.images.conftest import client_for

pytest.importorskip("diffusers")


def settings(tiny_pipeline, tmp_path, **extra):
    return {"backend": "diffusers", "model": str(tiny_pipeline), "cache_dir": str(tmp_path),
            "default_steps": 2, "start_timeout": 60, **extra}


async def test_loads_from_folder_and_generates_over_http(tiny_pipeline, tmp_path, monkeypatch):
    notify = NotifyListener(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    try:
        async with serve_inprocess(ImagesService, **settings(tiny_pipeline, tmp_path)) as server, \
                client_for(server) as client:
            res = await client.images.generate(prompt="a tiny cat", model="dall-e-2", n=2, size="64x64",
                                               response_format="b64_json", extra_body={"seed": 3})
            images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in res.data]
            assert [im.size for im in images] == [(64, 64), (64, 64)]
            again = await client.images.generate(prompt="a tiny cat", size="64x64", model="tiny-sd0", n=2,
                                                 response_format="b64_json", extra_body={"seed": 3})
            assert [d.b64_json for d in again.data] == [d.b64_json for d in res.data]  # same seed
            assert res.data[0].b64_json != res.data[1].b64_json  # image i uses seed + i
            async with aiohttp.ClientSession() as http, http.get(server.url + "/v1/metadata") as r:
                details = (await r.json())["models"][0]["details"]
            assert details["backend"] == "diffusers" and details["pipeline"] == "StableDiffusionPipeline"
            assert (details["device"], details["dtype"]) == ("cpu", "float32")  # no CUDA here
            assert details["native_size"] == "64x64"
        while notify.receive(0.05) is not None:  # the datagrams wait in the socket's buffer
            pass
        statuses = [m.get("STATUS") for m in notify.messages if "STATUS" in m]
        ready = notify.index("READY")
        before = " | ".join(str(m.get("STATUS")) for m in notify.messages[:ready])
        assert "loading" in before and "warming up" in before
        assert any(s and s.startswith("generating: step 2/2") for s in statuses)
    finally:
        notify.close()


async def test_queue_full_is_429_and_a_gone_client_stops_its_job(tiny_pipeline, tmp_path):
    long_steps = 500  # within the DDIM schedule; cancelled long before the end
    async with serve_inprocess(ImagesService, **settings(tiny_pipeline, tmp_path, max_queue=1,
                                                         max_steps=long_steps)) as server:
        service = server.service
        url = server.url + "/v1/images/generations"
        body = {"prompt": "slow", "size": "64x64", "steps": long_steps, "response_format": "b64_json"}
        sessions = [aiohttp.ClientSession() for _ in range(3)]
        try:
            running = asyncio.create_task(sessions[0].post(url, json=body))
            await async_wait_for(lambda: _true(service.current and service.current.steps_done > 0),
                                 timeout=30, what="the first job to start stepping")
            queued = asyncio.create_task(sessions[1].post(url, json=body))
            await async_wait_for(lambda: _true(service.admission.waiting == 1), what="one job queued")
            async with sessions[2].post(url, json=body) as r:
                assert r.status == 429
                assert int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["error"]["type"] == "rate_limit_error"
            # Both clients go away: the queued one leaves the queue, the running one stops early.
            for task, session in ((queued, sessions[1]), (running, sessions[0])):
                task.cancel()
                await session.close()
            await async_wait_for(lambda: _true(service.metrics.cancelled._value.get() == 2),
                                 timeout=30, what="both jobs cancelled")
            assert service.current.steps_done < long_steps
            assert service.admission.running == 0 and service.admission.waiting == 0
            async with sessions[2].post(url, json={**body, "steps": 2}) as r:  # the generator is free
                assert r.status == 200
        finally:
            for session in sessions:
                await session.close()


async def _true(value) -> bool:
    return bool(value)


async def test_missing_model_folder_keeps_readyz_503(tmp_path):
    from nexusd.runtime.server import Server
    from nexusd.runtime.settings import SharedSettings

    s = ImagesService.Settings(port=0, **settings(tmp_path / "nope", tmp_path, start_timeout=0.5))
    server = Server(ImagesService, s, SharedSettings())
    await server.bind()
    try:
        await server.start()
        await server.wait_ready()  # gives up at start_timeout
        report = await server.readiness.run()
        assert not report.ready and "load failed" in report.checks["model"]["error"]
        async with aiohttp.ClientSession() as http:
            async with http.post(server.runtime.base_url + "/v1/images/generations",
                                 json={"prompt": "x"}) as r:
                assert r.status == 503 and (await r.json())["error"]["code"] == "model_loading"
    finally:
        await server.stop()
