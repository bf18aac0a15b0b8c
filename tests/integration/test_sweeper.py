"""The sweeper in-process against the tests' Redis: its cursor in a SKU's stream of
orders, and what it leaves to the transition script (which decides by Redis TIME)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from flashgate.core import keys, orders
from flashgate.core.events import parse_event
from flashgate.core.redisconn import RedisConnection
from flashgate.core.scripts import load
from flashgate.gateway.sweeper import Sweeper
from tests.integration.test_commit_script import commit, configure
from tests.integration.test_lifecycle import transition
from tests.support import check_invariants, event_body, new_id, now_ms


class _Refresher:
    def __init__(self):
        self.asked = []

    def read_counts(self, skus):
        self.asked += skus


def _make_due(r, k, oid, due: bool):
    """Move an order's deadline into the past (due) or an hour ahead."""
    d = orders.from_record(oid, r.hget(k.order_by_id, oid))
    pay_by = now_ms() - 1 if due else now_ms() + 3_600_000
    r.hset(k.order_by_id, oid, orders.record("reserved", d["user_id"], d["qty"],
                                             d["unit_price"], d["created_ms"], pay_by))


def test_the_cursor_stops_at_an_order_not_yet_due(r, redis_server):
    ev = new_id("sw")
    body = event_body(stock=(10,), limits=[10])
    event = parse_event(ev, body)
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    batches = [[(f"{ev}.s0.b{b}o{i}", "u1") for i in range(2)] for b in range(3)]
    for batch in batches:
        commit(r, ev, "s0", batch)
    for b, batch in enumerate(batches):
        for i, (oid, _) in enumerate(batch):
            _make_due(r, k, oid, due=not (b == 1 and i == 1))  # b1o1: not due
    blocker = batches[1][1][0]
    srt = SimpleNamespace(keys=k, event_id=ev, sku=event.skus[0])
    runtimes = SimpleNamespace(all_skus=lambda: [srt])
    clock = [now_ms() + 5000]  # the stream's entries are old enough to look at
    refresher = _Refresher()

    def status(oid):
        return orders.from_record(oid, r.hget(k.order_by_id, oid))["status"]

    async def main():
        conn = RedisConnection(redis_server.url, on_connect=load)
        await conn.connect()
        try:
            sw = Sweeper(conn, runtimes, refresher, lambda: clock[0])
            assert await sw.sweep() == 3  # b0's two, b1o0; b2 is behind the blocker
            assert [status(o) for o, _ in batches[2]] == ["reserved", "reserved"]
            assert status(blocker) == "reserved" and refresher.asked == [srt]
            assert await sw.sweep() == 0  # not before the blocker's deadline
            assert transition(r, ev, "s0", "paid", [blocker])[1] == b"done"
            assert await sw.sweep() == 0  # (still waiting for that deadline)
            clock[0] += 3_600_000 + 1000
            assert await sw.sweep() == 2
            assert [status(o) for o, _ in batches[2]] == ["expired", "expired"]
            assert status(blocker) == "paid"
            # a new sweeper (a restarted worker) reads the stream again: nothing to do
            assert await Sweeper(conn, runtimes, refresher, lambda: clock[0]).sweep() == 0
        finally:
            conn.close()

    asyncio.run(main())
    assert int(r.get(k.sold)) == 1 and int(r.get(k.returned)) == 5
    check_invariants(r, None, ev, body, [], exact=False)


def test_orders_not_due_by_redis_time_stay(r, redis_server):
    """A sweeper whose clock runs ahead asks to expire orders Redis finds not due:
    they stay reserved."""
    ev = new_id("sw2")
    body = event_body(stock=(3,), limits=[3])
    event = parse_event(ev, body)
    configure(r, ev, body)  # 60 s to pay
    k = keys.SkuKeys(ev, "s0")
    batch = [(f"{ev}.s0.o{i}", "u1") for i in range(2)]
    commit(r, ev, "s0", batch)
    srt = SimpleNamespace(keys=k, event_id=ev, sku=event.skus[0])
    runtimes = SimpleNamespace(all_skus=lambda: [srt])

    async def main():
        conn = RedisConnection(redis_server.url, on_connect=load)
        await conn.connect()
        try:
            sw = Sweeper(conn, runtimes, _Refresher(), lambda: now_ms() + 120_000)
            assert await sw.sweep() == 0
        finally:
            conn.close()

    asyncio.run(main())
    assert int(r.get(k.sold)) == 2
    check_invariants(r, None, ev, body, [], exact=False)


def test_a_sku_that_fails_does_not_stop_the_others(r, redis_server, caplog):
    """An entry of s0's stream that cannot be read fails s0's sweep, logged (once, not
    every pass); s1's due order is expired all the same, pass after pass."""
    ev = new_id("swbad")
    body = event_body(stock=(3, 3), limits=[3, 3])
    event = parse_event(ev, body)
    configure(r, ev, body)
    k0, k1 = keys.SkuKeys(ev, "s0"), keys.SkuKeys(ev, "s1")
    r.xadd(k0.orders, {"type": "created", "ts": "1", f"{ev}.s0.x": "not-a-value"})
    oid = f"{ev}.s1.o1"
    commit(r, ev, "s1", [(oid, "u1")])
    _make_due(r, k1, oid, due=True)
    skus = [SimpleNamespace(keys=k, event_id=ev, sku=s) for k, s in zip((k0, k1), event.skus,
                                                                         strict=True)]
    runtimes = SimpleNamespace(all_skus=lambda: skus)
    clock = [now_ms() + 5000]

    async def main():
        conn = RedisConnection(redis_server.url, on_connect=load)
        await conn.connect()
        try:
            sw = Sweeper(conn, runtimes, _Refresher(), lambda: clock[0])
            assert await sw.sweep() == 1
            assert await sw.sweep() == 0
        finally:
            conn.close()

    with caplog.at_level("WARNING", logger="flashgate.sweeper"):
        asyncio.run(main())
    assert orders.from_record(oid, r.hget(k1.order_by_id, oid))["status"] == "expired"
    said = [rec for rec in caplog.records if k0.orders in rec.getMessage()]
    assert len(said) == 1, [rec.getMessage() for rec in caplog.records]
    r.delete(k0.orders)
    check_invariants(r, None, ev, body, [{"order_id": oid, "sku": "s1", "user_id": "u1",
                                          "qty": 1}])
