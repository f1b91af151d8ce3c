"""The ledger's periodic write (ledger.py) on a real directory: nothing counted is lost when a
request is counted during a write, or while the store fails."""

from __future__ import annotations

from nexusd.services.gateway.ledger import Ledger
from nexusd.services.gateway.usagestore import FileStore, Record


class CountsDuringWrite(FileStore):
    """A real FileStore; the first write lets a request be counted in the middle of it (what
    an await inside an etcd write allows)."""

    ledger: Ledger

    async def write(self, day: str, gateway: str, records: dict[str, Record], changed: set[str]) -> None:
        await super().write(day, gateway, records, changed)
        if not getattr(self, "done", False):
            self.done = True
            self.ledger.record("k1", "m", 100, 0)


async def test_a_request_counted_during_a_write_is_written_next_period(tmp_path):
    store = CountsDuringWrite(tmp_path / "usage")
    ledger = store.ledger = Ledger("gw", store, clock=lambda: 1_780_000_000.0)
    ledger.record("k1", "m", 1, 2)
    await ledger.sync()
    await ledger.sync()
    assert [row[3] for row in await store.read("2000-01-01", "2099-12-31")] == [{"m": [2, 101, 2]}]


async def test_counts_kept_while_the_store_fails_are_written_once_it_works(tmp_path):
    usage = tmp_path / "usage"
    usage.write_text("not a directory")  # the state directory is broken: every write fails
    store = FileStore(usage)
    ledger = Ledger("gw", store, clock=lambda: 1_780_000_000.0)
    ledger.record("k1", "m", 1, 2)
    try:
        await ledger.sync()
        raise AssertionError("the write should have failed")
    except OSError:
        pass
    ledger.record("k1", "m", 3, 4)
    usage.unlink()
    await ledger.sync()
    assert [row[3] for row in await store.read("2000-01-01", "2099-12-31")] == [{"m": [2, 4, 6]}]
