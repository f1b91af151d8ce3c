"""The stub backend through the real `openai` client: every field, determinism, sizes, url
files and their expiry, and bad input as 400 envelopes while the service stays ready."""

from __future__ import annotations

import base64
import io
import os

import aiohttp
import openai
import pytest
from PIL import Image

from nexusd.services.images import ImagesService
from tests.helpers.net import async_wait_for
from tests.runtime.support import serve_inprocess
from tests.services.images.conftest import client_for


def png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(raw))


async def test_b64_png_of_requested_size_with_every_field(client):
    res = await client.images.generate(
        prompt="a lighthouse at dusk", model="dall-e-3", n=2, size="1024x1792", quality="hd",
        style="natural", response_format="b64_json", output_format="png", user="test-user",
        extra_body={"seed": 42, "steps": 3, "guidance_scale": 5.0, "negative_prompt": "fog"},
    )
    assert len(res.data) == 2
    assert res.created > 0
    assert [png(d.b64_json).size for d in res.data] == [(1024, 1792)] * 2
    assert res.data[0].revised_prompt == "a lighthouse at dusk"
    assert [d.model_extra["seed"] for d in res.data] == [42, 43]
    assert res.data[0].b64_json != res.data[1].b64_json  # seed + i


async def test_deterministic_and_prompt_dependent(client):
    async def one(prompt, **extra):
        res = await client.images.generate(prompt=prompt, size="256x256", response_format="b64_json",
                                           extra_body=extra or None)
        return res.data[0].b64_json

    # No seed: it derives from the prompt, so the same prompt gives the same bytes.
    assert await one("a red fox") == await one("a red fox")
    assert await one("a red fox", seed=7) == await one("a red fox", seed=7)
    assert await one("a red fox", seed=7) != await one("a red fox", seed=8)
    a, b = png(await one("a red fox")), png(await one("a blue whale"))
    diff = sum(x != y for x, y in zip(a.convert("RGB").getdata(), b.convert("RGB").getdata(), strict=True))
    assert diff > 0.2 * 256 * 256  # visibly different, not a pixel or two


@pytest.mark.parametrize(("size", "expected"), [
    ("256x256", (256, 256)), ("1536x1024", (1536, 1024)), ("64x128", (64, 128)), ("auto", (512, 512)),
])
async def test_sizes(client, size, expected):
    res = await client.images.generate(prompt="sizes", size=size, response_format="b64_json")
    assert png(res.data[0].b64_json).size == expected
    assert res.size == f"{expected[0]}x{expected[1]}"


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
async def test_output_formats(client, fmt, magic):
    res = await client.images.generate(prompt="formats", size="256x256", response_format="b64_json",
                                       output_format=fmt, output_compression=50)
    assert base64.b64decode(res.data[0].b64_json).startswith(magic)


async def test_url_fetches_without_key_then_expires(tmp_path):
    async with serve_inprocess(ImagesService, cache_dir=str(tmp_path), file_ttl=1.0) as server, \
            client_for(server) as client:
        res = await client.images.generate(prompt="a url image", size="256x256", response_format="url",
                                           output_format="webp")
        url = res.data[0].url
        file_id = url.rsplit("/", 1)[1]
        assert url.startswith(server.url + "/v1/images/files/")
        instance, token, ext = file_id.split(".")
        assert instance == server.runtime.instance_id and ext == "webp"
        assert len(base64.urlsafe_b64decode(token + "==")) >= 16  # >= 128 random bits
        async with aiohttp.ClientSession() as http:  # no Authorization header at all
            async with http.get(url) as r:
                assert r.status == 200 and r.content_type == "image/webp"
                assert Image.open(io.BytesIO(await r.read())).size == (256, 256)

            async def gone():
                async with http.get(url) as r:
                    return r.status == 404 and (await r.json())["error"]["code"] == "not_found"

            await async_wait_for(gone, timeout=15, what="the url to expire")
            # The sweeper deletes the file itself, not only the route to it.
            await async_wait_for(lambda: _no_files(tmp_path / "files"), timeout=15, what="file deleted")


async def _no_files(folder):
    return not any(name.endswith(".webp") for name in os.listdir(folder))


async def test_url_honours_public_url_and_is_public_under_internal_token(tmp_path):
    from nexusd.runtime.settings import SharedSettings

    shared = SharedSettings(internal_token="s3cret")
    async with serve_inprocess(ImagesService, shared, cache_dir=str(tmp_path),
                               public_url="https://gw.example/") as server:
        async with aiohttp.ClientSession() as http:
            body = {"prompt": "gateway", "size": "256x256"}
            async with http.post(server.url + "/v1/images/generations", json=body) as r:
                assert r.status == 401  # generation needs the internal token...
            async with http.post(server.url + "/v1/images/generations", json=body,
                                 headers={"Authorization": "Bearer s3cret"}) as r:
                url = (await r.json())["data"][0]["url"]  # default response_format is url
            assert url.startswith("https://gw.example/v1/images/files/")
            local = server.url + url.removeprefix("https://gw.example")
            async with http.get(local) as r:  # ...the capability URL does not
                assert r.status == 200
            # Another instance's id, or a guessed token, is a 404 envelope.
            other = local.replace(server.runtime.instance_id, "images-elsewhere-0000")
            for bad in (other, local[:-10] + "AAAAAA.png", server.url + "/v1/images/files/..%2Fx"):
                async with http.get(bad) as r:
                    assert r.status == 404 and "error" in await r.json()


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 5}, "n"),  # above NEXUS_IMAGES_MAX_N (4)
    ({"prompt": "x", "n": 11}, "n"),
    ({"prompt": "x", "size": "100x100"}, "size"),  # not a multiple of 8
    ({"prompt": "x", "size": "4096x4096"}, "size"),  # beyond max_side
    ({"prompt": "x", "size": "big"}, "size"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "response_format": "gif"}, "response_format"),
    ({"prompt": "x", "output_format": "bmp"}, "output_format"),
    ({"prompt": "x", "quality": "ultra"}, "quality"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "steps": 100000}, "steps"),
    ({"prompt": "x", "unknown_field": 1}, "unknown_field"),
])
async def test_bad_input_is_a_400_envelope_and_service_stays_ready(stub, client, body, param):
    with pytest.raises(openai.BadRequestError) as err:
        await client.post("/images/generations", body=body, cast_to=object)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert err.value.body["type"] == "invalid_request_error"
    async with aiohttp.ClientSession() as http, http.get(stub.url + "/readyz") as r:
        assert r.status == 200
    ok = await client.images.generate(prompt="still fine", size="256x256", response_format="b64_json")
    assert png(ok.data[0].b64_json).size == (256, 256)


async def test_unknown_model_is_404_and_metadata_says_stub(stub, client):
    with pytest.raises(openai.NotFoundError) as err:
        await client.images.generate(prompt="x", model="sdxl-nope")
    assert err.value.body["code"] == "model_not_found"
    async with aiohttp.ClientSession() as http, http.get(stub.url + "/v1/metadata") as r:
        doc = await r.json()
    (model,) = doc["models"]
    assert model["id"] == "stub" and "dall-e-3" in model["aliases"]
    assert model["details"]["backend"] == "stub" and doc["extra"]["backend"] == "stub"
    ops = {(e["operation_id"], e["path"]) for e in doc["endpoints"]}
    assert ("images.files", "/v1/images/files/{file_id}") in ops


async def test_metrics_count_images(stub, client):
    await client.images.generate(prompt="count me", n=3, size="256x256", response_format="b64_json")
    async with aiohttp.ClientSession() as http, http.get(stub.url + "/metrics") as r:
        text = await r.text()
    assert 'nexus_images_generated_total{backend="stub"} 3.0' in text
    assert "nexus_images_seconds_per_image_count 1.0" in text
    assert "nexus_images_seconds_per_step_count 3.0" in text  # for the stub, a step is one image
    assert 'nexus_queue_depth{queue="images"} 0.0' in text  # the runtime's admission gauge
    assert 'nexus_queue_running{queue="images"} 0.0' in text
