"""The `openai` client through the gateway to the real nexusd services as processes: images
(stub backend: b64 and a capability URL fetched through the gateway without a key), tts
(eSpeak NG), and ollama with the embedded llama.cpp engine and the tiny GGUF (chat, streamed
with usage, completions) when llama-cpp-python is installed."""

from __future__ import annotations

import base64
import contextlib
import io

import aiohttp
import openai
import pytest

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for, free_port
from tests.helpers.proc import run_service
from tests.services.gateway.harness import make_keys, serve_gateway


def _have_llama() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


async def test_openai_client_against_real_services(tmp_path):
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    gw_port = free_port()
    gw_url = f"http://127.0.0.1:{gw_port}"
    with contextlib.ExitStack() as stack:
        backends = {}
        images = stack.enter_context(run_service("images", tmp_path, env={
            "NEXUS_IMAGES_BACKEND": "stub", "NEXUS_IMAGES_PUBLIC_URL": gw_url,
            "NEXUS_IMAGES_CACHE_DIR": str(tmp_path / "images")}))
        backends["images"] = images.url
        tts = stack.enter_context(run_service("tts", tmp_path, env={"NEXUS_TTS_BACKEND": "espeak"}))
        backends["tts"] = tts.url
        if _have_llama():
            ollama = stack.enter_context(run_service("ollama", tmp_path, ready_timeout=120, env={
                "NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_THREADS": "1"}))
            backends["ollama"] = ollama.url
        async with serve_gateway(tmp_path / "keys", backends, port=gw_port,
                                 shared=SharedSettings(etcd_endpoints="", internal_token="")) as gw:
            async def all_ready() -> bool:
                return len(gw.service.instances.routable()) == len(backends)
            await async_wait_for(all_ready, timeout=20, what="all real services routable")
            client = openai.AsyncOpenAI(base_url=gw_url + "/v1", api_key=key, max_retries=0, timeout=120)

            owners = {m.owned_by for m in (await client.models.list()).data}
            assert set(backends) <= owners

            img = await client.images.generate(prompt="a red square", size="256x256", response_format="b64_json")
            from PIL import Image
            assert Image.open(io.BytesIO(base64.b64decode(img.data[0].b64_json))).size == (256, 256)
            img = await client.images.generate(prompt="a red square", size="256x256", response_format="url")
            assert img.data[0].url.startswith(gw_url + "/v1/images/files/")
            async with aiohttp.ClientSession() as s, s.get(img.data[0].url) as r:  # no key: capability URL
                assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")

            speech = await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.",
                                                      response_format="wav")
            assert speech.content[:4] == b"RIFF" and len(speech.content) > 1000

            if "ollama" not in backends:
                pytest.skip("llama-cpp-python not installed: the LLM half of this test did not run")
            model = next(m.id for m in (await client.models.list()).data if m.owned_by == "ollama")
            chat = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8)
            assert chat.choices[0].message.content is not None and chat.usage.completion_tokens >= 1
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, stream=True,
                stream_options={"include_usage": True})
            usage = None
            chunks = 0
            async for chunk in stream:
                chunks += 1
                usage = chunk.usage or usage
            assert chunks >= 2 and usage is not None and usage.completion_tokens >= 1
