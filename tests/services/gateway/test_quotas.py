"""Token quotas (`--tpm`) that hold across gateways: two real gateway processes on one real etcd,
the OpenAI test double behind both (it reports usage, in streams when asked for include_usage),
one key with --tpm 200, requests alternated between the gateways.

Accepted tokens ≤ 200 + the documented overshoot bound (quotashare.py): (G − 1) × admission
rate × period, plus one reservation in flight; both gateways refuse with 429, Retry-After and
x-ratelimit-*-tokens; an unlimited key is never refused; a killed gateway's share expires with its
lease: the other's remaining tokens grow by what it had used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import aiohttp

from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.quotas import estimate
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import make_keys, run_gateway, serve

INTERNAL = "internal-secret-token"
TPM = 200
PERIOD = 0.5  # QuotaShare's default publish period


def chat(stream: bool) -> dict:
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def call(http: aiohttp.ClientSession, gw, key: str, stream: bool = False) -> tuple[int, int, dict, dict]:
    """(status, total tokens the client was told, headers, error body)."""
    async with http.post(gw.api + "/v1/chat/completions", json=chat(stream),
                         headers={"Authorization": f"Bearer {key}"}) as r:
        text = await r.text()
        headers = dict(r.headers)
        if r.status != 200:
            return r.status, 0, headers, json.loads(text)
        if not stream:
            return 200, json.loads(text)["usage"]["total_tokens"], headers, {}
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        usage = [e["usage"] for e in events if e.get("usage")]
        assert len(usage) == 1, text  # the client asked for include_usage: it gets it once
        return 200, usage[0]["total_tokens"], headers, {}


def assert_trio(headers, unit: str, limit: int) -> None:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-<unit> on an answer: well formed."""
    assert headers[f"x-ratelimit-limit-{unit}"] == str(limit), headers
    assert int(headers[f"x-ratelimit-remaining-{unit}"]) >= 0
    assert headers[f"x-ratelimit-reset-{unit}"].endswith("s")


@contextlib.asynccontextmanager
async def two_gateways(tmp_path, etcd, keys: dict, double: type[OpenAIDouble] = OpenAIDouble):
    plain = make_keys(tmp_path / "keys", keys)
    async with serve(double, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as backend:
        env = {"NEXUS_ETCD_ENDPOINTS": etcd.endpoint, "NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys"),
               "NEXUS_GATEWAY_STATIC_BACKENDS": json.dumps({"testai": backend.url}),
               "NEXUS_INTERNAL_TOKEN": INTERNAL}
        with contextlib.ExitStack() as stack:  # entered in threads: the backend runs on this loop
            a = await asyncio.to_thread(stack.enter_context, run_gateway(tmp_path, env))
            b = await asyncio.to_thread(stack.enter_context, run_gateway(tmp_path, env))
            async with aiohttp.ClientSession() as http:
                for gw in (a, b):
                    async def routable(gw=gw) -> bool:
                        return (await call(http, gw, plain["free"]))[0] == 200

                    await async_wait_for(routable, timeout=20, what="chat routable through the gateway")

                    async def two_seen(gw=gw) -> bool:
                        q = (await asyncio.to_thread(gw.metadata))["extra"]["quotas"]
                        return q["shared"] and q["connected"] and q["gateways"] == 2

                    await async_wait_for(two_seen, timeout=20, what="both gateways in the quota share")
                yield a, b, http, plain, backend


async def test_tpm_holds_across_two_gateways_and_a_dead_ones_share_expires(tmp_path, etcd):
    async with two_gateways(tmp_path, etcd, {"limited": {"tpm": TPM}, "free": {}}) as (a, b, http, keys, _):
        accepted, refused = 0, {a.port: 0, b.port: 0}
        started, i, tail = time.monotonic(), 0, []
        while len(tail) < 6 or any(s == 200 for s in tail[-6:]):
            gw = (a, b)[i % 2]
            status, tokens, headers, error = await call(http, gw, keys["limited"], stream=i % 3 == 2)
            assert_trio(headers, "tokens", TPM)
            if status == 200:
                accepted += tokens
            else:
                assert status == 429 and error["error"]["code"] == "rate_limit_exceeded", error
                assert int(headers["Retry-After"]) >= 1
                refused[gw.port] += 1
            tail.append(status)
            free = await call(http, gw, keys["free"])
            assert free[0] == 200 and "x-ratelimit-limit-tokens" not in free[2]  # never refused
            i += 1
            assert i < 400, "the limit never bit"
        elapsed = time.monotonic() - started
        reserve = estimate(json.dumps(chat(True)).encode())
        bound = (2 - 1) * (accepted / elapsed) * PERIOD + reserve
        print(f"accepted {accepted} tokens of tpm {TPM} in {elapsed:.2f}s; bound {TPM + bound:.0f}")
        assert accepted <= TPM + bound
        assert accepted >= TPM - reserve  # the global limit, not half of it
        assert refused[a.port] and refused[b.port]

        # a dies without a goodbye: its share expires with its lease, and b's remaining
        # tokens grow by what a had used (b's own use stays counted)
        async def remaining(gw) -> int:
            return int((await call(http, gw, keys["limited"]))[2]["x-ratelimit-remaining-tokens"])

        async def b_sees_the_sum() -> bool:  # within a period or two of the last request
            return await remaining(b) == max(0, TPM - accepted)

        await async_wait_for(b_sees_the_sum, timeout=10, what="b's view includes a's use")
        before = await remaining(b)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)

        async def alone() -> bool:
            return (await asyncio.to_thread(b.metadata))["extra"]["quotas"]["gateways"] == 1

        await async_wait_for(alone, timeout=20, what="a's quota share expired with its lease")
        after = await remaining(b)
        assert after > before, (before, after)


def test_keys_add_tpm_round_trips(tmp_path):
    import subprocess
    import sys

    from nexusd.services.gateway.keys import read_keys

    path = tmp_path / "keys"
    run = [sys.executable, "-m", "nexusd.cli", "keys", "add", "--keys-file", str(path)]
    assert subprocess.run([*run, "alice", "--tpm", "200"], capture_output=True).returncode == 0
    (key,) = read_keys(path).values()
    assert key.tpm == 200 and key.to_json()["tpm"] == 200
    bad = subprocess.run([*run, "bob", "--tpm", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--tpm" in bad.stderr


def test_reservation_estimate():
    assert estimate(b'{"max_tokens": 5}') == len(b'{"max_tokens": 5}') // 4 + 5
    assert estimate(b'{"max_completion_tokens": 9, "max_tokens": 5}') == 11 + 9
    assert estimate(b"{}") == 256 and estimate(b"[1]") == 256  # absent: the default completion
    assert estimate(b'{"n": 3, "max_tokens": 5}') == 24 // 4 + 3 * 5  # n choices, each up to max_tokens
    assert estimate(b'{"n":2}') == 7 // 4 + 2 * 256 and estimate(b'{"n": 0}') == 8 // 4 + 256
