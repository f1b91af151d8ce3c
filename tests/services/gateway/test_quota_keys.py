"""`nexusd keys update NAME|ID`: change a key's limits and scope in place (under the keys file's
lock), `none` lifting a limit; a running gateway (a real process) applies the change on SIGHUP
(`systemctl reload nexus-gateway`), the key's counts kept."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime

import aiohttp

from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.keys import read_keys
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import run_gateway, serve
from tests.services.gateway.test_process import keys_cli
from tests.services.gateway.test_quotas import INTERNAL, call


def test_update_changes_limits_and_scope_and_keeps_the_secret(tmp_path):
    path = str(tmp_path / "keys")
    assert keys_cli("add", "alice", "--keys-file", path, "--rpm", "5", "--tpm", "100").returncode == 0
    assert keys_cli("add", "bob", "--keys-file", path).returncode == 0
    (before,) = [k for k in read_keys(tmp_path / "keys").values() if k.name == "alice"]
    done = keys_cli("update", "alice", "--keys-file", path, "--rpm", "none", "--tpm", "300",
                    "--max-concurrent", "4", "--ops", "chat.completions,embeddings", "--models", "tiny-chat",
                    "--expires", "2031-01-02")
    assert done.returncode == 0, done.stderr
    keys = read_keys(tmp_path / "keys")
    after = keys[before.id]
    assert (after.rpm, after.tpm, after.max_concurrent) == (None, 300, 4)
    assert after.operations == {"chat.completions", "embeddings"} and after.models == {"tiny-chat"}
    assert after.expires == datetime(2031, 1, 2, tzinfo=UTC).timestamp()
    assert after.sha256 == before.sha256 and after.name == "alice"  # same key, same secret
    assert [k.name for k in keys.values()] == ["alice", "bob"]  # bob untouched, order kept
    # by id, lifting the rest; what is not named stays
    assert keys_cli("update", before.id, "--keys-file", path, "--ops", "none", "--expires", "none").returncode == 0
    after = read_keys(tmp_path / "keys")[before.id]
    assert after.operations is None and after.expires is None and after.tpm == 300 and after.models == {"tiny-chat"}
    listing = keys_cli("list", "--keys-file", path).stdout
    assert "TPM" in listing and "300" in listing
    # refusals: unknown key, a limit below 1, nothing to change, a bad date
    unknown = keys_cli("update", "carol", "--keys-file", path, "--rpm", "3")
    assert unknown.returncode == 1 and "carol" in unknown.stderr
    for bad in (["--rpm", "0"], ["--max-concurrent", "-1"], ["--tpm", "lots"]):
        refused = keys_cli("update", "alice", "--keys-file", path, *bad)
        assert refused.returncode == 2 and bad[0] in refused.stderr, refused.stderr
    nothing = keys_cli("update", "alice", "--keys-file", path)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    assert keys_cli("update", "alice", "--keys-file", path, "--expires", "soon").returncode == 2
    assert read_keys(tmp_path / "keys")[before.id] == after  # refusals changed nothing


async def test_running_gateway_applies_an_update_on_sighup(tmp_path):
    path = str(tmp_path / "keys")
    key = keys_cli("add", "alice", "--keys-file", path).stdout.strip()
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as backend:
        env = {"NEXUS_GATEWAY_KEYS_FILE": path, "NEXUS_INTERNAL_TOKEN": INTERNAL,
               "NEXUS_GATEWAY_STATIC_BACKENDS": json.dumps({"testai": backend.url})}
        with run_gateway(tmp_path, env) as gw:
            async with aiohttp.ClientSession() as http:
                async def routable() -> bool:
                    return (await call(http, gw, key))[0] == 200

                await async_wait_for(routable, timeout=20, what="chat routable")
                assert "x-ratelimit-limit-requests" not in (await call(http, gw, key))[2]
                assert keys_cli("update", "alice", "--keys-file", path, "--rpm", "3").returncode == 0
                gw.proc.send_signal(signal.SIGHUP)

                async def limited() -> bool:
                    return (await call(http, gw, key))[2].get("x-ratelimit-limit-requests") == "3"

                await async_wait_for(limited, timeout=10, what="the gateway applied --rpm 3")
                statuses = [(await call(http, gw, key))[0] for _ in range(4)]
                assert statuses == [200, 200, 429, 429]  # 3 a minute, the probe that saw it included
