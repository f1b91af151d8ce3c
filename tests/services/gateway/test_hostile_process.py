"""Issue 11 item 9 from outside: `nexusd keys` writers run concurrently without losing a
change, and the text log cannot be forged through a decoded path (`%0A`)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from nexusd.services.gateway.keys import read_keys
from tests.helpers.net import wait_for
from tests.helpers.proc import REPO, terminate
from tests.services.gateway.harness import run_gateway


def start_keys_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nexusd.cli", "keys", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_key_writers_lose_nothing(tmp_path):
    """Twelve adds and a revoke at once: every add stays, the revoked key stays revoked."""
    keys_file = tmp_path / "api-keys"
    first = subprocess.run([sys.executable, "-m", "nexusd.cli", "keys", "add", "victim", "--keys-file",
                            str(keys_file)], cwd=REPO, capture_output=True, timeout=30)
    assert first.returncode == 0
    procs = [start_keys_cli("add", f"k{i}", "--keys-file", str(keys_file)) for i in range(12)]
    procs.insert(6, start_keys_cli("revoke", "victim", "--keys-file", str(keys_file)))
    try:
        codes = [p.wait(60) for p in procs]
    finally:
        for p in procs:
            terminate(p)
            p.stdout.close()  # type: ignore[union-attr]
            p.stderr.close()  # type: ignore[union-attr]
    assert codes == [0] * 13
    names = {k.name for k in read_keys(keys_file).values()}
    assert names == {f"k{i}" for i in range(12)}
    assert (tmp_path / "api-keys.lock").exists()


def test_text_log_escapes_control_characters(tmp_path):
    forged = "12:00:00 I nexusd.access: GET /forged 200 0.1ms"
    with run_gateway(tmp_path, {"NEXUS_LOG_FORMAT": "text",
                                "NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "none")}) as gw:
        target = "/v1/x%0A" + forged.replace(" ", "%20") + "%0D%1B[31m"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(gw.api + target, timeout=5)
        assert err.value.code == 401  # the catch-all matched (a decoded %0A included)
        wait_for(lambda: "/v1/x\\n12:00:00" in gw.logs(), timeout=10, what="the escaped access record")
        lines = gw.logs().splitlines()
    assert not any(line.startswith("12:00:00 I nexusd.access: GET /forged") for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)
