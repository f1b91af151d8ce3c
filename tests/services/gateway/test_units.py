"""The small pieces on their own: key format and file parsing, the rate limiter's arithmetic,
the balancer's choice, queue and ejection, and the relay's lock-free metrics."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.balancer import Balancer
from nexusd.services.gateway.instances import Instance
from nexusd.services.gateway.keys import (
    KeyFileError,
    KeyStore,
    new_key,
    parse_expiry,
    read_keys,
    split_key,
    write_keys,
)
from nexusd.services.gateway.ratelimit import RateLimiter
from nexusd.services.gateway.settings import env_base_urls


def test_key_shape_and_lookup(tmp_path):
    plain, record = new_key("a")
    key_id, secret = split_key(plain)
    assert key_id == record.id and len(secret) >= 43  # 32 bytes, base64url
    path = tmp_path / "k"
    write_keys(path, [record])
    store = KeyStore(path)
    assert store.reload() == 1
    assert store.authenticate(f"Bearer {plain}", 0)[0] == record
    assert store.authenticate(f"Bearer {plain}", 0)[0] == record  # the verified-header cache
    assert store.authenticate(f"bearer {plain}x", 0)[0] is None
    assert store.authenticate(f"Basic {plain}", 0)[1].startswith("Missing API key")
    write_keys(path, [])
    store.reload()  # revocation also empties the cache
    assert store.authenticate(f"Bearer {plain}", 0)[0] is None


def test_a_broken_file_on_reload_keeps_the_previous_keys(tmp_path):
    """docs/gateway.md: a reload (SIGHUP) that finds the file broken keeps the keys it had."""
    plain, record = new_key("a")
    path = tmp_path / "k"
    write_keys(path, [record])
    store = KeyStore(path)
    store.reload()
    path.write_text("{half a line\n")
    with pytest.raises(KeyFileError):
        store.reload()
    assert store.authenticate(f"Bearer {plain}", 0)[0] == record


@pytest.mark.parametrize("line", [
    "{not json", '{"id": "a"}', '{"id": "a", "sha256": "zz", "name": "n"}',
    '{"id": "a", "sha256": "' + "0" * 64 + '", "name": "n", "rpm": 0}',
    '{"id": "a", "sha256": "' + "0" * 64 + '", "name": "n", "max_concurrent": 0}',
])
def test_bad_key_file_lines_are_named(tmp_path, line):
    path = tmp_path / "k"
    path.write_text("# comment\n\n" + line + "\n")
    with pytest.raises(KeyFileError, match="line 3"):
        read_keys(path)


def test_expiry_forms():
    assert parse_expiry("2030-01-01") == parse_expiry("2030-01-01T00:00:00Z")
    assert parse_expiry("1d") > parse_expiry("1h")
    with pytest.raises(ValueError):
        parse_expiry("soon")


def test_rate_limiter_refills():
    limiter = RateLimiter()
    assert limiter.take("k", 60, 100.0) == 0
    for _ in range(59):
        assert limiter.take("k", 60, 100.0) == 0
    wait = limiter.take("k", 60, 100.0)
    assert wait == pytest.approx(1.0)
    assert limiter.take("k", 60, 101.0) == 0  # one token back after a second


def test_env_base_urls():
    env = {"OLLAMA_BASE_URL": "http://h:11434/", "OPENAI_BASE_URL": "http://gw:8800/v1",
           "FOO_BASE_URL": "not a url", "TTS_BASE_URL": "https://t"}
    assert env_base_urls(env) == {"ollama": "http://h:11434", "tts": "https://t"}


def test_power_of_two_prefers_the_less_busy():
    balancer = Balancer(cooldown=5, eject_after=2, queue_timeout=1)
    idle, busy = Instance("http://a"), Instance("http://b")
    busy.outstanding = 5
    picks = Counter(balancer.pick([idle, busy]).base_url for _ in range(200))
    assert picks == {"http://a": 200}  # with two instances both are always sampled
    even = [Instance(f"http://{i}") for i in range(3)]
    picks = Counter(balancer.pick(even).base_url for _ in range(600))
    assert len(picks) == 3 and min(picks.values()) > 100


def test_ejection_and_cooldown():
    balancer = Balancer(cooldown=60, eject_after=2, queue_timeout=1)
    a, b = Instance("http://a"), Instance("http://b")
    balancer.failed(a, connect=False)
    assert balancer.pick([a]) is a  # one 5xx is not enough
    balancer.failed(a, connect=False)
    assert balancer.pick([a, b]) is b and balancer.pick([a]) is None
    balancer.failed(b, connect=True)  # a connect error ejects at once
    assert balancer.pick([a, b]) is None


async def test_slots_queue_and_handoff():
    balancer = Balancer(cooldown=1, eject_after=1, queue_timeout=5)
    inst = Instance("http://a", max_inflight=1, max_queue=1)
    await balancer.acquire(inst)
    waiter = asyncio.create_task(balancer.acquire(inst))
    await asyncio.sleep(0)
    with pytest.raises(ApiError) as full:
        await balancer.acquire(inst)
    assert full.value.status == 429 and full.value.headers["Retry-After"]
    balancer.release(inst)  # handed straight to the waiter
    await asyncio.wait_for(waiter, 1)
    assert inst.outstanding == 1 and not inst.waiters
    balancer.release(inst)
    assert inst.outstanding == 0
    json.dumps(inst.describe(0))  # the report is JSON-able


def test_relay_stats_render_as_prometheus_counters_and_histograms():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from nexusd.services.gateway.metrics import GatewayMetrics
    from nexusd.services.gateway.proxy import _usage

    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    m.observe("chat.completions", "tiny", 200, "i1", "admin", 0.003)
    m.observe("chat.completions", "tiny", 200, "i1", "admin", 0.2)
    m.observe("chat.completions", "tiny", 502, "i1", "admin", None)  # connect error: no latency
    m.add_tokens("admin", _usage(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}'))
    m.add_tokens("admin", _usage(b'{"usage":{"prompt_tokens":1,"total_tokens":1}}'))
    assert _usage(b'{"choices": []}') is None
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    req = (("instance", "i1"), ("model", "tiny"), ("operation", "chat.completions"))
    assert got[("nexus_gateway_requests_total", req + (("status", "200"),))] == 2
    assert got[("nexus_gateway_requests_total", req + (("status", "502"),))] == 1
    assert got[("nexus_gateway_key_requests_total", (("key", "admin"),))] == 3
    assert got[("nexus_gateway_key_tokens_total", (("key", "admin"), ("kind", "prompt_tokens")))] == 6
    assert got[("nexus_gateway_key_tokens_total", (("key", "admin"), ("kind", "completion_tokens")))] == 2
    op = (("operation", "chat.completions"),)
    assert got[("nexus_gateway_upstream_seconds_count", op)] == 2
    assert got[("nexus_gateway_upstream_seconds_sum", op)] == pytest.approx(0.203)
    assert got[("nexus_gateway_upstream_seconds_bucket", (("le", "0.005"),) + op)] == 1
    assert got[("nexus_gateway_upstream_seconds_bucket", (("le", "0.25"),) + op)] == 2
    assert got[("nexus_gateway_upstream_seconds_bucket", (("le", "+Inf"),) + op)] == 2


def test_mime_is_aiohttps_content_type_memoised():
    from aiohttp.test_utils import make_mocked_request

    from nexusd.services.gateway.proxy import mime

    for raw, want in [("application/json", "application/json"), ("Application/JSON; charset=utf-8", "application/json"),
                      ("text/event-stream", "text/event-stream"), (None, "application/octet-stream")]:
        headers = {"Content-Type": raw} if raw else {}
        for _ in range(2):  # the second time from the memo
            assert mime(make_mocked_request("POST", "/", headers=headers)) == want
