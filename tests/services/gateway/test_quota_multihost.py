"""A token quota across hosts: two gateways in two network namespaces (test_multihost.py's
stand-ins for hosts) share one etcd in a third; the template service in a fourth. One key with
`--tpm 1000`, requests alternated between the gateways: the echo answer has no usage, so each
request's reservation (the estimate, quotas.py) stands; three fit in the minute over both
gateways (each gateway alone would have admitted three). Needs root and `ip`."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack

from nexusd.services.gateway.quotas import estimate
from tests.helpers.net import wait_for
from tests.helpers.proc import service_env
from tests.services.gateway.harness import make_keys
from tests.services.gateway.test_multihost import hosts, http, pytestmark, spawn, start_etcd

__all__ = ["pytestmark"]
TPM = 1000
BODY = '{"message": "across hosts"}'


def test_tpm_holds_across_gateways_on_two_hosts(tmp_path):
    keys = make_keys(tmp_path / "keys", {"k": {"tpm": TPM}, "free": {}})
    key_id = keys["k"].split("-")[1]
    with hosts(["svc", "etcd", "gwa", "gwb"]) as net, ExitStack() as stack:
        (svc_ns, svc_ip), (etcd_ns, etcd_ip) = net["svc"], net["etcd"]
        etcd_url = start_etcd(stack, etcd_ns, etcd_ip, tmp_path)
        svc_env = service_env("template", 9000, NEXUS_TEMPLATE_HOST=svc_ip, NEXUS_ETCD_ENDPOINTS=etcd_url)
        spawn(stack, svc_ns, [sys.executable, "-m", "nexusd.cli", "run", "template"], svc_env, tmp_path / "svc.log")
        gateways = []
        for name in ("gwa", "gwb"):
            ns, ip = net[name]
            env = service_env("gateway", 8800, NEXUS_GATEWAY_HOST=ip, NEXUS_ETCD_ENDPOINTS=etcd_url,
                              NEXUS_GATEWAY_KEYS_FILE=str(tmp_path / "keys"), NEXUS_GATEWAY_POLL_INTERVAL="0.3")
            proc = spawn(stack, ns, [sys.executable, "-m", "nexusd.cli", "run", "gateway"], env,
                         tmp_path / f"{name}.log")
            gateways.append((ns, f"http://{ip}:8800/v1/echo", proc, name))

        def quotas(ns: str) -> dict:
            return json.loads(http(ns, "http://127.0.0.1:8801/v1/metadata")[1])["extra"]["quotas"]

        for ns, url, proc, name in gateways:
            def ready(ns=ns, url=url, proc=proc, name=name) -> bool:
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
                return http(ns, url, BODY, keys["free"])[0] == 200 and quotas(ns)["gateways"] == 2
            wait_for(ready, timeout=60, interval=0.5, what=f"{name} routes and sees both gateways")

        def agree() -> bool:
            views = [quotas(ns)["keys"].get(key_id, {"tokens": 0})["tokens"] for ns, *_ in gateways]
            return abs(views[0] - views[1]) < 0.5

        reserve = estimate(BODY.encode())
        statuses = []
        for i in range(8):
            ns, url, _, _ = gateways[i % 2]
            statuses.append(http(ns, url, BODY, keys["k"])[0])
            assert http(ns, url, BODY, keys["free"])[0] == 200  # an unlimited key is never refused
            wait_for(agree, timeout=10, what="both gateways see the same tokens")
        fits = TPM // reserve
        # Per gateway it would be 2 × fits; a UTC minute crossed mid-test decays the used tokens
        # (sliding minute) and may free one more.
        assert statuses[:fits] == [200] * fits and statuses[-2:] == [429, 429], statuses
        assert fits <= statuses.count(200) <= fits + 1, statuses
