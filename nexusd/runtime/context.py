"""`Runtime`: what the runtime lends a service — notifier, metrics, settings, progress reports
and the shared HTTP client."""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

import aiohttp

from nexusd.runtime.admission import Admission, AdmissionStats
from nexusd.runtime.http import client_session
from nexusd.runtime.metrics import Metrics
from nexusd.runtime.settings import SharedSettings
from nexusd.runtime.systemd import Notifier

if TYPE_CHECKING:
    from nexusd.runtime.metadata import Limits


def new_instance_id(service: str) -> str:
    """`<service>-<host>-<random>`, and `@N` for instance N of a template unit (its unit sets
    NEXUS_INSTANCE=%i: nexusd/units/instances.py), so `template@1` is told apart at a glance."""
    host = socket.gethostname().split(".")[0]
    instance = os.environ.get("NEXUS_INSTANCE", "")
    return f"{service}-{host}-{secrets.token_hex(4)}" + (f"@{instance}" if instance else "")


class Runtime:
    def __init__(self, service: str, shared: SharedSettings, notifier: Notifier | None = None) -> None:
        self.service = service
        self.shared = shared
        self.instance_id = new_instance_id(service)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(service)
        self.limits: Limits | None = None
        self.base_url = ""  # set once sockets are bound
        self.ready = False
        self._http: aiohttp.ClientSession | None = None
        self._queues = AdmissionStats()
        self.metrics.registry.register(self._queues)

    def admission(self, name: str, capacity: int, max_queue: int, **kwargs: Any) -> Admission:
        """A bounded slot + queue (runtime/admission.py) whose gauges are on /metrics as
        `nexus_queue_*{queue=name}`."""
        queue = Admission(name, capacity, max_queue, **kwargs)
        self._queues.queues.append(queue)
        return queue

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`."""
        self.notifier.status(text)

    def progress(self, text: str, extend_seconds: float = 30) -> None:
        """A long load made progress: say so and ask systemd for more start time."""
        self.notifier.notify(f"STATUS={text}", f"EXTEND_TIMEOUT_USEC={int(extend_seconds * 1e6)}")

    @property
    def http(self) -> aiohttp.ClientSession:
        """The process-wide client for calls to other services (created on first use)."""
        if self._http is None or self._http.closed:
            self._http = client_session(internal_token=self.shared.internal_token)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
