"""The small pieces on their own: key format and file parsing, the rate limiter's arithmetic,
and the balancer's choice, queue and ejection."""

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
