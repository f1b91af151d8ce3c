"""Where the usage ledger (ledger.py) keeps its records, and where `nexusd keys usage` reads them.

A record is one gateway's cumulative use of one key on one UTC day:
`{"<model>": {"requests": N, "prompt_tokens": N, "completion_tokens": N}, ...}`.

- etcd: `/nexus/usage/<YYYY-MM-DD>/<key_id>/<gateway_id>` → the record as JSON, no lease.
- a directory (the gateway's state directory, NEXUS_GATEWAY_USAGE_DIR):
  `<dir>/<YYYY-MM-DD>/<gateway_id>.json` → `{"<key_id>": record, ...}`, replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIELDS = ("requests", "prompt_tokens", "completion_tokens")
PREFIX = "/nexus/usage/"
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
Record = dict[str, list[int]]  # model → [requests, prompt tokens, completion tokens]
Row = tuple[str, str, str, Record]  # day, key id, gateway id, record


def add_into(into: Record, record: Record) -> None:
    for model, counts in record.items():
        have = into.setdefault(model, [0, 0, 0])
        for i in range(3):
            have[i] += counts[i]


def dump(record: Record) -> dict[str, dict[str, int]]:
    return {model: dict(zip(FIELDS, counts, strict=True)) for model, counts in record.items()}


def load(doc: Any) -> Record:
    return {str(model): [int(counts.get(f) or 0) for f in FIELDS] for model, counts in doc.items()}


class Store(ABC):
    """Where the ledger keeps its records: etcd, a directory, or memory (one subclass each)."""

    @abstractmethod
    async def read(self, first: str, last: str) -> list[Row]:
        """Every gateway's records of the days `first`..`last` (inclusive, YYYY-MM-DD)."""

    @abstractmethod
    async def write(self, day: str, gateway: str, records: dict[str, Record], changed: set[str]) -> None:
        """This gateway's records of `day` (all its keys; `changed`: those that changed)."""

    @abstractmethod
    async def delete_before(self, day: str) -> None:
        """Every record of the days before `day` (retention)."""

    async def reset(self) -> None:
        """After a failure: drop any connection, the next call makes a fresh one."""

    async def close(self) -> None:
        await self.reset()

    @abstractmethod
    def describe(self) -> str:
        """Where the records are, for the log and `/v1/metadata`."""


class EtcdStore(Store):
    def __init__(self, client_factory: Callable[[], Any]) -> None:
        self._factory = client_factory
        self._client: Any = None

    async def _connected(self) -> Any:
        if self._client is None:
            client = self._factory()
            await client.connect()
            self._client = client
        return self._client

    async def read(self, first: str, last: str) -> list[Row]:
        client = await self._connected()
        # Keys sort by day: `<last>0` sorts after every `<last>/...` key ('/' < '0').
        rows: list[Row] = []
        for kv in await client.get_range(f"{PREFIX}{first}".encode(), f"{PREFIX}{last}0".encode()):
            parts = kv.key.decode()[len(PREFIX):].split("/")
            if len(parts) == 3 and DAY.match(parts[0]):
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    rows.append((parts[0], parts[1], parts[2], load(json.loads(kv.value))))
        return rows

    async def write(self, day: str, gateway: str, records: dict[str, Record], changed: set[str]) -> None:
        client = await self._connected()
        for key_id in sorted(changed):
            await client.put(f"{PREFIX}{day}/{key_id}/{gateway}".encode(),
                             json.dumps(dump(records[key_id]), separators=(",", ":")).encode())

    async def delete_before(self, day: str) -> None:
        client = await self._connected()
        await client.delete_range(PREFIX.encode(), f"{PREFIX}{day}".encode())

    async def reset(self) -> None:
        from nexusd.runtime.etcd import close_quietly

        client, self._client = self._client, None
        await close_quietly(client)

    def describe(self) -> str:
        return "etcd"


class FileStore(Store):
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _days(self, first: str, last: str) -> list[Path]:
        try:
            names = sorted(p.name for p in self.directory.iterdir() if DAY.match(p.name))
        except FileNotFoundError:
            return []
        return [self.directory / n for n in names if first <= n <= last]

    async def read(self, first: str, last: str) -> list[Row]:
        rows: list[Row] = []
        for folder in self._days(first, last):
            for path in sorted(folder.glob("*.json")):
                try:
                    doc = json.loads(path.read_text())
                    rows += [(folder.name, key_id, path.stem, load(rec)) for key_id, rec in doc.items()]
                except (OSError, ValueError, AttributeError, TypeError):
                    continue  # a file being replaced is whole (os.replace); anything else is not ours
        return rows

    async def write(self, day: str, gateway: str, records: dict[str, Record], changed: set[str]) -> None:
        folder = self.directory / day
        folder.mkdir(parents=True, exist_ok=True)
        doc = {key_id: dump(rec) for key_id, rec in sorted(records.items())}
        fd, tmp = tempfile.mkstemp(prefix=f".{gateway}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / f"{gateway}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def delete_before(self, day: str) -> None:
        for folder in self._days("0000-00-00", day):
            if folder.name < day:
                for path in folder.iterdir():
                    with contextlib.suppress(OSError):
                        path.unlink()
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def describe(self) -> str:
        return f"directory {self.directory}"


class MemoryStore(Store):
    """No etcd and no state directory (a gateway run by hand, outside systemd): the ledger lives
    as long as the process, and budgets still hold for this gateway."""

    def __init__(self) -> None:
        self.days: dict[str, dict[str, dict[str, Record]]] = {}  # day → gateway → key id → record

    async def read(self, first: str, last: str) -> list[Row]:
        return [(day, key_id, gateway, {m: list(c) for m, c in rec.items()})
                for day, gateways in sorted(self.days.items()) if first <= day <= last
                for gateway, keys in gateways.items() for key_id, rec in keys.items()]

    async def write(self, day: str, gateway: str, records: dict[str, Record], changed: set[str]) -> None:
        self.days.setdefault(day, {})[gateway] = {k: {m: list(c) for m, c in rec.items()} for k, rec in records.items()}

    async def delete_before(self, day: str) -> None:
        for old in [d for d in self.days if d < day]:
            del self.days[old]

    def describe(self) -> str:
        return "memory (no etcd, no NEXUS_GATEWAY_USAGE_DIR or $STATE_DIRECTORY)"
