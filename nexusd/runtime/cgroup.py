"""Read the CPU quota and memory limit this process's cgroup enforces (v2 and v1), and compare
them with the service's declared `resources`. `root` is a parameter so tests can point it at
fake cgroupfs trees."""

from __future__ import annotations

import math
from pathlib import Path

from nexusd.runtime.metadata import Limits, Resources

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_V1_UNLIMITED = 1 << 62


def parse_bytes(quantity: str) -> int:
    """`16Gi`, `512M`, `1073741824` → bytes (Kubernetes quantity suffixes, case-insensitive)."""
    q = quantity.strip()
    num = q.rstrip("kKmMgGtTiIbB")
    unit = q[len(num):].lower().removesuffix("b")
    if unit not in _UNITS or not num:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(num) * _UNITS[unit])


def parse_cpu(quantity: str) -> float:
    """`4` → 4.0, `500m` → 0.5 cores."""
    q = quantity.strip()
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def format_bytes(n: int) -> str:
    for unit, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def format_cpu(cores: float) -> str:
    return str(int(cores)) if cores == int(cores) else f"{round(cores * 1000)}m"


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """controller → path, from /proc/self/cgroup; the v2 entry is keyed ''."""
    found: dict[str, str] = {}
    for line in proc_cgroup.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            found[c] = path
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_limits(root: Path = Path("/"), proc_cgroup: Path | None = None) -> tuple[float | None, int | None, str | None]:
    """(cpu cores, memory bytes, cgroup path) enforced on this process; None = unlimited."""
    cgfs = root / "sys/fs/cgroup"
    try:
        own = _own_cgroups(proc_cgroup or root / "proc/self/cgroup")
    except OSError:
        return None, None, None
    cpu: float | None = None
    mem: int | None = None
    if "memory" in own or "cpu" in own:  # cgroup v1 (or hybrid with v1 controllers)
        raw = _read(cgfs / "memory" / own.get("memory", "/").lstrip("/") / "memory.limit_in_bytes")
        if raw and raw.isdigit() and int(raw) < _V1_UNLIMITED:
            mem = int(raw)
        # The mount that holds our cgroup: an empty "cpu,cpuacct" directory left by a failed
        # co-mount (seen under a nested systemd) must not shadow a separate "cpu" mount.
        cpu_rel = own.get("cpu", "/").lstrip("/")
        cpu_dir = next((cgfs / n / cpu_rel for n in ("cpu,cpuacct", "cpu")
                        if (cgfs / n / cpu_rel / "cpu.cfs_quota_us").is_file()), cgfs / "cpu" / cpu_rel)
        quota, period = _read(cpu_dir / "cpu.cfs_quota_us"), _read(cpu_dir / "cpu.cfs_period_us")
        if quota and period and quota.lstrip("-").isdigit() and int(quota) > 0:
            cpu = int(quota) / int(period)
        return cpu, mem, own.get("memory") or own.get("name=systemd")
    # cgroup v2: the limits systemd sets (MemoryMax=, CPUQuota=) sit on the unit's own cgroup.
    rel = own.get("", "/")
    d = cgfs / rel.lstrip("/")
    raw = _read(d / "memory.max")
    if raw and raw != "max":
        mem = int(raw)
    cpu_max = _read(d / "cpu.max")
    if cpu_max and not cpu_max.startswith("max"):
        quota, period = cpu_max.split()
        cpu = int(quota) / int(period)
    return cpu, mem, rel


def compare(resources: Resources, root: Path = Path("/"), proc_cgroup: Path | None = None) -> Limits:
    cpu, mem, path = read_limits(root, proc_cgroup)
    limits = Limits(
        cpu=format_cpu(cpu) if cpu is not None else None,
        memory=format_bytes(mem) if mem is not None else None,
        cgroup=path,
    )
    if cpu is None and mem is None:
        limits.status = "unenforced"
        return limits
    if resources.memory and mem is not None and parse_bytes(resources.memory) != mem:
        limits.warnings.append(f"memory: declared {resources.memory}, cgroup enforces {limits.memory}")
    elif resources.memory and mem is None:
        limits.warnings.append(f"memory: declared {resources.memory}, cgroup enforces none")
    if resources.cpu and cpu is not None and not math.isclose(parse_cpu(resources.cpu), cpu, rel_tol=0.01):
        limits.warnings.append(f"cpu: declared {resources.cpu}, cgroup enforces {limits.cpu}")
    elif resources.cpu and cpu is None:
        limits.warnings.append(f"cpu: declared {resources.cpu}, cgroup enforces none")
    limits.status = "mismatch" if limits.warnings else "matching"
    return limits
