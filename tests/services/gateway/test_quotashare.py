"""Per-key consumption shared through a real etcd (gateway/quotashare.py): two gateways' shares
on one etcd admit against the global sum, within the documented overshoot bound; writes are per
key and period, not per request; a killed gateway's share expires with its lease; etcd away →
limit ÷ gateways last seen, then a resync. Minutes are rolled with an injected clock.

Two QuotaShare objects in one process stand for two gateways, called as the quota guard calls them.
"""

from __future__ import annotations

from nexusd.runtime.etcd import etcd_client
from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.quotashare import Counts, QuotaShare
from tests.helpers.net import async_wait_for

TPM = 200
RESERVE = 50  # tokens each request reserves (prompt estimate + max_tokens)
# Mid-minute, frozen: on the wall clock a test that crossed a UTC minute saw its counts decay
# (the sliding minute) and waited in vain for an exact sum.
MID_MINUTE = 1_000_020.0


def share(etcd, name: str, **kwargs) -> QuotaShare:
    shared = SharedSettings(etcd_endpoints=etcd.endpoint)
    return QuotaShare(name, lambda: etcd_client(shared), **kwargs)


async def alternate(gws: list[QuotaShare], requests: int, sync_every: int) -> int:
    """Requests alternated between the gateways, syncing all every `sync_every` requests;
    returns the tokens admitted."""
    admitted = 0
    for i in range(requests):
        gw = gws[i % len(gws)]
        if gw.take_tokens("k", TPM, RESERVE)[0] == 0:  # counted when it fits
            admitted += RESERVE
        assert gw.take_request("free", None, None)[0] == 0  # a key without limits is never refused
        if (i + 1) % sync_every == 0:  # a period: everyone publishes, then everyone reads
            for g in gws + gws:
                await g.sync()
    return admitted


async def test_global_sum_and_overshoot_bound(etcd):
    clock = [MID_MINUTE]
    a, b = (share(etcd, n, clock=lambda: clock[0]) for n in ("gw-a", "gw-b"))
    try:
        # Synced after every request: the limit holds exactly.
        assert await alternate([a, b], 12, sync_every=1) == TPM
        assert a.take_tokens("k", TPM, RESERVE)[0] > 0 and b.take_tokens("k", TPM, RESERVE)[0] > 0
        assert a.used("k")[1] == b.used("k")[1] == TPM
        # Without the shared view each gateway would have admitted TPM: 2× the limit.
        clock[0] += 120  # two minutes on: the window is empty again
        # Synced every 2 requests (one per gateway per period): overshoot ≤ (G − 1) × one reservation.
        admitted = await alternate([a, b], 12, sync_every=2)
        assert TPM <= admitted <= TPM + (2 - 1) * RESERVE
    finally:
        await a.stop()
        await b.stop()


async def test_one_write_per_key_and_period(etcd):
    a = share(etcd, "gw-a", clock=lambda: MID_MINUTE)
    try:
        for _ in range(100):
            a.add("k", requests=1, tokens=3)
        a.add("j", requests=1)
        await a.sync()
        await a.sync()  # nothing changed: nothing written
        assert a.writes == 2
    finally:
        await a.stop()


async def test_killed_gateways_share_expires_with_its_lease(etcd):
    a, b = (share(etcd, n, ttl=2, clock=lambda: MID_MINUTE) for n in ("gw-a", "gw-b"))
    try:
        a.add("k", requests=1, tokens=150)
        await a.sync()
        await b.sync()
        assert b.used("k")[1] == 150 and b.gateways_seen == 2
        await a.stop(revoke=False)  # killed: no goodbye, the lease runs out

        async def gone() -> bool:
            await b.sync()
            return b.used("k")[1] == 0 and b.gateways_seen == 1

        await async_wait_for(gone, timeout=15, what="a's share expired with its lease")
    finally:
        await a.stop()
        await b.stop()


async def test_etcd_away_admits_against_a_share_then_resyncs(etcd):
    a, b = (share(etcd, n, period=0.2, ttl=3, clock=lambda: MID_MINUTE) for n in ("gw-a", "gw-b"))
    try:
        a.add("k", requests=1, tokens=40)
        a.start()
        b.start()

        async def both_seen() -> bool:
            return a.connected and b.gateways_seen == 2 and b.used("k")[1] == 40

        await async_wait_for(both_seen, timeout=15, what="both gateways synced")
        assert b.share(TPM) == TPM
        etcd.stop()

        async def cut_off() -> bool:
            return not b.connected

        await async_wait_for(cut_off, timeout=15, what="b noticed etcd is away")
        assert b.share(TPM) == TPM / 2  # limit ÷ the 2 gateways it last saw
        assert b.used("k")[1] == 0  # own counts only
        b.add("k", requests=1, tokens=100)
        assert b.take_tokens("k", TPM, 1)[0] > 0  # 100 + 1 > 200 / 2
        etcd.start()

        async def resynced() -> bool:
            return a.connected and b.connected and a.used("k")[1] == 140 and b.used("k")[1] == 140

        await async_wait_for(resynced, timeout=30, what="both republished after etcd came back")
    finally:
        await a.stop()
        await b.stop()


def test_sliding_minute_with_an_injected_clock():
    clock = [600.0]  # the start of a UTC minute
    q = QuotaShare("gw", clock=lambda: clock[0])
    q.add("k", requests=4, tokens=200)
    assert q.used("k") == (4, 200)
    assert q.take_request("k", 4, None)[0] > 0 and q.take_tokens("k", TPM, 1)[0] > 0  # refusals count nothing
    clock[0] = 690.0  # half-way through the next minute: half the previous one still counts
    assert q.used("k") == (2, 100)
    assert q.take_tokens("k", TPM, 101) == (q._wait(1, TPM), 100)
    assert q.take_request("k", 4, None) == (0, "", 3)  # admitted: the sliding minute with it
    assert q.take_tokens("k", TPM, 100) == (0, 200)
    clock[0] = 780.0  # two minutes after those: nothing left
    assert q.used("k") == (0, 0)
    assert Counts.parse(q.own["k"].record()) == q.own["k"]
