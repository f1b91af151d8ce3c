"""Backend instances: where they are (from env or etcd), what they serve (their /v1/metadata),
whether they are ready (their /readyz, polled), and their load (for the balancer).

Instances are keyed by base URL, so the same service seen both in the environment and in etcd
is one instance. Each instance remembers which sources named it and goes away with the last.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import ValidationError

from nexusd.runtime.metadata import MetadataDocument
from nexusd.services.gateway.allowlist import AllowList

if TYPE_CHECKING:
    from nexusd.services.gateway.upstreams import Upstream

log = logging.getLogger("nexusd.gateway.instances")

# What we read from an instance's /readyz and /v1/metadata: bounded, so a broken or hostile
# registrant cannot make us buffer without end (the session's timeout bounds the time).
MAX_DOCUMENT = 1 << 20


class InvalidMetadata(ValueError):
    """The instance's /v1/metadata is not a document we can route by; the text says why."""


@dataclass(eq=False)
class ModelGate:
    """One model's own bound on one instance (metadata `models[].concurrency`, e.g. one
    generation at a time per model), held on top of the instance's; same fields as Instance's."""

    name: str
    max_inflight: int = 1
    max_queue: int = 0
    outstanding: int = 0
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


@dataclass(eq=False)
class Instance:
    base_url: str
    sources: set[str] = field(default_factory=set)
    instance_id: str = ""
    service: str = ""
    metadata: dict[str, Any] | None = None
    ready: bool = False
    is_gateway: bool = False  # a URL that turned out to be a gateway (ourselves or another)
    last_error: str = ""
    invalid: str = ""  # why its metadata was refused; it is never routed to while set
    refused: str = ""  # why the allow-list refuses it: never contacted while set
    # load, for the balancer
    outstanding: int = 0
    max_inflight: int = 1 << 30
    max_queue: int = 0
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    model_gates: dict[str, ModelGate] = field(default_factory=dict)  # model id → its own bound
    ejected_until: float = 0.0
    failures: int = 0  # consecutive
    served: int = 0
    upstream: Upstream | None = None  # a plain OpenAI-compatible upstream (upstreams.py polls it)

    @property
    def name(self) -> str:
        return self.instance_id or self.base_url

    def state(self, now: float) -> str:
        if self.is_gateway:
            return "ignored"
        if self.refused:
            return "refused"
        if self.invalid:
            return "invalid"
        if self.ejected_until > now:
            return "ejected"
        if self.metadata is None:
            return "unknown"
        return "ready" if self.ready else "not_ready"

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id, "service": self.service, "base_url": self.base_url,
            "sources": sorted(self.sources), "state": self.state(now), "ready": self.ready,
            "outstanding": self.outstanding, "queued": len(self.waiters),
            "max_inflight": self.max_inflight, "max_queue": self.max_queue,
            "served": self.served, "last_error": self.last_error or None,
            "invalid": self.invalid or None, "refused": self.refused or None,
            # what the instance declares and what its cgroup enforces (for `nexusd status`)
            "models": [m["id"] for m in (self.metadata or {}).get("models", [])],
            "resources": (self.metadata or {}).get("resources"),
            "limits": (self.metadata or {}).get("limits"),
        }


class InstanceSet:
    """All known instances; polls each one's /readyz and (re)fetches its metadata.

    `on_change` runs whenever what can be routed to changes (an instance added, removed, became
    ready or not ready, or its metadata changed); the gateway rebuilds its routing table there.
    """

    def __init__(self, *, poll_interval: float, metadata_every: float, default_inflight: int,
                 default_queue: int, on_change: Callable[[], None],
                 headers: dict[str, str] | None = None, on_event: Callable[[str], None] | None = None,
                 allow: AllowList | None = None, ssl: Any = True) -> None:
        self.instances: dict[str, Instance] = {}
        self.poll_interval = poll_interval
        self.metadata_every = metadata_every
        self.default_inflight = default_inflight
        self.default_queue = default_queue
        self.on_change = on_change
        self.on_event = on_event or (lambda _event: None)
        self.headers = headers or {}
        self.allow = allow  # None: every registered instance may be contacted
        self.ssl = ssl  # how https:// instances are verified
        self.self_urls: set[str] = set()
        self.session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fetched_at: dict[str, float] = {}
        self.polled_once = asyncio.Event()

    # --- membership --------------------------------------------------------------------
    def add(self, base_url: str, source: str) -> None:
        base_url = base_url.rstrip("/")
        inst = self.instances.get(base_url)
        if inst is None:
            inst = self.instances[base_url] = Instance(base_url=base_url)
            inst.max_inflight, inst.max_queue = self.default_inflight, self.default_queue
            log.info("instance added: %s (from %s)", base_url, source)
            self.on_event("added")
            self._wake.set()  # poll it now rather than at the next tick
        inst.sources.add(source)

    def remove_source(self, source: str) -> None:
        changed = False
        for url, inst in list(self.instances.items()):
            if source in inst.sources:
                inst.sources.discard(source)
                if not inst.sources:
                    del self.instances[url]
                    self._fetched_at.pop(url, None)
                    log.info("instance removed: %s (%s)", inst.name, source)
                    self.on_event("removed")
                    changed = True
        if changed:
            self.on_change()

    def poll_soon(self) -> None:
        """Poll now (after an ejection: confirm with /readyz and update the table at once)."""
        self._wake.set()

    def sources(self, prefix: str) -> set[str]:
        return {s for inst in self.instances.values() for s in inst.sources if s.startswith(prefix)}

    # --- polling -----------------------------------------------------------------------
    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=4, sock_connect=2), headers=self.headers,
            connector=aiohttp.TCPConnector(ssl=self.ssl))
        self._task = asyncio.create_task(self._run(), name="gateway-instance-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_all()
            except Exception:  # noqa: BLE001 - discovery must outlive any one bad instance
                log.exception("instance poll failed; polling goes on")
            self.polled_once.set()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    async def poll_all(self) -> None:
        instances = [i for i in self.instances.values() if i.upstream is None]
        if not instances:
            return
        if self.allow is not None:
            await self.allow.refresh()
        results = await asyncio.gather(*(self._poll(i) for i in instances), return_exceptions=True)
        if any(r is True for r in results):
            self.on_change()

    async def _poll(self, inst: Instance) -> bool:
        """Refresh one instance; True when what it can serve changed."""
        assert self.session is not None
        before = (inst.ready, inst.instance_id, id(inst.metadata))
        now = time.monotonic()
        if not await self._allowed(inst):
            return before != (inst.ready, inst.instance_id, id(inst.metadata))
        try:
            async with self.session.get(inst.base_url + "/readyz") as resp:
                ready = resp.status == 200
                await read_bounded(resp)
            stale = now - self._fetched_at.get(inst.base_url, -1e9) > self.metadata_every
            if inst.metadata is None or stale or (ready and not inst.ready):
                await self._fetch_metadata(inst)
                self._fetched_at[inst.base_url] = now
            inst.ready = ready and not inst.is_gateway and not inst.invalid
            inst.last_error = inst.invalid or ("" if ready else f"/readyz answered {resp.status}")
        except InvalidMetadata as exc:
            if not inst.invalid:
                log.warning("instance %s: invalid /v1/metadata, not routed to: %s", inst.base_url, exc)
                self.on_event("invalid")
            inst.invalid = inst.last_error = str(exc)[:300]
            inst.ready = False
            inst.metadata = None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            inst.ready = False
            inst.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if inst.ready and 0 < inst.ejected_until <= now:
            # back after its cool-down and ready again. Only then: a ready /readyz between two
            # 5xx answers must not forget the failures counted so far (ejection needs them).
            inst.failures, inst.ejected_until = 0, 0.0
        return before != (inst.ready, inst.instance_id, id(inst.metadata))

    async def _allowed(self, inst: Instance) -> bool:
        """The allow-list check, before anything (the internal token included) is sent to it.
        Backends from the gateway's own environment are the operator's: not checked."""
        if self.allow is None or any(s.startswith("env:") for s in inst.sources):
            return True
        why = await self.allow.check(inst.base_url)
        if why and why != inst.refused:
            log.warning("instance %s refused: %s", inst.base_url, why)
            self.on_event("refused")
        inst.refused = why
        if why:
            inst.ready, inst.metadata, inst.last_error = False, None, why
            self._fetched_at.pop(inst.base_url, None)
        return not why

    async def _fetch_metadata(self, inst: Instance) -> None:
        assert self.session is not None
        async with self.session.get(inst.base_url + "/v1/metadata") as resp:
            if resp.status != 200:
                raise ValueError(f"/v1/metadata answered {resp.status}")
            raw = await read_bounded(resp)
        parsed = parse_metadata(raw)
        doc = parsed.model_dump(mode="json")  # every field present: routing reads it plainly
        claimed = self.claim(inst, parsed.service.instance_id)
        if claimed:
            raise InvalidMetadata(claimed)
        inst.invalid = ""
        inst.service, inst.instance_id = parsed.service.name, parsed.service.instance_id
        # A gateway listed among the backends (often our own URL in *_BASE_URL) would loop.
        inst.is_gateway = inst.service == "gateway" or inst.base_url in self.self_urls
        concurrency = parsed.concurrency
        inst.max_inflight = concurrency.max_inflight if concurrency else self.default_inflight
        inst.max_queue = concurrency.max_queue if concurrency else self.default_queue
        update_model_gates(inst, doc["models"])
        if inst.metadata != doc:
            inst.metadata = doc

    def claim(self, inst: Instance, instance_id: str) -> str:
        """Why `inst` may not take `instance_id` ('' when it may): an id another base URL
        already holds stays with the first holder (the file route and metrics go by id)."""
        for other in self.instances.values():
            if other is not inst and other.instance_id == instance_id and not other.invalid:
                return f"instance_id {instance_id!r} is already held by {other.base_url}"
        return ""

    def routable(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.ready and i.metadata is not None and not i.is_gateway]


def update_model_gates(inst: Instance, models: list[dict[str, Any]]) -> None:
    """Per-model bounds from the metadata; a gate that stays keeps its counts (requests hold it)."""
    gates: dict[str, ModelGate] = {}
    for m in models:
        bound = m.get("concurrency")
        if bound:
            gate = inst.model_gates.get(m["id"]) or ModelGate(f"{inst.name} model {m['id']}")
            gate.max_inflight = int(bound.get("max_inflight") or 1)
            gate.max_queue = int(bound.get("max_queue", 0))
            gates[m["id"]] = gate
    inst.model_gates = gates


async def read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_DOCUMENT) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise InvalidMetadata(f"{resp.url.path} is larger than {limit} bytes")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > limit:
            raise InvalidMetadata(f"{resp.url.path} is larger than {limit} bytes")
    return bytes(data)


def parse_metadata(raw: bytes) -> MetadataDocument:
    """The document as the runtime's models read it. Fields we do not know are dropped, not
    refused: during a rolling upgrade a newer peer may declare more than we understand."""
    from nexusd.runtime.validation import too_deep

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidMetadata(f"/v1/metadata is not JSON: {str(exc)[:100]}") from None
    if too_deep(data):
        raise InvalidMetadata("/v1/metadata nests too deeply")
    try:
        return MetadataDocument.model_validate(data)
    except ValidationError as exc:
        extra = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
        if len(extra) != len(exc.errors()):
            raise InvalidMetadata(_describe(exc)) from None
    for loc in extra:
        _drop(data, loc)
    try:
        return MetadataDocument.model_validate(data)
    except ValidationError as exc:
        raise InvalidMetadata(_describe(exc)) from None


def _drop(data: Any, loc: tuple[Any, ...]) -> None:
    for part in loc[:-1]:
        data = data[part]
    data.pop(loc[-1], None)


def _describe(exc: ValidationError) -> str:
    errors = [e for e in exc.errors() if e["type"] != "extra_forbidden"]
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "document"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid /v1/metadata: {where}: {first['msg']}{more}"
