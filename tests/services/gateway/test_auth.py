"""API keys on 8800: missing, wrong, expired → 401 (unknown routes too, before any 404);
scope → 403; rate → 429 with Retry-After; the keys file holds no plaintext; the backend never
sees the client's key but gets the internal token and the request id."""

from __future__ import annotations

import aiohttp

from tests.services.gateway.conftest import INTERNAL

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


async def call(gateway, path, key=None, method="POST", json=None, headers=None):
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as s, s.request(method, gateway.api + path, json=json, headers=h) as r:
        return r.status, await r.json(), r.headers


async def test_missing_wrong_expired_key_401(gateway, keys):
    _, plain = keys
    admin = plain["admin"]
    key_id = admin.split("-")[1]
    for key in (None, "", "nx-nope", admin + "x", f"nx-{key_id}-wrongsecret", "sk-" + admin, plain["old"]):
        status, body, headers = await call(gateway, "/v1/chat/completions", key, json=CHAT)
        assert status == 401, key
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "authentication_error"
    assert (await call(gateway, "/v1/chat/completions", plain["old"], json=CHAT))[1]["error"]["message"] == "API key expired"


async def test_every_route_but_health_needs_a_key(gateway, keys):
    for method, path in [("GET", "/no/such/route"), ("GET", "/v1/models"), ("GET", "/metrics"),
                         ("GET", "/readyz"), ("GET", "/v1/metadata"), ("DELETE", "/v1/chat/completions")]:
        status, body, _ = await call(gateway, path, None, method=method)
        assert status == 401, path
    async with aiohttp.ClientSession() as s, s.get(gateway.api + "/health") as r:
        assert r.status == 200
    # with a key, the unknown route is a 404 envelope
    status, body, _ = await call(gateway, "/no/such/route", keys[1]["admin"], method="GET")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_scope_403(gateway, keys):
    key = keys[1]["chat-only"]
    assert (await call(gateway, "/v1/chat/completions", key, json=CHAT))[0] == 200
    status, body, _ = await call(gateway, "/v1/embeddings", key, json={"model": "tiny-embed", "input": "x"})
    assert status == 403 and body["error"]["code"] == "operation_not_allowed"
    assert body["error"]["type"] == "permission_error"
    status, body, _ = await call(gateway, "/v1/chat/completions", key, json={**CHAT, "model": "dies-midstream"})
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    # the scoped key sees only its models
    status, body, _ = await call(gateway, "/v1/models", key, method="GET")
    assert [m["id"] for m in body["data"]] == ["tiny-chat"]


async def test_rate_limit_429(gateway, keys):
    key = keys[1]["slow"]  # 2 requests per minute
    assert (await call(gateway, "/v1/chat/completions", key, json=CHAT))[0] == 200
    assert (await call(gateway, "/v1/chat/completions", key, json=CHAT))[0] == 200
    status, body, headers = await call(gateway, "/v1/chat/completions", key, json=CHAT)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 30
    # another key is not affected
    assert (await call(gateway, "/v1/chat/completions", keys[1]["admin"], json=CHAT))[0] == 200


async def test_keys_file_holds_no_plaintext(keys):
    path, plain = keys
    text = path.read_text()
    for key in plain.values():
        assert key not in text
        assert key.split("-", 2)[2] not in text  # nor the secret part alone
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_backend_never_sees_client_key(gateway, keys, backend):
    key = keys[1]["admin"]
    status, _, headers = await call(gateway, "/v1/chat/completions", key, json=CHAT,
                                    headers={"X-Request-ID": "trace-me-123"})
    assert status == 200
    assert headers["X-Request-ID"] == "trace-me-123"
    path, seen = backend.service.seen[-1]
    assert path == "/v1/chat/completions"
    lowered = {k.lower(): v for k, v in seen.items()}
    assert "authorization" not in lowered
    assert key not in repr(seen)
    assert lowered["x-nexus-internal-token"] == INTERNAL
    assert lowered["x-request-id"] == "trace-me-123"


def test_rewriting_the_keys_file_keeps_its_mode_and_group(tmp_path):
    """tmpfiles.d makes /etc/nexus/api-keys 0640 root:nexus so the gateway's user can read it;
    `nexusd keys add` must not reset that to 0600 (the gateway would lose its keys)."""
    import os
    import stat

    from nexusd.services.gateway.keys import new_key, read_keys, write_keys

    path = tmp_path / "api-keys"
    write_keys(path, [])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # a new file is private
    os.chmod(path, 0o640)
    write_keys(path, [new_key("alice")[1]])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert [k.name for k in read_keys(path).values()] == ["alice"]
