"""systemd units rendered from each service's metadata and settings (`nexusd units ...`).

`nexusd units render` writes, for every registered service (`nexusd.services.service_names()`):

- `nexus-<service>.service`: Type=notify + watchdog, restart policy, TimeoutStartSec= from
  `NEXUS_<SERVICE>_START_TIMEOUT` plus a margin, limits from the metadata `resources` block
  (`cpu` → CPUQuota=, `memory` → MemoryMax=/MemoryHigh=, `gpu` → DeviceAllow=, `gpu_memory` →
  NEXUS_GPU_MEMORY), hardening, EnvironmentFile=-/etc/nexus/<service>.env;
- `nexus-<service>.socket` (and `nexus-<service>-<listener>.socket` for every further listener)
  when the class sets `socket_activation = True`: one ListenStream= per `listeners()` entry,
  named with FileDescriptorName=<listener name> (systemd allows one name per socket unit);
- `nexus.target`, which every unit is `WantedBy=`;
- `nexus-<service>@.service` / `@.socket`: instance templates; `--instances SERVICE=LIST` adds
  each instance's drop-ins (ports, CUDA_VISIBLE_DEVICES): nexusd/units/instances.py;
- `nexus-etcd.service`, the host's local etcd that every service `Wants=` (unless `--no-etcd`),
  and every service unit reads `/etc/nexus/common.env` (NEXUS_ETCD_ENDPOINTS) before its own env
  file: nexusd/units/etcd.py. nexusd/units/local.py reads installed units back (the gateway
  without etcd, `nexusd status`).

A service needs no change here to get its units. Two optional classmethods on `Service`
(nexusd/runtime/service.py) let it add what only it knows; both receive a `UnitContext`
(service name, `nexusd` path, default settings, resources, listeners, config dir):

- `unit_directives(ctx) -> list[str]`: extra lines for the `[Service]` section, e.g. the
  gateway's `LoadCredential=tls.key:/etc/nexus/tls/gateway.key`.
- `extra_unit_files(ctx) -> dict[str, str]`: more files, relative path → content, rendered and
  installed next to the units, e.g. `{"ollama.service.d/nexus.conf": "[Service]\\n..."}`.
  Paths must be relative and stay inside the unit directory.

Rendering never reads the environment or the host: settings are the class defaults, so
`units/` in the repo is the same on every machine. Host facts come in as options (`--nexusd`,
`--groups`). See docs/operations.md.
"""

from nexusd.units.render import MARKER, UnitContext, render_all

__all__ = ["MARKER", "UnitContext", "render_all"]
