"""Token budgets (`--budget N/day|N/month`, budget.py) and the ledger's retention: the clock is
moved, never slept. A real in-process gateway (the runtime's Server on this loop, so its
ledger's clock can be replaced) in front of the OpenAI test double, the real `openai` client;
retention on a real etcd and a real directory; the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import anthropic
import openai
import pytest

from nexusd.runtime.etcd import etcd_client
from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.budget import parse_budget, period_days, until_roll
from nexusd.services.gateway.keys import read_keys
from nexusd.services.gateway.ledger import Ledger
from nexusd.services.gateway.quotas import estimate
from nexusd.services.gateway.usagestore import EtcdStore, FileStore
from tests.helpers.net import async_wait_for
from tests.helpers.proc import REPO
from tests.services.gateway.harness import make_keys, routable, serve_gateway

INTERNAL = "internal-secret-token"
MESSAGES = [{"role": "user", "content": "hi"}]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def spend_until_refused(client: openai.AsyncOpenAI) -> tuple[int, openai.RateLimitError]:
    """Chat until the budget refuses; (tokens the client was told it used, the refusal)."""
    used = 0
    for _ in range(100):
        try:
            answer = await client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=5)
        except openai.RateLimitError as refused:
            return used, refused
        assert answer.usage is not None
        used += answer.usage.total_tokens
    raise AssertionError("the budget never bit")


async def test_budget_exhausted_429_until_the_period_rolls(tmp_path, backend):
    plain = make_keys(tmp_path / "keys", {"daily": {"budget": (100, "day")}, "monthly": {"budget": (100, "month")},
                                          "free": {}})
    shared = SharedSettings(etcd_endpoints="", internal_token=INTERNAL)
    async with serve_gateway(tmp_path / "keys", {"testai": backend.url}, shared=shared, usage_period=0.1) as gw:
        await async_wait_for(lambda: _true(routable(gw, "chat.completions")), timeout=10, what="backend routable")
        # no etcd, no usage dir, no $STATE_DIRECTORY (run by hand): the ledger is in memory, budgets hold
        assert gw.service.ledger.store.describe().startswith("memory")  # type: ignore[attr-defined]
        clock = Clock(at("2026-03-31T23:59:00"))
        gw.service.ledger.clock = clock  # type: ignore[attr-defined]
        reserve = estimate(json.dumps({"messages": MESSAGES, "model": "tiny-chat", "max_tokens": 5}).encode())

        def client(name: str) -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=plain[name], max_retries=0)  # type: ignore[attr-defined]

        async with client("daily") as daily, client("monthly") as monthly, client("free") as free:
            used, refused = await spend_until_refused(daily)
            assert 100 - reserve < used <= 100  # refused exactly when the next reservation would not fit
            assert refused.status_code == 429
            assert refused.body["code"] == "rate_limit_exceeded" and "budget" in refused.body["message"]
            assert refused.response.headers["Retry-After"] == "60"  # to UTC midnight
            await free.chat.completions.create(model="tiny-chat", messages=MESSAGES)  # others are not refused

            # the same budget on /v1/messages, refused in Anthropic's shape
            async with anthropic.AsyncAnthropic(base_url=gw.api, api_key=plain["daily"], max_retries=0) as claude:  # type: ignore[attr-defined]
                with pytest.raises(anthropic.RateLimitError) as refused_a:
                    await claude.messages.create(model="tiny-chat", max_tokens=5, messages=MESSAGES)
            assert refused_a.value.body["type"] == "error" and refused_a.value.body["error"]["type"] == "rate_limit_error"
            assert refused_a.value.response.headers["Retry-After"] == "60"

            clock.now = at("2026-04-01T00:00:01")  # the day rolls: the daily key may spend again
            await daily.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=5)

            clock.now = at("2026-04-14T12:00:00")
            used, refused = await spend_until_refused(monthly)
            assert 100 - reserve < used <= 100
            clock.now = at("2026-04-29T12:00:00")  # another day, the same month: still refused
            with pytest.raises(openai.RateLimitError) as still:
                await monthly.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=5)
            assert still.value.response.headers["Retry-After"] == str(36 * 3600)  # to May 1st
            clock.now = at("2026-05-01T00:00:00")
            await monthly.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=5)


async def _true(value: bool) -> bool:
    return value


def test_budget_periods():
    assert parse_budget("1000/day") == (1000, "day") and parse_budget("5/month") == (5, "month")
    for bad in ("10/week", "-5/day", "0/day", "ten/day", "10", "1.5/day"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    assert period_days("month", at("2028-02-10T00:00:00")) == ("2028-02-01", "2028-02-29")
    assert period_days("day", at("2026-12-31T23:59:59")) == ("2026-12-31", "2026-12-31")
    assert until_roll("month", at("2026-12-31T23:00:00")) == 3600
    assert until_roll("day", at("2026-12-31T23:59:59.5")) == 1


@pytest.mark.parametrize("where", ["etcd", "directory"])
async def test_ledger_retention_deletes_old_days(tmp_path, etcd, where):
    shared = SharedSettings(etcd_endpoints=etcd.endpoint)
    store = EtcdStore(lambda: etcd_client(shared)) if where == "etcd" else FileStore(tmp_path / "usage")
    clock = Clock(at("2026-01-01T10:00:00"))
    ledger = Ledger("gw-1", store, days=90, clock=clock)
    for day in ("2026-01-01T10:00:00", "2026-01-02T10:00:00", "2026-03-31T10:00:00"):
        clock.now = at(day)
        ledger.record("k1", "m", 3, 4)
        await ledger.sync()
    assert {row[0] for row in await store.read("2000-01-01", "2099-12-31")} == {
        "2026-01-01", "2026-01-02", "2026-03-31"}  # 2026-03-31 keeps 90 days: from 2026-01-01 on
    clock.now = at("2026-04-01T00:00:05")
    await ledger.sync()  # a new day: retention runs
    rows = await store.read("2000-01-01", "2099-12-31")
    assert {row[0] for row in rows} == {"2026-01-02", "2026-03-31"}
    assert {row[0]: row[3] for row in rows}["2026-03-31"] == {"m": [1, 3, 4]}
    await ledger.stop()


def test_keys_budget_bad_input_is_a_clear_error_and_writes_nothing(tmp_path):
    path = tmp_path / "keys"
    run = [sys.executable, "-m", "nexusd.cli", "keys", "add", "--keys-file", str(path)]
    for budget in ("--budget=10/week", "--budget=-5/day", "--budget=0/month"):
        done = subprocess.run([*run, "alice", budget], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 2 and "argument --budget: budget must be" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not path.exists()
    done = subprocess.run([*run, "alice", "--budget", "5000/month"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    (key,) = read_keys(path).values()
    assert key.budget == (5000, "month") and key.to_json()["budget"] == "5000/month"
    update = [sys.executable, "-m", "nexusd.cli", "keys", "update", "--keys-file", str(path), "alice"]
    before = path.read_bytes()
    for budget in ("--budget=10/week", "--budget=-5/day"):
        done = subprocess.run([*update, budget], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 2 and "argument --budget: budget must be" in done.stderr, done.stderr
        assert path.read_bytes() == before  # nothing written
    done = subprocess.run([*update, "--budget", "300/day"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    (updated,) = read_keys(path).values()
    assert updated.budget == (300, "day") and updated.id == key.id  # the same key, a new budget
    assert subprocess.run([*update, "--budget", "none"], capture_output=True, cwd=REPO).returncode == 0
    assert next(iter(read_keys(path).values())).budget is None
