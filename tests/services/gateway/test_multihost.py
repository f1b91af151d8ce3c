"""Multi-host, with network namespaces standing in for hosts: the template service in one, etcd in
a second, the gateway in a third, each with its own address on a bridge (in a fourth, "switch"
namespace, so the test leaves the host's own network alone). The service registers in etcd
with the address it bound; the gateway discovers it through etcd and routes to it.
Needs root and `ip` (iproute2); skipped with the reason otherwise."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.helpers.etcd import etcd_binary
from tests.helpers.net import wait_for
from tests.helpers.proc import REPO, service_env, terminate
from tests.services.gateway.harness import make_keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2's `ip`")

SUBNET = "10.231.77"
HTTP = """
import json, sys, urllib.request, urllib.error
url, body, key = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"Content-Type": "application/json"}
if key:
    headers["Authorization"] = "Bearer " + key
req = urllib.request.Request(url, data=body.encode() or None, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(json.dumps([r.status, r.read().decode(), r.headers.get("X-Nexus-Instance")]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode(), None]))
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


@contextmanager
def hosts(names: list[str]) -> Iterator[dict[str, str]]:
    """One namespace per name, each with an address on a shared bridge; torn down after."""
    tag = secrets.token_hex(3)
    switch = f"nxsw-{tag}"
    made: list[str] = []
    try:
        sh("ip", "netns", "add", switch)
        made.append(switch)
        sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", switch, "link", "set", "br0", "up")
        addresses = {}
        for i, name in enumerate(names, 1):
            ns = f"nx{name[:4]}-{tag}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # the veth is made inside the host namespace and its peer moved to the switch
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", switch)
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", switch, "link", "set", f"p{i}", "master", "br0")
            sh("ip", "-n", switch, "link", "set", f"p{i}", "up")
            addresses[name] = (ns, f"{SUBNET}.{i}")
        yield addresses
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot build network namespaces here: {exc.stderr.decode().strip()}")
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def spawn(stack: ExitStack, ns: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=env, stdout=f, stderr=f, cwd=REPO)

    stack.callback(terminate, proc, 15)
    return proc


def http(ns: str, url: str, body: str = "", key: str = "") -> tuple[int, str, str | None]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", HTTP, url, body, key],
                         capture_output=True, text=True, timeout=15)
    if out.returncode != 0:
        raise AssertionError(out.stderr[-500:])
    return tuple(json.loads(out.stdout))  # type: ignore[return-value]


def start_etcd(stack: ExitStack, ns: str, ip: str, tmp_path: Path) -> str:
    """A real etcd in namespace `ns`, healthy; its client URL."""
    url = f"http://{ip}:2379"
    spawn(stack, ns, [
        etcd_binary(), "--name", "mh", "--data-dir", str(tmp_path / "etcd"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
        "--initial-cluster", f"mh=http://{ip}:2380", "--log-level", "error",
    ], {**os.environ, "ETCD_UNSUPPORTED_ARCH": "amd64"}, tmp_path / "etcd.log")
    wait_for(lambda: http(ns, url + "/health")[0] == 200, timeout=20, what="etcd up")
    return url


def test_services_etcd_and_gateway_on_three_hosts(tmp_path):
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    with hosts(["svc", "etcd", "gw"]) as net, ExitStack() as stack:
        (svc_ns, svc_ip), (etcd_ns, etcd_ip), (gw_ns, gw_ip) = net["svc"], net["etcd"], net["gw"]
        etcd_url = start_etcd(stack, etcd_ns, etcd_ip, tmp_path)

        svc_env = service_env("template", 9000, NEXUS_TEMPLATE_HOST=svc_ip, NEXUS_ETCD_ENDPOINTS=etcd_url)
        spawn(stack, svc_ns, [sys.executable, "-m", "nexusd.cli", "run", "template"], svc_env, tmp_path / "svc.log")

        gw_env = service_env("gateway", 8800, NEXUS_GATEWAY_HOST=gw_ip, NEXUS_ETCD_ENDPOINTS=etcd_url,
                             NEXUS_GATEWAY_KEYS_FILE=str(tmp_path / "keys"), NEXUS_GATEWAY_POLL_INTERVAL="0.3")
        gw = spawn(stack, gw_ns, [sys.executable, "-m", "nexusd.cli", "run", "gateway"], gw_env, tmp_path / "gw.log")

        def routed() -> bool:
            assert gw.poll() is None, (tmp_path / "gw.log").read_text()[-2000:]
            return http(gw_ns, f"http://{gw_ip}:8800/v1/echo", '{"message": "across hosts"}', key)[0] == 200
        wait_for(routed, timeout=60, interval=0.5, what="template routed through the gateway across namespaces")

        status, body, instance = http(gw_ns, f"http://{gw_ip}:8800/v1/echo", '{"message": "across hosts"}', key)
        assert json.loads(body)["message"] == "echo: across hosts"
        assert instance and instance.startswith("template-")
        meta = json.loads(http(gw_ns, "http://127.0.0.1:8801/v1/metadata")[1])
        assert [i["base_url"] for i in meta["extra"]["instances"]] == [f"http://{svc_ip}:9000"]
        # and the gateway is not reachable from the service's host without a key
        assert http(svc_ns, f"http://{gw_ip}:8800/v1/echo", '{"message": "x"}')[0] == 401
