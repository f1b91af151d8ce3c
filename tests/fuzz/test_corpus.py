"""A fixed hostile corpus against the real gateway and services (conftest.py), over raw sockets
where a client library would not send the request: absolute-form and asterisk-form targets,
`..` and `%2F` paths, invalid UTF-8, huge numbers and strings, duplicate keys, nested JSON,
oversized headers, a body sent a byte a second, CR/LF in header values, and every defect of
issue 11 that can be reached from a client. After each: no 5xx, the gateway still ready and
every instance still routable."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.services.gateway.rawhttp import RawResponse, http, parse_response, send_raw


@pytest.fixture
def gw(stack):
    yield stack
    states = {i["base_url"]: i["state"] for i in stack.gateway.metadata()["extra"]["instances"]}
    assert set(states.values()) == {"ready"}, states  # nothing ejected, nothing unready
    assert stack.ready()


def auth(stack, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.key}", **headers}


def jpost(stack, path: str, body: bytes, **headers: str) -> bytes:
    return http("POST", path, body=body, headers=auth(stack, **{"Content-Type": "application/json", **headers}))


def envelope(resp: RawResponse, status: int, code: str | None = None) -> dict:
    assert resp.status == status, (resp.status, resp.body[:300])
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code, error
    return error


def llm(stack) -> str:
    return stack.models["chat.completions"][0]


def image_maker(stack) -> str:
    return next(i["instance_id"] for i in stack.gateway.metadata()["extra"]["instances"] if i["service"] == "images")


async def test_absolute_form_targets(gw):
    resp = await send_raw(gw.gateway.api, http("GET", "http://x/v1/models", headers=auth(gw)))
    assert resp.status == 200 and resp.json()["object"] == "list"
    maker = image_maker(gw)
    for _ in range(5):  # without a key, more times than eject_after
        resp = await send_raw(gw.gateway.api, http("GET", f"http://evil.example:1/v1/images/files/{maker}.a.png"))
        envelope(resp, 404)
        assert resp.headers["x-nexus-instance"] == maker  # the images service's own 404


async def test_asterisk_form_target(gw):
    resp = await send_raw(gw.gateway.api, http("OPTIONS", "*", headers=auth(gw)))
    assert 400 <= resp.status < 500 and resp.headers["server"] == "nexusd"


@pytest.mark.parametrize("path", [
    "/v1/../v1/models", "/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/images/files/..%2F..%2Fetc%2Fpasswd",
    "/v1/images/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/v1/chat%2Fcompletions", "//v1/models", "/%2e%2e/",
])
async def test_dot_dot_and_encoded_slash_paths(gw, path):
    resp = await send_raw(gw.gateway.api, http("GET", path, headers=auth(gw)))
    assert resp.status in (200, 404, 405), (path, resp.status)
    assert b"root:" not in resp.body
    if resp.status != 200:
        envelope(resp, resp.status)


async def test_dot_dot_to_the_file_route_of_a_real_instance(gw):
    maker = image_maker(gw)
    for tail in ("..%2F..%2F..%2Fetc%2Fpasswd", "a%2F..%2F..%2Fetc%2Fpasswd", "..", "a.png%00.png"):
        resp = await send_raw(gw.gateway.api, http("GET", f"/v1/images/files/{maker}.{tail}"))
        envelope(resp, resp.status)
        assert resp.status in (400, 404) and b"root:" not in resp.body


async def test_invalid_utf8(gw):
    envelope(await send_raw(gw.gateway.api, jpost(gw, "/v1/chat/completions", b'{"model": "\xff\xfe"}')),
             400, "invalid_json")
    resp = await send_raw(gw.gateway.api, http("GET", "/v1/models/%FF%FE", headers=auth(gw)))
    envelope(resp, 404)
    raw = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    resp = await send_raw(gw.gateway.api, raw)
    assert resp.status in (400, 401)


@pytest.mark.parametrize("body", [
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "seed": -' + b"9" * 5000 + b"}",
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e309}',
    b'{"model": "' + b"m" * 100_000 + b'", "messages": [{"role": "user", "content": "hi"}]}',
])
async def test_huge_numbers_and_strings(gw, body):
    resp = await send_raw(gw.gateway.api, jpost(gw, "/v1/chat/completions", body.replace(b'"M"', json.dumps(llm(gw)).encode())))
    envelope(resp, 400)


async def test_huge_bodies(gw):
    prompt = json.dumps({"prompt": "x" * (3 << 20)}).encode()  # under the gateway's limit, over the service's
    envelope(await send_raw(gw.gateway.api, jpost(gw, "/v1/images/generations", prompt)), 413)
    big = json.dumps({"prompt": "x" * (5 << 20)}).encode()  # over the gateway's
    envelope(await send_raw(gw.gateway.api, jpost(gw, "/v1/images/generations", big)), 413)


async def test_duplicate_keys_route_as_the_service_reads_them(gw):
    # Python's json keeps the last duplicate, in the gateway and in every service alike
    model = json.dumps(llm(gw))
    body = f'{{"model": "stub", "model": {model}, "messages": [{{"role": "user", "content": "hi"}}]}}'.encode()
    resp = await send_raw(gw.gateway.api, jpost(gw, "/v1/chat/completions", body))
    assert resp.status == 200 and resp.json()["model"] == llm(gw)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/images/generations",
                                  "/v1/audio/speech", "/v1/embeddings"])
async def test_nested_json(gw, path):
    body = b'{"model": "x", "input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    envelope(await send_raw(gw.gateway.api, jpost(gw, path, body)), 400, "invalid_json")


async def test_oversized_headers(gw):
    resp = await send_raw(gw.gateway.api, http("GET", "/v1/models", headers=auth(gw, **{"X-Big": "a" * 100_000})))
    assert resp.status in (400, 431) and resp.headers["server"] == "nexusd"
    many = {f"X-H{i}": "v" for i in range(500)}
    resp = await send_raw(gw.gateway.api, http("GET", "/v1/models", headers=auth(gw, **many)))
    assert resp.status in (200, 400, 431)


async def test_body_a_byte_a_second_is_cut(gw):
    host, port = gw.gateway.api.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = jpost(gw, "/v1/chat/completions", b"")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 100")
    writer.write(head)
    started = time.monotonic()
    data = b""
    try:
        for byte in b'{"model": "x", "messages": [' * 4:  # one byte a second, never all 100
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(65536), 1.0)
            except TimeoutError:
                continue
            break
    finally:
        writer.close()
    resp = parse_response(data)
    envelope(resp, 408, "request_timeout")
    assert time.monotonic() - started < 20  # the gateway's body timeout (2 s here) cut it


@pytest.mark.parametrize("raw", [
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Test: a\rb\r\nConnection: close\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Test: a\nInjected: b\r\nConnection: close\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x00b\r\nConnection: close\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Test: a\r\n b\r\nConnection: close\r\n\r\n",
    b"GET /v1/mod\r\nels HTTP/1.1\r\nHost: x\r\n\r\n",
])
async def test_cr_lf_in_header_values_and_targets(gw, raw):
    resp = await send_raw(gw.gateway.api, raw)
    assert 400 <= resp.status < 500 and resp.headers["server"] == "nexusd"


async def test_request_id_with_controls_is_replaced(gw):
    resp = await send_raw(gw.gateway.api, http("GET", "/v1/models", headers=auth(gw, **{"X-Request-ID": "a\tb"})))
    assert resp.status == 200 and "\t" not in resp.headers["x-request-id"]


# --- issue 11's defects, as a client can reach them -------------------------------------------
async def test_model_for_another_operation(gw):
    stub = gw.models["images.generate"][0]
    body = json.dumps({"model": stub, "messages": [{"role": "user", "content": "hi"}]}).encode()
    error = envelope(await send_raw(gw.gateway.api, jpost(gw, "/v1/chat/completions", body)), 400,
                     "model_not_supported")
    assert "images.generate" in error["message"]


async def test_empty_completion_prompt(gw):
    body = json.dumps({"model": gw.models["completions"][0], "prompt": ""}).encode()
    envelope(await send_raw(gw.gateway.api, jpost(gw, "/v1/completions", body)), 400)


async def test_file_fetches_do_not_starve_generation(gw):
    maker = image_maker(gw)
    fetches = [send_raw(gw.gateway.api, http("GET", f"/v1/images/files/{maker}.bogus{i}.png")) for i in range(20)]
    body = json.dumps({"prompt": "a red square", "size": "64x64", "response_format": "b64_json"}).encode()
    results = await asyncio.gather(*fetches, send_raw(gw.gateway.api, jpost(gw, "/v1/images/generations", body)))
    assert results[-1].status == 200, results[-1].body[:300]
    assert {r.status for r in results[:-1]} <= {404, 429}


async def test_log_forging_path_gets_an_envelope(gw):
    resp = await send_raw(gw.gateway.api, http("GET", "/v1/x%0A12:00:00%20I%20forged%0D", headers=auth(gw)))
    envelope(resp, 404)
    assert resp.headers["server"] == "nexusd"


async def test_wrong_key_burst_is_throttled_before_hashing(gw):
    statuses = []
    for i in range(40):
        resp = await send_raw(gw.gateway.api, http("GET", "/v1/models", headers={
            "Authorization": f"Bearer nx-000000000000-guess{i}"}))
        statuses.append(resp.status)
    assert statuses.count(429) >= 10 and set(statuses) == {401, 429}
    # a client with a valid key (verified before) is not affected
    resp = await send_raw(gw.gateway.api, http("GET", "/v1/models", headers=auth(gw)))
    assert resp.status == 200
