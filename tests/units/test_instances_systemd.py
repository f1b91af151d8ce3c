"""Instance units under a real systemd (sandbox.sh): `nexusd units install --instances
template=1-2`, then `systemctl enable --now nexus-template@1 nexus-template@2`. Both run on
their allocated ports with distinct `@N` instance ids and the declared MemoryMax, instance 2
reads template@2.env after template.env, nexus.target wants both, and a gateway (a process on
the host, sharing the sandbox's network) finds both through a real etcd and balances over them.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from nexusd.runtime.cgroup import parse_bytes
from nexusd.services.template import TemplateService
from tests.helpers.net import free_port, wait_for
from tests.services.gateway.harness import make_keys, run_gateway
from tests.units.sandbox import Sandbox, make_venv, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"real systemd: {unavailable()}")

INSTANCES = (1, 2)


def free_run(count: int) -> int:
    """A base port whose next `count` ports are free now (the allocator gives base + N)."""
    for _ in range(50):
        base = free_port()
        try:
            for n in range(1, count + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + n))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports")


def get(url: str, data: dict | None = None, key: str = "") -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


@pytest.fixture
def box(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox")).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def test_two_template_instances_run_register_and_are_balanced(tmp_path, box, etcd):
    venv = make_venv(tmp_path / "wheel")
    base = free_run(max(INSTANCES))
    box.write("/etc/nexus/template.env", "NEXUS_TEMPLATE_GREETING=shared\nNEXUS_TEMPLATE_WARMUP=0\n", 0o600)
    box.write("/etc/nexus/template@2.env", "NEXUS_TEMPLATE_GREETING=second\n", 0o600)  # read after it
    out = box.run(str(venv / "bin/nexusd"), "units", "install", "--no-etcd", "--instances", "template=1-2",
                  "--port-base", f"template={base}").stdout
    assert "wrote   /etc/systemd/system/nexus-template@2.socket.d/instance.conf" in out
    # this test's etcd (on the host: the sandbox shares its network) instead of a local one
    box.write("/etc/nexus/common.env", f"NEXUS_ETCD_ENDPOINTS={etcd.endpoint}\nNEXUS_ETCD_TTL=5\n", 0o600)
    units = [f"nexus-template@{n}.service" for n in INSTANCES]
    box.run("systemctl", "enable", "--now", *units)

    wants = box.show("nexus.target", "Wants")["Wants"].split()
    assert set(units) | {f"nexus-template@{n}.socket" for n in INSTANCES} <= set(wants)
    ids = {}
    for n in INSTANCES:
        props = box.show(f"nexus-template@{n}.service", "ActiveState", "SubState", "MemoryMax")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert int(props["MemoryMax"]) == parse_bytes(TemplateService.default_resources.memory)
        status, doc, _ = get(f"http://127.0.0.1:{base + n}/v1/metadata")  # on its own port
        assert status == 200
        ids[n] = doc["service"]["instance_id"]
        assert ids[n].endswith(f"@{n}"), ids[n]
        assert doc["limits"]["cgroup"] == f"/system.slice/system-nexus\\x2dtemplate.slice/nexus-template@{n}.service"
    assert len(set(ids.values())) == 2
    assert "inherited socket" in box.journal(units[0])  # served on the socket unit's port

    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    env = {"NEXUS_ETCD_ENDPOINTS": etcd.endpoint, "NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys")}
    with run_gateway(tmp_path, env) as gw:
        urls = {f"http://127.0.0.1:{base + n}" for n in INSTANCES}

        def registered() -> bool:
            return urls <= {i["base_url"] for i in gw.metadata()["extra"]["instances"]}

        wait_for(registered, timeout=30, what="both instances registered in etcd and seen by the gateway")
        greetings, served_by = set(), set()
        for _ in range(20):
            status, doc, headers = get(gw.api + "/v1/echo", {"message": "hi"}, key)
            assert status == 200, doc
            greetings.add(doc["message"])
            served_by.add(headers.get("X-Nexus-Instance"))
        # each instance answered: instance 1 with template.env's greeting, 2 with its own file's
        assert greetings == {"shared: hi", "second: hi"}
        assert len(served_by) == 2, served_by
