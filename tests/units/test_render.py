"""The renderer: committed files match a fresh rendering, `systemd-analyze verify` is silent,
limits and sockets follow each service's metadata, and the service hooks reach the output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexusd.runtime import Capabilities, Resources, Service
from nexusd.runtime.cgroup import parse_bytes, parse_cpu
from nexusd.runtime.envfile import env_example
from nexusd.runtime.service import Listener
from nexusd.services import load_service, service_names
from nexusd.units.cli import write_tree
from nexusd.units.etcd import find_etcd
from nexusd.units.packaging import SYSUSERS, TMPFILES, manifest
from nexusd.units.render import context, render_all, render_service

REPO = Path(__file__).resolve().parents[2]
RERENDER = "re-render with `nexusd units render --out units` and `nexusd units packaging --out packaging --manifest nix/services.json` (docs/operations.md)"


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def nexusd_binary() -> str:
    beside = Path(sys.executable).parent / "nexusd"
    return str(beside) if beside.exists() else shutil.which("nexusd") or pytest.skip("no nexusd script")


def test_committed_units_match_render():
    assert tree(REPO / "units") == render_all(), RERENDER


def test_committed_packaging_matches_generators():
    assert (REPO / "packaging/sysusers.d/nexus.conf").read_text() == SYSUSERS
    assert (REPO / "packaging/tmpfiles.d/nexus.conf").read_text() == TMPFILES
    envs = {f"{n}.env": env_example(load_service(n)) for n in service_names()}
    assert tree(REPO / "packaging/env") == envs, "regenerate with `nexusd env-example <svc>`"
    assert (REPO / "nix/services.json").read_text() == manifest(), RERENDER


def test_render_out_removes_stale_generated_files(tmp_path):
    files = render_all()
    write_tree(tmp_path, {**files, "nexus-gone.service": files["nexus.target"]})
    (tmp_path / "admin-notes.txt").write_text("mine")
    write_tree(tmp_path, files)
    assert not (tmp_path / "nexus-gone.service").exists()
    assert (tmp_path / "admin-notes.txt").read_text() == "mine"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_prints_nothing(tmp_path):
    # Instance 0 of every service too: the templates are verified as nexus-<svc>@0 with the
    # drop-ins `--instances` writes (a template alone has no ListenStream=: no port for %i).
    files = render_all(nexusd=nexusd_binary(), etcd=find_etcd() or pytest.skip("no etcd binary"),
                       instances={name: [0] for name in service_names()})
    write_tree(tmp_path, files)
    for rel in files:
        if rel.endswith("/instance.conf"):
            unit = rel.split("/")[0].removesuffix(".d")  # nexus-x@0.socket → a link to nexus-x@.socket
            (tmp_path / unit).symlink_to(unit.split("@")[0] + "@." + unit.rsplit(".", 1)[1])
    # A drop-in for a unit we do not ship (e.g. ollama.service.d/) is verified on a stub unit.
    for rel in files:
        if "/" in rel and rel.split("/")[0].endswith(".d"):
            stub = tmp_path / rel.split("/")[0].removesuffix(".d")
            if not stub.exists():
                stub.write_text("[Service]\nExecStart=/bin/true\n")
    units = sorted(str(p) for p in tmp_path.iterdir()
                   if p.suffix in (".service", ".socket", ".target") and "@." not in p.name)
    assert any("@0." in u for u in units)
    proc = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    # verify exits 0 on unknown keys and bad values, so any output at all is a failure.
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("name", service_names())
def test_limits_and_timeouts_follow_metadata(name):
    cls = load_service(name)
    ctx = context(cls)
    unit = render_all(services=[name])[f"nexus-{name}.service"]
    keys = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    r = ctx.resources
    if r.cpu:
        assert float(keys["CPUQuota"].rstrip("%")) == pytest.approx(parse_cpu(r.cpu) * 100)
    if r.memory:
        assert parse_bytes(keys["MemoryMax"] + "i") == parse_bytes(r.memory)
        assert 0.85 < parse_bytes(keys["MemoryHigh"] + "i") / parse_bytes(r.memory) < 0.95
    if r.gpu:
        assert "PrivateDevices" not in keys and keys["DevicePolicy"] == "closed"
        assert "DeviceAllow=char-nvidia-frontend rw" in unit and "DeviceAllow=char-nvidia-uvm rw" in unit
        assert "SupplementaryGroups" not in keys  # only with --groups, from the target host
    else:
        assert keys["PrivateDevices"] == "yes" and "DeviceAllow" not in keys
    if r.gpu_memory:
        assert f"Environment=NEXUS_GPU_MEMORY={r.gpu_memory}" in unit
    assert int(keys["TimeoutStartSec"]) > ctx.settings.start_timeout  # READY=1 comes at the latest then
    assert keys["WatchdogSec"] == str(cls.watchdog_sec)
    assert keys["ExecStart"] == f"/usr/bin/nexusd run {name}"
    assert keys["RestartPreventExitStatus"] == "78" and keys["Type"] == "notify"


@pytest.mark.parametrize("name", service_names())
def test_one_socket_unit_per_listener(name):
    cls = load_service(name)
    files = render_all(services=[name])
    sockets = {k: v for k, v in files.items() if k.endswith(".socket") and "@." not in k}  # templates: test_instances
    if not cls.socket_activation:
        assert sockets == {}
        return
    listeners = context(cls).listeners
    assert len(sockets) == len(listeners)
    names = sorted(re.search(r"^FileDescriptorName=(.*)$", v, re.M).group(1) for v in sockets.values())
    assert names == sorted(lst.name for lst in listeners)
    for text in sockets.values():
        assert f"Service=nexus-{name}.service" in text
        port = re.search(r"^ListenStream=.*?(\d+)$", text, re.M).group(1)
        assert int(port) in {lst.port for lst in listeners}


class HookedService(Service):
    """A real Service subclass using both unit hooks, as the gateway and ollama services do."""

    name = "hooked"
    description = "test service with unit hooks"
    capabilities = Capabilities(domains=["example"])
    default_resources = Resources(cpu="500m", memory="1536Mi", gpu="nvidia-gpu")

    @classmethod
    def listeners_for(cls, settings):
        return [Listener("api", "0.0.0.0", 8800), Listener("obs", "127.0.0.1", 8801)]

    @classmethod
    def unit_directives(cls, ctx):
        return [f"LoadCredential=tls.key:{ctx.config_dir}/tls/{ctx.service}.key"]

    @classmethod
    def extra_unit_files(cls, ctx):
        return {"ollama.service.d/nexus.conf": "[Service]\nEnvironment=OLLAMA_HOST=127.0.0.1:11436\n"}


def test_service_hooks_and_second_listener():
    ctx = context(HookedService, nexusd="/opt/bin/nexusd", groups=["video", "wheel"])
    files = render_service(HookedService, ctx)
    unit = files["nexus-hooked.service"]
    assert "LoadCredential=tls.key:/etc/nexus/tls/hooked.key" in unit
    assert "CPUQuota=50%" in unit and "MemoryMax=1536M" in unit
    assert "SupplementaryGroups=video\n" in unit  # only known GPU groups, only when present
    assert "ExecStart=/opt/bin/nexusd run hooked" in unit
    assert "ListenStream=8800\n" in files["nexus-hooked.socket"]  # 0.0.0.0 = every address
    assert "FileDescriptorName=obs" in files["nexus-hooked-obs.socket"]
    assert "ListenStream=127.0.0.1:8801" in files["nexus-hooked-obs.socket"]
    dropin = files["ollama.service.d/nexus.conf"]
    assert dropin.startswith("# Generated by") and "OLLAMA_HOST=127.0.0.1:11436" in dropin


def test_extra_files_cannot_escape_the_unit_dir():
    class Escaping(HookedService):
        @classmethod
        def extra_unit_files(cls, ctx):
            return {"../../etc/passwd": "x"}

    with pytest.raises(ValueError, match="bad path"):
        render_service(Escaping, context(Escaping))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_security_exposure_stays_low(tmp_path):
    """`systemd-analyze security --offline=yes`: a relaxed sandbox shows up as a higher score."""
    write_tree(tmp_path, render_all(nexusd=nexusd_binary()))
    for unit in sorted(tmp_path.glob("*.service")):
        proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout).group(1))
        assert score <= 2.5, f"{unit.name}: exposure {score}"
