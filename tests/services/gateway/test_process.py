"""`nexusd run gateway` as a real process: static discovery from `<NAME>_BASE_URL` with the real
template service, `nexusd keys` CLI, revocation applied by SIGHUP, and logs without keys."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from tests.helpers.net import wait_for
from tests.helpers.proc import REPO, run_service
from tests.services.gateway.harness import run_gateway


def keys_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nexusd.cli", "keys", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=30)


def post(url: str, body: dict, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_keys_cli_static_backend_sighup_revocation_and_clean_logs(tmp_path):
    keys_file = tmp_path / "api-keys"
    add = keys_cli("add", "alice", "--keys-file", str(keys_file), "--ops", "template.echo")
    assert add.returncode == 0, add.stderr
    alice = add.stdout.strip()
    assert alice.startswith("nx-") and "\n" not in alice  # the key alone on stdout
    bob = keys_cli("add", "bob", "--keys-file", str(keys_file)).stdout.strip()
    assert keys_cli("add", "bob", "--keys-file", str(keys_file)).returncode == 1  # names are unique
    listing = keys_cli("list", "--keys-file", str(keys_file)).stdout
    assert "alice" in listing and "template.echo" in listing and alice not in listing
    assert keys_cli("add", "x", "--keys-file", str(keys_file), "--rpm", "0").returncode == 2

    with run_service("template", tmp_path) as template, \
            run_gateway(tmp_path, {"TEMPLATE_BASE_URL": template.url, "OPENAI_BASE_URL": "http://127.0.0.1:1",
                                   "NEXUS_GATEWAY_KEYS_FILE": str(keys_file)}) as gw:
        wait_for(lambda: post(gw.api + "/v1/echo", {"message": "hi"}, alice)[0] == 200, timeout=20,
                 what="template routable through the gateway")
        status, body = post(gw.api + "/v1/echo", {"message": "hi"}, alice)
        assert body["message"] == "echo: hi"
        meta = gw.metadata()
        urls = {i["base_url"] for i in meta["extra"]["instances"]}
        assert urls == {template.url}  # OPENAI_BASE_URL is never a backend
        assert post(gw.api + "/v1/echo", {"message": "hi"}, "nx-000000000000-guess")[0] == 401

        revoke = keys_cli("revoke", "alice", "--keys-file", str(keys_file))
        assert revoke.returncode == 0, revoke.stderr
        assert post(gw.api + "/v1/echo", {"message": "hi"}, alice)[0] == 200  # not reloaded yet
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: post(gw.api + "/v1/echo", {"message": "hi"}, alice)[0] == 401, timeout=10,
                 what="revoked key refused after SIGHUP")
        assert post(gw.api + "/v1/echo", {"message": "hi"}, bob)[0] == 200
        logs = gw.logs()
    assert '"msg": "loaded 2 API keys"' in logs and '"msg": "loaded 1 API keys"' in logs
    for secret in (alice, bob, alice.split("-", 2)[2], bob.split("-", 2)[2]):
        assert secret not in logs
