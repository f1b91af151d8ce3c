"""The usage ledger (ledger.py, usagestore.py, `nexusd keys usage`): real gateway processes, a
real etcd, the real `openai` client; the OpenAI test double behind them reports usage (in
streams when asked for include_usage).

The ledger's totals, read by `nexusd keys usage --json` as a subprocess, equal the sums of the
`usage` the clients received, across two gateways on one etcd and, without etcd, from the
usage directory; a restarted gateway (same id) continues its day; a revoked key is shown by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.keys import read_keys, write_keys
from tests.helpers.net import async_wait_for
from tests.helpers.proc import REPO
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import make_keys, run_gateway, serve

INTERNAL = "internal-secret-token"
Totals = dict[tuple[str, str], list[int]]  # (key name, model) → [requests, prompt, completion]


def keys_usage(keys_file: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`nexusd keys usage` as an operator runs it: a subprocess, the settings from its environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    return subprocess.run([sys.executable, "-m", "nexusd.cli", "keys", "usage", "--keys-file", str(keys_file),
                           "--config-dir", str(keys_file.parent / "no-config"), *args],
                          env={**clean, **env}, capture_output=True, text=True, cwd=REPO, timeout=60)


def ledger_totals(keys_file: Path, env: dict[str, str]) -> Totals:
    done = keys_usage(keys_file, env, "--json")
    assert done.returncode == 0, done.stderr
    totals: Totals = {}
    for row in json.loads(done.stdout)["rows"]:
        have = totals.setdefault((row["key"], row["model"]), [0, 0, 0])
        for i, f in enumerate(("requests", "prompt_tokens", "completion_tokens")):
            have[i] += row[f]
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    return totals


async def use(gw, key: str, name: str, received: Totals, rounds: int) -> None:
    """Chat (streamed with include_usage and not) and embeddings through `gw`; adds the usage the
    client was told to `received`."""
    client = openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=key, max_retries=0, timeout=20)
    async with client:
        for i in range(rounds):
            if i % 2:
                stream = await client.chat.completions.create(
                    model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
                    stream_options={"include_usage": True})
                usage = [chunk.usage async for chunk in stream if chunk.usage]
                assert len(usage) == 1
                got = usage[0]
            else:
                got = (await client.chat.completions.create(
                    model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5)).usage
            have = received.setdefault((name, "tiny-chat"), [0, 0, 0])
            have[0] += 1
            have[1] += got.prompt_tokens
            have[2] += got.completion_tokens
        emb = (await client.embeddings.create(model="tiny-embed", input=["a", "b", "c"])).usage
        have = received.setdefault((name, "tiny-embed"), [0, 0, 0])
        have[0] += 1
        have[1] += emb.prompt_tokens


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


@contextlib.asynccontextmanager
async def backend():
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as server:
        yield server


def gateway_env(tmp_path: Path, backend_url: str, **extra: str) -> dict[str, str]:
    return {"NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys"), "NEXUS_INTERNAL_TOKEN": INTERNAL,
            "NEXUS_GATEWAY_STATIC_BACKENDS": json.dumps({"testai": backend_url}), **extra}


async def start(stack: contextlib.ExitStack, tmp_path: Path, env: dict[str, str]):
    gw = await asyncio.to_thread(stack.enter_context, run_gateway(tmp_path, env))

    async def routable() -> bool:
        return bool((await asyncio.to_thread(gw.metadata))["extra"]["models"])

    await async_wait_for(routable, timeout=20, what="routes through the gateway")
    return gw


async def test_ledger_totals_equal_client_usage_across_two_gateways_on_etcd(tmp_path, etcd):
    plain = make_keys(tmp_path / "keys", {"alice": {}, "bob": {}})
    cli_env = {"NEXUS_ETCD_ENDPOINTS": etcd.endpoint}
    async with backend() as be:
        base = gateway_env(tmp_path, be.url, NEXUS_ETCD_ENDPOINTS=etcd.endpoint, NEXUS_GATEWAY_USAGE_PERIOD="0.2")
        received: Totals = {}
        with contextlib.ExitStack() as stack:
            a = await start(stack, tmp_path, {**base, "NEXUS_GATEWAY_USAGE_ID": "gw-a"})
            b = await start(stack, tmp_path, {**base, "NEXUS_GATEWAY_USAGE_ID": "gw-b"})
            assert (await asyncio.to_thread(a.metadata))["extra"]["usage"]["store"] == "etcd"
            await asyncio.gather(use(a, plain["alice"], "alice", received, 6), use(b, plain["alice"], "alice", received, 5),
                                 use(b, plain["bob"], "bob", received, 3))

            async def ledger_caught_up() -> bool:
                return await asyncio.to_thread(ledger_totals, tmp_path / "keys", cli_env) == received

            await async_wait_for(ledger_caught_up, timeout=20, what="the ledger's totals = the clients' usage")

            # a is killed (no goodbye) and restarted with the same id: it reads its record back
            # and continues the day from it, never writing smaller numbers.
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            a2 = await start(stack, tmp_path, {**base, "NEXUS_GATEWAY_USAGE_ID": "gw-a"})
            await use(a2, plain["alice"], "alice", received, 4)
            await async_wait_for(ledger_caught_up, timeout=20, what="the restarted gateway continued its day")

        # the table, and a revoked key shown by its id
        keys = read_keys(tmp_path / "keys")
        bob = next(k for k in keys.values() if k.name == "bob")
        write_keys(tmp_path / "keys", [k for k in keys.values() if k.name != "bob"])
        table = keys_usage(tmp_path / "keys", cli_env, "--key", bob.id)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
        assert len(lines) == 3 and all(f"{bob.id} (revoked)" in line for line in lines[1:]), table.stdout
        chat = received[("bob", "tiny-chat")]
        assert f"{chat[0]} {chat[1]} {chat[2]} {chat[1] + chat[2]}" in " ".join(lines[1].split())


async def test_ledger_without_etcd_in_the_state_dir_survives_restarts(tmp_path):
    """No etcd: one file per day and gateway in NEXUS_GATEWAY_USAGE_DIR. The period is long, so
    what is there after a clean stop was written at shutdown."""
    plain = make_keys(tmp_path / "keys", {"alice": {}})
    usage_dir = tmp_path / "state" / "usage"
    cli_env = {"NEXUS_GATEWAY_USAGE_DIR": str(usage_dir)}
    async with backend() as be:
        env = gateway_env(tmp_path, be.url, NEXUS_GATEWAY_USAGE_DIR=str(usage_dir),
                          NEXUS_GATEWAY_USAGE_PERIOD="300", NEXUS_GATEWAY_USAGE_ID="gw-local")
        received: Totals = {}
        for rounds in (5, 3):  # the second run is the same gateway restarted
            with contextlib.ExitStack() as stack:
                gw = await start(stack, tmp_path, env)
                await use(gw, plain["alice"], "alice", received, rounds)
                # an answer without usage counts as a request; fetching the image's capability
                # URL (no key) counts for nobody
                async with openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=plain["alice"], max_retries=0) as c:
                    url = (await c.images.generate(model="stub-image", prompt="a cat")).data[0].url
                assert url and "/v1/images/files/" in url
                # Responses and Anthropic Messages (translated to chat): counted per served model
                async with openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=plain["alice"], max_retries=0) as c:
                    r = (await c.responses.create(model="tiny-chat", input="hi", max_output_tokens=16)).usage
                async with anthropic.AsyncAnthropic(base_url=gw.api, api_key=plain["alice"], max_retries=0) as claude:
                    m = (await claude.messages.create(model="tiny-chat", max_tokens=5,
                                                      messages=[{"role": "user", "content": "hi"}])).usage
                chat = received[("alice", "tiny-chat")]
                for prompt, completion in ((r.input_tokens, r.output_tokens), (m.input_tokens, m.output_tokens)):
                    chat[0], chat[1], chat[2] = chat[0] + 1, chat[1] + prompt, chat[2] + completion
                png = await asyncio.to_thread(fetch, gw.api + "/v1/images/files/" + url.rsplit("/", 1)[1])
                assert png.startswith(b"\x89PNG")
                received.setdefault(("alice", "stub-image"), [0, 0, 0])[0] += 1
            # stopped (SIGTERM): its last counts are on disk
            assert await asyncio.to_thread(ledger_totals, tmp_path / "keys", cli_env) == received
        # One day folder (two for a run across UTC midnight), each with one record: atomic writes
        # leave no temp file.
        days = list(usage_dir.iterdir())
        assert days and all([p.name for p in day.iterdir()] == ["gw-local.json"] for day in days), days


def test_keys_usage_bad_input_is_a_clear_error(tmp_path):
    env = {"NEXUS_GATEWAY_USAGE_DIR": str(tmp_path / "usage")}
    for args, says in ((["--since", "notadate"], "--since"), (["--until", "2026-13-01"], "--until"),
                       (["--since", "2026-02-02", "--until", "2026-02-01"], "after")):
        done = keys_usage(tmp_path / "keys", env, *args)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "usage").exists() and not (tmp_path / "keys").exists()
    empty = keys_usage(tmp_path / "keys", env, "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout)["rows"] == []
    away = keys_usage(tmp_path / "keys", {"NEXUS_ETCD_ENDPOINTS": "http://127.0.0.1:1"}, "--json")
    assert away.returncode == 1 and "cannot read the ledger from etcd" in away.stderr, away.stderr
    assert "Traceback" not in away.stderr and away.stdout == ""


async def test_budget_holds_across_two_gateways_on_etcd(tmp_path, etcd):
    """A key's --budget is spent through gateway a until a refuses; once b has read the ledger
    after a's write, b refuses the key too (one budget, not one per gateway), with Retry-After
    to UTC midnight; another key is not refused."""
    plain = make_keys(tmp_path / "keys", {"capped": {"budget": (150, "day")}, "free": {}})
    cli_env = {"NEXUS_ETCD_ENDPOINTS": etcd.endpoint}
    async with backend() as be:
        base = gateway_env(tmp_path, be.url, NEXUS_ETCD_ENDPOINTS=etcd.endpoint, NEXUS_GATEWAY_USAGE_PERIOD="0.2")
        with contextlib.ExitStack() as stack:
            a = await start(stack, tmp_path, {**base, "NEXUS_GATEWAY_USAGE_ID": "gw-a"})
            b = await start(stack, tmp_path, {**base, "NEXUS_GATEWAY_USAGE_ID": "gw-b"})
            client_a = openai.AsyncOpenAI(base_url=a.api + "/v1", api_key=plain["capped"], max_retries=0)
            client_b = openai.AsyncOpenAI(base_url=b.api + "/v1", api_key=plain["capped"], max_retries=0)
            async with client_a, client_b:
                spent = 0
                with contextlib.suppress(openai.RateLimitError):
                    for _ in range(50):
                        usage = (await client_a.chat.completions.create(
                            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5)).usage
                        spent += usage.total_tokens
                assert 0 < spent <= 150

                async def written() -> bool:
                    totals = await asyncio.to_thread(ledger_totals, tmp_path / "keys", cli_env)
                    return sum(totals.get(("capped", "tiny-chat"), [0, 0, 0])[1:]) == spent

                await async_wait_for(written, timeout=20, what="a's usage in etcd")
                reads = (await asyncio.to_thread(b.metadata))["extra"]["usage"]["reads"]

                async def b_read_since() -> bool:  # +2: a read under way at `reads` may predate a's write
                    return (await asyncio.to_thread(b.metadata))["extra"]["usage"]["reads"] >= reads + 2

                await async_wait_for(b_read_since, timeout=20, what="b read the ledger after a's write")
                with pytest.raises(openai.RateLimitError) as refused:
                    await client_b.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                                           max_tokens=5)
                assert refused.value.body["code"] == "rate_limit_exceeded"
                assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 86400
            await use(b, plain["free"], "free", {}, 1)
