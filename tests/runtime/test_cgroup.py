"""cgroup limits: fake cgroupfs trees (v2, v1) in tmp_path, a real read of this process's cgroup,
and the end-to-end behaviour of a service whose declared resources differ from its limits
(pointed at a fake tree with NEXUS_CGROUP_ROOT)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nexusd.runtime import cgroup
from nexusd.runtime.metadata import Resources
from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import run_service
from tests.runtime.support import NotifyListener

UNIT = "system.slice/nexus-template.service"


def fake_v2(root: Path, memory: str = "max", cpu: str = "max 100000") -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(f"0::/{UNIT}\n")
    d = root / "sys/fs/cgroup" / UNIT
    d.mkdir(parents=True)
    (d / "memory.max").write_text(memory + "\n")
    (d / "cpu.max").write_text(cpu + "\n")
    return root


def fake_v1(root: Path, memory: int = 9223372036854771712, quota: int = -1) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(
        f"12:memory:/{UNIT}\n4:cpu,cpuacct:/{UNIT}\n1:name=systemd:/{UNIT}\n0::/{UNIT}\n"
    )
    mem = root / "sys/fs/cgroup/memory" / UNIT
    cpu = root / "sys/fs/cgroup/cpu,cpuacct" / UNIT
    mem.mkdir(parents=True)
    cpu.mkdir(parents=True)
    (mem / "memory.limit_in_bytes").write_text(f"{memory}\n")
    (cpu / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    return root


def test_quantities():
    assert cgroup.parse_bytes("16Gi") == 16 * 1024**3
    assert cgroup.parse_bytes("512M") == 512 * 1000**2
    assert cgroup.parse_bytes("1073741824") == 1024**3
    assert cgroup.parse_cpu("500m") == 0.5 and cgroup.parse_cpu("4") == 4.0
    assert cgroup.format_bytes(256 * 1024**2) == "256Mi" and cgroup.format_cpu(1.5) == "1500m"
    with pytest.raises(ValueError):
        cgroup.parse_bytes("lots")


def test_v2_limits(tmp_path):
    root = fake_v2(tmp_path, memory=str(512 * 1024**2), cpu="200000 100000")
    assert cgroup.read_limits(root) == (2.0, 512 * 1024**2, f"/{UNIT}")


def test_v2_unlimited_is_unenforced(tmp_path):
    limits = cgroup.compare(Resources(memory="1Gi", cpu="2"), fake_v2(tmp_path))
    assert (limits.cpu, limits.memory, limits.status, limits.warnings) == (None, None, "unenforced", [])


def test_v1_limits(tmp_path):
    root = fake_v1(tmp_path, memory=1024**3, quota=150000)
    assert cgroup.read_limits(root) == (1.5, 1024**3, f"/{UNIT}")


def test_v1_unlimited_is_unenforced(tmp_path):
    assert cgroup.compare(Resources(memory="1Gi"), fake_v1(tmp_path)).status == "unenforced"


def test_matching_and_mismatching(tmp_path):
    root = fake_v2(tmp_path, memory=str(1024**3), cpu="400000 100000")
    assert cgroup.compare(Resources(memory="1Gi", cpu="4"), root).status == "matching"
    limits = cgroup.compare(Resources(memory="2Gi", cpu="4000m"), root)
    assert limits.status == "mismatch"
    assert limits.warnings == ["memory: declared 2Gi, cgroup enforces 1Gi"]
    assert limits.model_dump()["memory"] == "1Gi" and limits.cpu == "4"


def test_declared_but_not_enforced_is_a_warning_once_something_is_enforced(tmp_path):
    root = fake_v1(tmp_path, memory=1024**3)  # memory limited, CPU not
    limits = cgroup.compare(Resources(memory="1Gi", cpu="2"), root)
    assert limits.status == "mismatch" and limits.warnings == ["cpu: declared 2, cgroup enforces none"]


def test_missing_proc_cgroup_is_unenforced(tmp_path):
    assert cgroup.compare(Resources(memory="1Gi"), tmp_path).status == "unenforced"


def test_real_read_of_this_process():
    """Whatever this machine enforces, the reader agrees with the files it names."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            own[c] = path
    cpu, mem, path = cgroup.read_limits()
    if "memory" in own:  # v1 or hybrid
        assert path == own["memory"]
        raw = Path("/sys/fs/cgroup/memory", own["memory"].lstrip("/"), "memory.limit_in_bytes").read_text()
        assert mem == (int(raw) if int(raw) < 1 << 62 else None)
    else:
        assert path == own[""]
        raw = Path("/sys/fs/cgroup", own[""].lstrip("/"), "memory.max").read_text().strip()
        assert mem == (None if raw == "max" else int(raw))
    assert cpu is None or cpu > 0


# --- end to end: the template declares cpu=1, memory=256Mi -----------------------------------

def test_mismatch_is_a_readyz_warning_not_a_failure(tmp_path):
    root = fake_v2(tmp_path / "cg", memory=str(512 * 1024**2), cpu="100000 100000")
    notify = NotifyListener(tmp_path)
    env = {"NEXUS_CGROUP_ROOT": str(root), "NOTIFY_SOCKET": notify.address}
    with run_service("template", tmp_path, env=env) as svc:
        status, body = svc.get("/readyz")
        assert status == 200 and body["status"] == "ready"
        assert body["warnings"] == ["memory: declared 256Mi, cgroup enforces 512Mi"]
        _, meta = svc.get("/v1/metadata")
        assert meta["limits"]["status"] == "mismatch" and meta["limits"]["memory"] == "512Mi"
        ready = notify.wait_key("READY=1")
        assert "warning: memory: declared 256Mi" in ready.get("STATUS")
    notify.close()


def test_matching_limits_give_no_warning(tmp_path):
    root = fake_v2(tmp_path / "cg", memory=str(256 * 1024**2), cpu="100000 100000")
    with run_service("template", tmp_path, env={"NEXUS_CGROUP_ROOT": str(root)}) as svc:
        status, body = svc.get("/readyz")
        assert status == 200 and "warnings" not in body
        assert svc.get("/v1/metadata")[1]["limits"]["status"] == "matching"


def test_strict_limits_refuse_to_start_before_binding(tmp_path):
    root = fake_v2(tmp_path / "cg", memory=str(512 * 1024**2))
    port = free_port()
    # Hold the port: had the service tried to bind, it would fail with EADDRINUSE, not exit 78.
    with socket.create_server(("127.0.0.1", port)):
        with run_service("template", tmp_path, port=port, wait_ready=False,
                         env={"NEXUS_CGROUP_ROOT": str(root), "NEXUS_STRICT_LIMITS": "1"}) as svc:
            wait_for(lambda: svc.proc.poll() is not None, timeout=30, what="exit")
            assert svc.proc.returncode == 78
            lines = svc.logs().strip().splitlines()
    assert len(lines) == 1, lines
    assert "NEXUS_STRICT_LIMITS" in lines[0] and "declared 256Mi, cgroup enforces 512Mi" in lines[0]


def test_v1_empty_comount_directory_does_not_shadow_the_cpu_mount(tmp_path):
    """Under a nested systemd an empty "cpu,cpuacct" directory can sit beside a real "cpu" mount."""
    root = fake_v1(tmp_path, memory=1024**3, quota=50000)
    comount = root / "sys/fs/cgroup/cpu,cpuacct"
    comount.rename(root / "sys/fs/cgroup/cpu")  # the real mount is "cpu"...
    comount.mkdir()  # ...and the co-mount directory is left empty
    assert cgroup.read_limits(root)[0] == 0.5
