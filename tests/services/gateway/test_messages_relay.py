"""`/v1/messages` and `/v1/messages/count_tokens` through a real gateway with the `anthropic`
client: translation to the chat backend, streaming, both auth headers, and every error — the
key check's 401 and 429 included — in Anthropic's shape, so the client raises its own classes."""

from __future__ import annotations

import aiohttp
import anthropic
import pytest

from tests.services.gateway.protocol_stack import protocol_stack
from tests.services.gateway.test_metrics import samples, value

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def stack(tmp_path):
    async with protocol_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client():
    """Makes clients (`client(gw, key)`) and closes them on the test's loop."""
    made: list[anthropic.AsyncAnthropic] = []

    def make(gw, key: str | None = None, **kwargs) -> anthropic.AsyncAnthropic:
        made.append(anthropic.AsyncAnthropic(base_url=gw.api, api_key=key, max_retries=0, timeout=20, **kwargs))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def test_create_stream_and_count(stack, client):
    gw, backend, keys = stack
    c = client(gw, keys["admin"])
    before = await samples(gw)
    m = await c.messages.create(model="claude-sonnet-4-5", max_tokens=32, messages=MSG,
                                system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                                thinking={"type": "enabled", "budget_tokens": 1024}, metadata={"user_id": "u1"},
                                extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert m.content[0].text == "hello from " + backend.runtime.instance_id
    assert m.stop_reason == "end_turn" and m.usage.input_tokens == 7 and m.model == "tiny-chat"
    assert backend.service.chats[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    async with c.messages.stream(model="claude-sonnet-4-5", max_tokens=32, messages=MSG) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "t0 t1 t2 t3 t4 " and final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
    count = await c.messages.count_tokens(model="claude-sonnet-4-5", messages=MSG)
    assert count.input_tokens == 7 and backend.service.chats[-1]["max_tokens"] == 1
    after = await samples(gw)
    for op, n in (("messages.create", 2), ("messages.count_tokens", 1)):
        labels = {"operation": op, "model": "tiny-chat", "status": "200", "instance": backend.runtime.instance_id}
        assert value(after, "nexus_gateway_requests_total", **labels) - \
            value(before, "nexus_gateway_requests_total", **labels) == n


async def test_both_auth_headers(stack, client):
    gw, _, keys = stack
    bearer = client(gw, auth_token=keys["admin"])
    m = await bearer.messages.create(model="tiny-chat", max_tokens=8, messages=MSG)
    assert m.content[0].type == "text"


async def test_errors_in_anthropic_shape(stack, client):
    gw, _, keys = stack
    with pytest.raises(anthropic.AuthenticationError) as e:
        await client(gw, "nx-wrong-key").messages.create(model="tiny-chat", max_tokens=8, messages=MSG)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    c = client(gw, keys["admin"])
    with pytest.raises(anthropic.BadRequestError) as e:
        # messages.create() itself refuses to send it; the client's raw post sends it as a tool would
        await c.post("/v1/messages", body={"model": "tiny-chat", "messages": MSG}, cast_to=object)
    assert e.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "max_tokens: Field required"}}
    with pytest.raises(anthropic.NotFoundError) as e:
        await c.messages.create(model="no-such-model", max_tokens=8, messages=MSG)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError, match="web_search"):
        await c.messages.create(model="tiny-chat", max_tokens=8, messages=MSG,
                                tools=[{"type": "web_search_20250305", "name": "web_search"}])
    with pytest.raises(anthropic.PermissionDeniedError) as e:  # a key limited to other operations
        await client(gw, keys["chat-only"]).messages.create(model="tiny-chat", max_tokens=8, messages=MSG)
    assert e.value.body["error"]["type"] == "permission_error"
    slow = client(gw, keys["slow"])
    await slow.messages.create(model="tiny-chat", max_tokens=8, messages=MSG)
    with pytest.raises(anthropic.RateLimitError) as e:
        await slow.messages.create(model="tiny-chat", max_tokens=8, messages=MSG)
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.response.headers["retry-after"]


async def test_model_scope_by_requested_name(stack, client):
    gw, _, keys = stack
    c = client(gw, keys["messages-only"])  # may use claude-sonnet-4-5 (our alias) only
    assert (await c.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)).content
    with pytest.raises(anthropic.PermissionDeniedError):
        await c.messages.create(model="tiny-chat", max_tokens=8, messages=MSG)


async def test_bad_json_and_still_serving(stack):
    gw, _, keys = stack
    async with aiohttp.ClientSession(headers={"x-api-key": keys["admin"]}) as s:
        async with s.post(gw.api + "/v1/messages", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.post(gw.api + "/v1/messages", data=b"x", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415 and (await r.json())["type"] == "error"
        async with s.post(gw.api + "/v1/messages/count_tokens", json={"model": "tiny-chat"}) as r:
            assert r.status == 400 and (await r.json())["error"]["message"].startswith("messages")
        async with s.get(gw.api + "/health") as r:
            assert r.status == 200


async def test_upstream_dying_mid_stream_is_an_error_event(stack, client):
    gw, _, keys = stack
    with pytest.raises(anthropic.APIStatusError, match="ended the stream early"):
        async with client(gw, keys["admin"]).messages.stream(model="dies-midstream", max_tokens=8, messages=MSG) as s:
            async for _ in s:
                pass
