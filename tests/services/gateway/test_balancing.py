"""Two real template instances behind a real gateway process: load spreads over both; one is
SIGKILLed → requests keep succeeding (one retry on connect failure), it is ejected; it comes
back on the same address → it is routed to again."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections import Counter

from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.services.gateway.harness import make_keys, run_gateway


def echo(gw, key: str) -> tuple[int, str]:
    req = urllib.request.Request(gw.api + "/v1/echo", data=json.dumps({"message": "hi"}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers["X-Nexus-Instance"]


def states(gw) -> dict[str, str]:
    return {i["base_url"]: i["state"] for i in gw.metadata()["extra"]["instances"]}


def metric(gw, name: str) -> float:
    with urllib.request.urlopen(gw.obs + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_spread_eject_and_return(tmp_path):
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    with run_service("template", tmp_path) as a, run_service("template", tmp_path) as b:
        # Readiness is polled every 3 s, so the requests right after the kill meet the dead
        # instance still in the table: passive ejection (and the retry) must handle them.
        env = {"NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys"), "NEXUS_GATEWAY_EJECT_COOLDOWN": "1",
               "NEXUS_GATEWAY_POLL_INTERVAL": "3",
               "TEMPLATE_A_BASE_URL": a.url, "TEMPLATE_B_BASE_URL": b.url}
        with run_gateway(tmp_path, env) as gw:
            wait_for(lambda: list(states(gw).values()) == ["ready", "ready"], timeout=20, what="both ready")
            ids = {a.get("/v1/metadata")[1]["service"]["instance_id"],
                   b.get("/v1/metadata")[1]["service"]["instance_id"]}
            seen = Counter(echo(gw, key)[1] for _ in range(30))
            assert set(seen) == ids, seen  # both got traffic

            b_id = b.get("/v1/metadata")[1]["service"]["instance_id"]
            b.stop(signal.SIGKILL)
            results = [echo(gw, key) for _ in range(20)]
            assert all(status == 200 for status, _ in results)
            assert {inst for _, inst in results} == ids - {b_id}
            assert states(gw)[b.url] in ("ejected", "not_ready")
            assert metric(gw, "nexus_gateway_ejections_total") >= 1
            assert metric(gw, "nexus_gateway_retries_total") >= 1

            with run_service("template", tmp_path, port=b.port) as b2:
                b2_id = b2.get("/v1/metadata")[1]["service"]["instance_id"]
                wait_for(lambda: states(gw)[b.url] == "ready", timeout=20, what="b back")
                seen = Counter(echo(gw, key)[1] for _ in range(30))
                assert b2_id in seen, seen
