"""`/v1/responses` through a real gateway with the `openai` client: translation to the chat
backend, streaming, the per-key store (previous_response_id, GET, DELETE, 404s), key scopes,
the [aliases] table, metrics with their own operation label, bad input."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp import web

from nexusd.runtime import Endpoint, ModelInfo, Service
from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.harness import serve
from tests.services.gateway.protocol_stack import protocol_stack
from tests.services.gateway.test_metrics import samples, value


@pytest.fixture
async def stack(tmp_path):
    async with protocol_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client():
    """Makes clients (`client(gw, key)`) and closes them on the test's loop."""
    made: list[openai.AsyncOpenAI] = []

    def make(gw, key: str) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=key, max_retries=0, timeout=20))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def test_create_plain_and_streamed(stack, client):
    gw, backend, keys = stack
    c = client(gw, keys["admin"])
    before = await samples(gw)
    r = await c.responses.create(model="gpt-5", input="hi", instructions="Be brief.", max_output_tokens=20,
                                 reasoning={"effort": "low"}, include=["reasoning.encrypted_content"])
    assert r.output_text == "hello from " + backend.runtime.instance_id and r.status == "completed"
    assert r.usage.input_tokens == 7 and r.model == "tiny-chat"  # the alias reached the real model
    assert backend.service.chats[-1]["messages"] == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "hi"}]
    assert backend.service.chats[-1]["model"] == "tiny-chat" and backend.service.chats[-1]["max_tokens"] == 20
    stream = await c.responses.create(model="tiny-chat", input="hi", stream=True)
    types, text, final = [], "", None
    async for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert text == "t0 t1 t2 t3 t4 " and final.output_text == text and final.usage.output_tokens == 5
    after = await samples(gw)
    labels = {"operation": "responses.create", "model": "tiny-chat", "status": "200",
              "instance": backend.runtime.instance_id}
    assert value(after, "nexus_gateway_requests_total", **labels) - \
        value(before, "nexus_gateway_requests_total", **labels) == 2
    tokens = {"key": "admin", "kind": "completion_tokens"}
    assert value(after, "nexus_gateway_key_tokens_total", **tokens) - \
        value(before, "nexus_gateway_key_tokens_total", **tokens) == 10  # 5 each
    http = {"route": "/v1/responses", "method": "POST", "status": "200"}
    assert value(after, "nexus_http_requests_total", **http) >= 2


async def test_previous_response_id_get_and_delete(stack, client):
    gw, backend, keys = stack
    c = client(gw, keys["admin"])
    first = await c.responses.create(model="tiny-chat", input="My name is Ada.")
    second = await c.responses.create(model="tiny-chat", input="What is my name?", previous_response_id=first.id)
    assert backend.service.chats[-1]["messages"] == [
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}]
    assert second.previous_response_id == first.id
    got = await c.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    other = client(gw, keys["responses-only"])  # another key never reads it
    with pytest.raises(openai.NotFoundError) as e:
        await other.responses.retrieve(second.id)
    assert "gateway that answered" in e.value.message
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model="tiny-chat", input="x", previous_response_id=first.id)
    await c.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(second.id)
    unstored = await c.responses.create(model="tiny-chat", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(unstored.id)


async def test_streamed_answer_is_stored(stack, client):
    gw, backend, keys = stack
    c = client(gw, keys["admin"])
    stream = await c.responses.create(model="tiny-chat", input="hi", stream=True)
    rid = [e async for e in stream][-1].response.id
    await c.responses.create(model="tiny-chat", input="again", previous_response_id=rid)
    assert backend.service.chats[-1]["messages"][1] == {"role": "assistant", "content": "t0 t1 t2 t3 t4 "}


async def test_key_scopes(stack, client):
    gw, _, keys = stack
    with pytest.raises(openai.PermissionDeniedError):
        await client(gw, keys["chat-only"]).responses.create(model="tiny-chat", input="hi")
    r = await client(gw, keys["responses-only"]).responses.create(model="tiny-chat", input="hi")
    assert r.status == "completed"


async def test_aliases_reach_chat_too(stack, client):
    gw, backend, keys = stack
    chat = await client(gw, keys["admin"]).chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert chat.model == "tiny-chat" and backend.service.chats[-1]["model"] == "tiny-chat"
    async with aiohttp.ClientSession() as s, s.get(gw.obs + "/v1/metadata") as r:
        doc = await r.json()
    assert doc["extra"]["aliases"] == {"claude-sonnet-4-5": "tiny-chat", "gpt-5": "tiny-chat"}
    assert doc["extra"]["alias_conflicts"] == []


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "tiny-chat", "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools"),
    ({"model": "tiny-chat", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}, 400, "input[0].content[0]"),
    ({"model": "tiny-chat", "input": "x", "frobnicate": True}, 400, "frobnicate"),
    ({"model": "no-such-model", "input": "x"}, 404, "model"),
    ({"model": "tiny-chat", "input": "x", "previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
])
async def test_bad_input_is_an_openai_error(stack, body, status, param):
    gw, _, keys = stack
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {keys['admin']}"}) as s:
        async with s.post(gw.api + "/v1/responses", json=body) as r:
            assert r.status == status
            err = (await r.json())["error"]
            assert err["param"] == param and err["message"]
        async with s.post(gw.api + "/v1/responses", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
        async with s.get(gw.api + "/health") as r:
            assert r.status == 200  # still serving


class NativeDouble(Service):
    """A backend that speaks Responses and Messages itself (a test double of, e.g., a vLLM
    with /v1/responses): it answers with the body it got."""

    name = "nativeai"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("POST", "/v1/responses", self.echo, "responses.create", streaming=True),
                Endpoint("POST", "/v1/messages", self.echo, "messages.create", streaming=True)]

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id="native-model", operations=["responses.create", "messages.create"])]

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response({"native": True, "path": request.path, "body": await request.json()})


async def test_native_backends_get_the_request_as_is(tmp_path):
    async with protocol_stack(tmp_path, '[aliases]\n"gpt-5" = "native-model"\n') as (gw, _, keys), \
            serve(NativeDouble, SharedSettings(etcd_endpoints="", internal_token="")) as native:
        gw.service.instances.add(native.url, "test")

        async def routed() -> bool:
            return "responses.create" in gw.service.proxy.table.ops_with_models
        await async_wait_for(routed, timeout=10, what="native backend routable")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {keys['admin']}"}) as s:
            body = {"model": "native-model", "input": "hi", "reasoning": {"effort": "high"}}
            async with s.post(gw.api + "/v1/responses", json=body) as r:
                assert r.status == 200 and await r.json() == {"native": True, "path": "/v1/responses", "body": body}
                assert r.headers["X-Nexus-Instance"] == native.runtime.instance_id
            async with s.post(gw.api + "/v1/responses", json={"model": "gpt-5", "input": "hi"}) as r:
                assert (await r.json())["body"]["model"] == "native-model"  # our alias, resolved
            body = {"model": "native-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(gw.api + "/v1/messages", json=body) as r:
                assert (await r.json())["path"] == "/v1/messages"
            async with s.post(gw.api + "/v1/responses", json={"model": "tiny-chat", "input": "hi"}) as r:
                assert (await r.json())["object"] == "response"  # other models: translated to chat


async def test_upstream_dying_mid_stream_fails_the_response(stack, client):
    gw, _, keys = stack
    stream = await client(gw, keys["admin"]).responses.create(model="dies-midstream", input="hi", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.failed" and "ended the stream early" in events[-1].response.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
