"""Backends from the nexusd units enabled on this host, for a gateway without etcd.

One host then needs no configuration: `systemctl enable --now nexus-gateway nexus-images` and the
gateway calls images where its socket unit listens (nexusd/units/local.py reads the units and
drop-ins as systemd does). Rescanned every RESCAN seconds and on reload, so enabling another
service is picked up. Instances found here have the source `unit:<service>`; the gateway itself
is skipped. With NEXUS_ETCD_ENDPOINTS set this is off: etcd is then the one dynamic source.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nexusd.services.gateway.instances import InstanceSet
from nexusd.units.local import LocalService, scan

log = logging.getLogger("nexusd.gateway.localunits")
RESCAN = 10.0


class LocalUnitsDiscovery:
    def __init__(self, unit_dir: str, instances: InstanceSet, config_dir: str = "/etc/nexus") -> None:
        self.unit_dir = unit_dir
        self.config_dir = config_dir
        self.instances = instances
        self.found: list[LocalService] = []
        self._task: asyncio.Task[None] | None = None

    def rescan(self) -> None:
        self.found = [s for s in scan(self.unit_dir, self.config_dir) if s.name.split("@")[0] != "gateway"]
        wanted = {f"unit:{s.name}": s.url for s in self.found if s.enabled and s.url}
        for source in self.instances.sources("unit:"):
            inst = next(i for i in self.instances.instances.values() if source in i.sources)
            if wanted.get(source) != inst.base_url:
                self.instances.remove_source(source)
        for source, url in wanted.items():
            if url is not None:
                self.instances.add(url, source)

    async def start(self) -> None:
        self.rescan()
        self._task = asyncio.create_task(self._run(), name="gateway-local-units")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RESCAN)
            try:
                self.rescan()
            except Exception:  # noqa: BLE001 - a half-written unit: keep the last table, log it
                log.exception("scanning %s failed; keeping the last instances", self.unit_dir)

    def state(self) -> dict[str, Any]:
        return {"unit_dir": self.unit_dir, "services": [
            {"service": s.name, "enabled": s.enabled, "url": s.url, "problem": s.problem or None}
            for s in self.found]}
