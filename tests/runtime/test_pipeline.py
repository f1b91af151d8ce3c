"""The runtime's request pipeline on a real in-process server: request ids, OpenAI error envelopes for
every failure, per-route body limits, pass-through routes and the internal token."""

from __future__ import annotations

import aiohttp
import pytest

from nexusd.runtime.settings import SharedSettings
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess


@pytest.fixture
async def probe():
    async with serve_inprocess(ProbeService) as server, aiohttp.ClientSession(server.url) as http:
        yield http


def assert_envelope(body: dict, type_: str, code: str | None = None) -> dict:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_ and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


async def test_request_id_is_taken_or_created(probe):
    async with probe.get("/health", headers={"X-Request-ID": "abc-123"}) as r:
        assert r.headers["X-Request-ID"] == "abc-123"
    async with probe.get("/health") as r:
        created = r.headers["X-Request-ID"]
        assert len(created) == 32 and int(created, 16) >= 0
    async with probe.get("/v1/stream", headers={"X-Request-ID": "stream-1"}) as r:  # streamed
        assert r.headers["X-Request-ID"] == "stream-1"
        assert (await r.text()).count("data:") == 3
    async with probe.get("/v1/nope", headers={"X-Request-ID": "err-1"}) as r:  # and on errors
        assert r.status == 404 and r.headers["X-Request-ID"] == "err-1"
    for bad in ("has space", "x" * 200):
        async with probe.get("/health", headers={"X-Request-ID": bad}) as r:
            assert r.headers["X-Request-ID"] != bad


async def test_unknown_route_is_404_envelope(probe):
    async with probe.get("/v1/nope") as r:
        assert r.status == 404
        assert_envelope(await r.json(), "not_found_error", "not_found")


async def test_wrong_method_is_405_envelope_with_allow(probe):
    async with probe.get("/v1/items") as r:
        assert r.status == 405
        assert "POST" in r.headers["Allow"]
        assert_envelope(await r.json(), "invalid_request_error", "method_not_allowed")


async def test_malformed_json_is_400(probe):
    async with probe.post("/v1/items", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert_envelope(await r.json(), "invalid_request_error", "invalid_json")
    async with probe.post("/v1/items", json=[1, 2]) as r:
        assert r.status == 400
        assert_envelope(await r.json(), "invalid_request_error", "invalid_json")


async def test_validation_error_names_the_field(probe):
    async with probe.post("/v1/items", json={"name": "ok", "count": 99}) as r:
        assert r.status == 400
        err = assert_envelope(await r.json(), "invalid_request_error", "invalid_value")
        assert err["param"] == "count"
    async with probe.post("/v1/items", json={"count": 1}) as r:
        err = assert_envelope(await r.json(), "invalid_request_error", "missing_required_parameter")
        assert err["param"] == "name"
    async with probe.post("/v1/items", json={"name": "fine", "count": 2}) as r:
        assert r.status == 200 and await r.json() == {"name": "fine", "count": 2}


async def test_wrong_content_type_is_415(probe):
    async with probe.post("/v1/items", data=b"name=x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
        assert_envelope(await r.json(), "invalid_request_error", "unsupported_media_type")


async def test_body_limit_is_per_route(probe):
    body = b'{"name": "abcdefghij"}'  # 22 bytes: over /v1/small's 16, fine for /v1/items
    async with probe.post("/v1/small", data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert_envelope(await r.json(), "invalid_request_error", "request_too_large")
    async with probe.post("/v1/items", data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200


async def test_chunked_body_over_the_limit_is_413(probe):
    async def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(4):
            yield b'{"name": "x"    '

    async with probe.post("/v1/small", data=chunks(), headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert_envelope(await r.json(), "invalid_request_error", "request_too_large")


async def test_unhandled_exception_is_500_without_details(probe, caplog):
    async with probe.get("/v1/boom", headers={"X-Request-ID": "boom-1"}) as r:
        assert r.status == 500
        err = assert_envelope(await r.json(), "server_error", "internal_error")
        assert "internal detail" not in err["message"] and "Traceback" not in err["message"]
        assert "boom-1" in err["message"]
    logged = [rec for rec in caplog.records if rec.name == "nexusd.errors" and rec.exc_info]
    assert logged and "internal detail" in str(logged[0].exc_info[1])  # the trace goes to the log
    async with probe.get("/health") as r:  # and the process keeps serving
        assert r.status == 200


async def test_passthrough_route_keeps_its_own_error_shape(probe):
    async with probe.post("/api/native", data=b"anything") as r:
        assert r.status == 400 and await r.json() == {"error": "native shape"}
    async with probe.post("/api/native?missing=1") as r:
        assert r.status == 404 and await r.text() == "native not found"


async def test_internal_token_guards_api_routes_only():
    shared = SharedSettings(internal_token="s3cret-token")
    async with serve_inprocess(ProbeService, shared) as server, aiohttp.ClientSession(server.url) as http:
        async with http.post("/v1/items", json={"name": "a"}) as r:
            assert r.status == 401
            assert_envelope(await r.json(), "authentication_error", "invalid_internal_token")
        async with http.post("/v1/items", json={"name": "a"}, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.post("/v1/items", json={"name": "a"},
                             headers={"Authorization": "Bearer s3cret-token"}) as r:
            assert r.status == 200
        async with http.post("/v1/items", json={"name": "a"},
                             headers={"X-Nexus-Internal-Token": "s3cret-token"}) as r:
            assert r.status == 200
        for path in ("/health", "/readyz", "/metrics", "/v1/metadata", "/v1/public"):
            async with http.get(path) as r:
                assert r.status == 200, path


async def test_a_service_guard_runs_before_every_handler_and_refuses_with_an_envelope():
    from nexusd.runtime.errors import ApiError

    seen: list[str] = []

    class Guarded(ProbeService):
        def guard(self, listener):  # type: ignore[no-untyped-def]
            def check(request) -> None:  # type: ignore[no-untyped-def]
                seen.append(request.path)
                if request.headers.get("X-Let-In") != "yes":
                    raise ApiError(403, "not you", code="guarded")
            return check

    async with serve_inprocess(Guarded) as server, aiohttp.ClientSession(server.url) as http:
        for path in ("/v1/items", "/v1/nope"):  # a route and an unmatched one
            async with http.post(path, json={"name": "a"}, headers={"X-Request-ID": "g-1"}) as r:
                assert r.status == 403 and r.headers["X-Request-ID"] == "g-1"
                assert_envelope(await r.json(), "permission_error", "guarded")
        async with http.post("/v1/items", json={"name": "a"}, headers={"X-Let-In": "yes"}) as r:
            assert r.status == 200
    assert seen[:3] == ["/v1/items", "/v1/nope", "/v1/items"]


def assert_anthropic(body: dict, type_: str) -> dict:
    """Anthropic's error shape: {"type": "error", "error": {"type", "message"}}."""
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == type_ and body["error"]["message"]
    return body["error"]


def assert_ollama(body: dict) -> str:
    """Ollama's error shape: {"error": "message"}."""
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


async def test_anthropic_route_answers_every_error_in_anthropic_shape(probe):
    async with probe.post("/v1/messages", json={"count": 1}) as r:  # validation
        assert r.status == 400
        assert "name" in assert_anthropic(await r.json(), "invalid_request_error")["message"]
    async with probe.post("/v1/messages", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert_anthropic(await r.json(), "invalid_request_error")
    async with probe.post("/v1/messages", data=b"x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
        assert_anthropic(await r.json(), "invalid_request_error")
    async with probe.post("/v1/messages", json={"name": "x" * 100}) as r:  # over its 64 bytes
        assert r.status == 413
        assert_anthropic(await r.json(), "request_too_large")
    async with probe.get("/v1/messages") as r:  # wrong method: the route's format, not the catch-all's
        assert r.status == 405 and "POST" in r.headers["Allow"]
        assert_anthropic(await r.json(), "invalid_request_error")
    async with probe.get("/v1/messages/boom", headers={"X-Request-ID": "a-boom"}) as r:
        assert r.status == 500
        message = assert_anthropic(await r.json(), "api_error")["message"]
        assert "a-boom" in message and "internal detail" not in message
    async with probe.post("/v1/messages", json={"name": "ok"}) as r:
        assert r.status == 200


async def test_ollama_route_answers_every_error_in_ollama_shape(probe):
    async with probe.post("/api/items", json={"count": 9}) as r:
        assert r.status == 400 and "name" in assert_ollama(await r.json())
    async with probe.post("/api/items", json={"name": "x" * 100}) as r:
        assert r.status == 413 and assert_ollama(await r.json())
    async with probe.get("/api/items") as r:
        assert r.status == 405 and assert_ollama(await r.json())
    async with probe.get("/api/boom") as r:
        assert r.status == 500 and assert_ollama(await r.json())
    async with probe.get("/api/nothing-here") as r:  # unmatched under the declared /api/ prefix
        assert r.status == 404 and assert_ollama(await r.json())
    async with probe.get("/v1/nothing-here") as r:  # elsewhere: OpenAI's
        assert r.status == 404
        assert_envelope(await r.json(), "not_found_error", "not_found")


async def test_internal_token_and_guard_refusals_use_the_route_format():
    from nexusd.runtime.errors import ApiError

    class Guarded(ProbeService):
        def guard(self, listener):  # type: ignore[no-untyped-def]
            def check(request) -> None:  # type: ignore[no-untyped-def]
                if request.headers.get("X-Let-In") != "yes":
                    raise ApiError(429, "slow down", code="rate_limited", headers={"Retry-After": "3"})
            return check

    shared = SharedSettings(internal_token="s3cret-token")
    async with serve_inprocess(Guarded, shared) as server, aiohttp.ClientSession(server.url) as http:
        async with http.post("/v1/messages", json={"name": "a"}) as r:
            assert r.status == 401
            assert_anthropic(await r.json(), "authentication_error")
        async with http.post("/api/items", json={"name": "a"}) as r:
            assert r.status == 401 and assert_ollama(await r.json())
        token = {"Authorization": "Bearer s3cret-token"}
        async with http.post("/v1/messages", json={"name": "a"}, headers=token) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "3"
            assert_anthropic(await r.json(), "rate_limit_error")
        async with http.post("/api/nope", json={"name": "a"}, headers=token) as r:
            assert r.status == 429 and assert_ollama(await r.json()) == "slow down"
        async with http.post("/v1/items", json={"name": "a"}, headers=token) as r:
            assert r.status == 429
            assert_envelope(await r.json(), "rate_limit_error", "rate_limited")
