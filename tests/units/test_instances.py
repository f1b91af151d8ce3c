"""Instance units (nexusd/units/instances.py): the `--instances` / `--port-base` syntax, the port
allocator and its refusals, the drop-ins it writes, and what install/uninstall do with them.
Under a real systemd: tests/units/test_instances_systemd.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nexusd.services import load_service, service_names
from nexusd.units.instances import (
    BASE_OFFSET,
    InstanceError,
    parse_instances,
    parse_numbers,
    parse_port_bases,
)
from nexusd.units.render import context, render_all

UNITS = "etc/systemd/system"


def nexusd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NEXUS_ETCD_ENDPOINTS"}
    return subprocess.run([sys.executable, "-m", "nexusd.cli", *args], capture_output=True, text=True,
                          check=check, env=env)


def test_instance_lists():
    assert parse_numbers("0-3") == [0, 1, 2, 3]
    assert parse_numbers("1,2") == [1, 2] and parse_numbers("0-1,5,1") == [0, 1, 5]
    assert parse_instances(["ollama=0-3", "tts=2"]) == {"ollama": [0, 1, 2, 3], "tts": [2]}
    assert parse_port_bases(["ollama=12000"]) == {"ollama": 12000}
    for bad in (["ollama"], ["ollama=a"], ["ollama=3-1"], ["ollama=-1"], ["ollama=1", "ollama=2"]):
        with pytest.raises(InstanceError):
            parse_instances(bad)
    for bad in (["ollama=0"], ["ollama=70000"], ["ollama=x"]):
        with pytest.raises(InstanceError):
            parse_port_bases(bad)


@pytest.mark.parametrize("name", service_names())
def test_every_service_has_templates(name):
    files = render_all(services=[name], etcd=None)
    unit = files[f"nexus-{name}@.service"]
    # common.env, then the service's env file, then the instance's
    envs = re.findall(r"^EnvironmentFile=-(\S+)$", unit, re.M)
    assert envs == ["/etc/nexus/common.env", f"/etc/nexus/{name}.env", f"/etc/nexus/{name}@%i.env"]
    assert "Environment=NEXUS_INSTANCE=%i" in unit
    assert "WantedBy=nexus.target" in unit  # `systemctl enable nexus-x@N` → nexus.target wants it
    # the limits are the plain unit's: each instance is its own cgroup
    plain = files[f"nexus-{name}.service"]
    for key in ("MemoryMax", "CPUQuota", "DeviceAllow"):
        assert re.findall(rf"^{key}=.*$", unit, re.M) == re.findall(rf"^{key}=.*$", plain, re.M)
    socket = files[f"nexus-{name}@.socket"]
    assert "ListenStream" not in socket.split("[Socket]")[1].split("FileDescriptorName")[0].replace(
        "# No ListenStream= here", "")
    assert f"Service=nexus-{name}@%i.service" in socket
    assert f"Wants=network-online.target nexus-{name}@%i.socket" in unit
    assert f"nexus-{name}.service" in files  # the plain unit stays


def test_dropins_ports_and_gpu():
    files = render_all(etcd=None, instances={"template": [1, 2], "ollama": [0, 3], "gateway": [0, 1]})
    tpl = context(load_service("template"))
    base = tpl.listeners[0].port + BASE_OFFSET
    for n in (1, 2):
        svc = files[f"nexus-template@{n}.service.d/instance.conf"]
        assert f"Environment=NEXUS_TEMPLATE_PORT={base + n}" in svc
        assert "CUDA_VISIBLE_DEVICES" not in svc  # the template declares no GPU
        assert f"ListenStream=127.0.0.1:{base + n}" in files[f"nexus-template@{n}.socket.d/instance.conf"]
    assert load_service("ollama").default_resources.gpu  # GPU service: one GPU per instance
    assert "Environment=CUDA_VISIBLE_DEVICES=3" in files["nexus-ollama@3.service.d/instance.conf"]
    # the wrapped Ollama daemon's drop-in applies to the template too
    assert files["nexus-ollama@.service.d/ollama.conf"] == files["nexus-ollama.service.d/ollama.conf"]
    # two listeners: base + N*2 + k, each on its own socket unit
    gw = context(load_service("gateway"))
    gb = gw.listeners[0].port + BASE_OFFSET
    assert f"NEXUS_GATEWAY_PORT={gb + 2}" in files["nexus-gateway@1.service.d/instance.conf"]
    assert f"NEXUS_GATEWAY_OBS_PORT={gb + 3}" in files["nexus-gateway@1.service.d/instance.conf"]
    assert f":{gb + 3}" in files["nexus-gateway-obs@1.socket.d/instance.conf"]
    ports = [int(p) for rel, text in files.items() if rel.endswith("instance.conf")
             for p in re.findall(r"^ListenStream=\S*?(\d+)$", text, re.M)]
    assert len(ports) == len(set(ports)) == 2 + 2 + 4


def test_port_base_moves_and_conflicts_are_refused():
    files = render_all(etcd=None, instances={"template": [0, 1]}, port_bases={"template": 20000})
    assert "ListenStream=127.0.0.1:20001" in files["nexus-template@1.socket.d/instance.conf"]
    taken = {8800: "nexus-gateway (api listener)", 8801: "nexus-gateway (obs listener)",
             11436: "nexus-ollama (settings default)", 11434: "nexus-ollama (api listener)"}
    for port, who in taken.items():
        with pytest.raises(InstanceError, match=rf"port {port} is taken by {re.escape(who)}"):
            render_all(etcd=None, instances={"template": [0]}, port_bases={"template": port})
    with pytest.raises(InstanceError, match="port 2379 is taken by nexus-etcd.service"):  # the local etcd's
        render_all(instances={"template": [0]}, port_bases={"template": 2379})
    # two services' instances on one port
    with pytest.raises(InstanceError, match=r"nexus-tts@0: port 30001 is taken by nexus-template@1"):
        render_all(etcd=None, instances={"template": [0, 1], "tts": [0]},
                   port_bases={"template": 30000, "tts": 30001})
    with pytest.raises(InstanceError, match="past 65535"):
        render_all(etcd=None, instances={"template": [0, 1]}, port_bases={"template": 65535})
    with pytest.raises(InstanceError, match="unknown"):
        render_all(etcd=None, instances={"nope": [0]})
    # from the command line: exit 2, the reason, nothing printed as units
    proc = nexusd("units", "render", "--instances", "template=0", "--port-base", "template=8801", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "nexus-template@0: port 8801 is taken by nexus-gateway (obs listener)" in proc.stderr


def test_install_keeps_the_instance_set_given_and_uninstall_removes_it(tmp_path: Path):
    units = tmp_path / UNITS
    out = nexusd("units", "install", "--root", str(tmp_path), "--no-etcd", "--nexusd", "/n/bin/nexusd",
                 "--instances", "template=0-2", "--instances", "tts=0").stdout
    assert f"wrote   {units}/nexus-template@2.socket.d/instance.conf" in out
    assert (units / "nexus-template@.service").exists()
    # the set given replaces the earlier one for that service; other services' stay
    out = nexusd("units", "install", "--root", str(tmp_path), "--no-etcd", "--nexusd", "/n/bin/nexusd",
                 "--instances", "template=1").stdout
    assert f"removed {units}/nexus-template@0.service.d/instance.conf" in out
    assert not (units / "nexus-template@2.socket.d").exists()
    assert (units / "nexus-template@1.service.d/instance.conf").exists()
    assert (units / "nexus-tts@0.service.d/instance.conf").exists()
    # an admin's own drop-in in an instance's directory stays
    (units / "nexus-template@1.service.d/mine.conf").write_text("[Service]\nNice=5\n")
    out = nexusd("units", "uninstall", "--root", str(tmp_path)).stdout
    assert f"removed {units}/nexus-tts@0.socket.d/instance.conf" in out
    assert not (units / "nexus-template@.service").exists() and not (units / "nexus-tts@0.service.d").exists()
    assert sorted(p.name for p in units.rglob("*") if p.is_file()) == ["mine.conf"]
