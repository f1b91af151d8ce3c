"""What a distribution packager installs besides the units: the sysusers.d and tmpfiles.d
entries, an example env file per service, and the manifest the NixOS module reads.

The repo's `packaging/` and `nix/services.json` are these functions' output, committed; a test
fails when they drift. `nexusd units install` writes the same content, so a wheel is enough.
"""

from __future__ import annotations

import json

from nexusd.runtime.envfile import env_example
from nexusd.runtime.service import CONFIG_DIR
from nexusd.runtime.settings import env_name
from nexusd.services import load_service, service_names
from nexusd.units.render import MARKER, context, socket_units

SYSUSERS = f"""{MARKER}: the system user of the nexusd units.
# The units say User=nexus with DynamicUser=yes: systemd uses this user when it exists, so
# files in {CONFIG_DIR} can be made readable to group nexus (the gateway's api-keys).
u nexus - "nexusd AI services" - -
"""

TMPFILES = f"""{MARKER}: configuration directories of the nexusd units.
# Env files ({CONFIG_DIR}/<service>.env) are read by systemd itself, as root: keep them 0600.
d {CONFIG_DIR} 0755 root root -
# TLS keys reach the gateway through LoadCredential= (systemd reads them as root).
d {CONFIG_DIR}/tls 0700 root root -
# API key hashes, reloaded by the gateway on SIGHUP: readable by group nexus, never world.
f {CONFIG_DIR}/api-keys 0640 root nexus -
"""


def env_examples(services: list[str] | None = None) -> dict[str, str]:
    """`<service>.env` → the text of `nexusd env-example <service>`."""
    return {f"{name}.env": env_example(load_service(name)) for name in services or service_names()}


def manifest(services: list[str] | None = None) -> str:
    """Per service: port variables, listeners and socket units (for nix/module.nix)."""
    doc = {}
    for name in services or service_names():
        cls = load_service(name)
        ctx = context(cls)
        sockets = socket_units(cls, ctx)
        prefix = env_name(cls.Settings, "")  # NEXUS_<SVC>_, a hyphen in the name becoming _
        doc[name] = {
            "unit": f"{ctx.unit}.service",
            "env_prefix": prefix,
            "listeners": [
                {"name": lst.name, "host": lst.host, "port": lst.port,
                 # the first listener's port is NEXUS_<SVC>_PORT, others NEXUS_<SVC>_<NAME>_PORT
                 "port_env": f"{prefix}{'' if i == 0 else lst.name.upper() + '_'}PORT",
                 "socket": sockets[i] if sockets else None}
                for i, lst in enumerate(ctx.listeners)
            ],
            "resources": ctx.resources.model_dump(exclude_none=True),
        }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
