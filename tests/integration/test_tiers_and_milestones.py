"""Orders across price tiers and milestones, through a real gateway: the 200, the order
look-up, the export, the stats, the event view."""

from __future__ import annotations

import pytest

from flashgate.core import keys, store
from tests.support import check_invariants, event_body, new_id, wait_for


def test_an_order_across_tiers_over_http(gw, r):
    """One unit at 100, then 990: an order of 2 from the start is 100 + 990 with its
    breakdown, in its 200, its look-up, an Idempotency-Key's replay, the export and
    the revenue; the next order of 2 is of one price."""
    ev = new_id("tierhttp")
    body = event_body(stock=(6,), limits=(3,))
    body["skus"][0].update(price=990, tiers=[{"units": 1, "price": 100}])
    gw.put_event(ev, body)
    key = {"Idempotency-Key": "tier-1"}
    status, first, _ = gw.buy(ev, "s0", "a", 2, headers=key)
    assert status == 200, first
    assert (first["qty"], first["unit_price"], first["amount"]) == (2, 100, 1090)
    assert first["price_breakdown"] == [{"qty": 1, "unit_price": 100},
                                        {"qty": 1, "unit_price": 990}]
    status, again, _ = gw.buy(ev, "s0", "a", 2, headers=key)
    assert (status, again) == (200, first)
    status, second, _ = gw.buy(ev, "s0", "b", 2)
    assert status == 200 and (second["unit_price"], second["amount"]) == (990, 1980)
    assert "price_breakdown" not in second
    status, looked, _ = gw.request("GET", f"/api/v1/orders/{first['order_id']}",
                                   headers=gw.who("a"))
    assert status == 200
    assert looked == first
    exported = {o["order_id"]: o for o in gw.orders_export(ev)}
    assert exported[first["order_id"]]["price_breakdown"] == first["price_breakdown"]
    assert exported[first["order_id"]]["amount"] == 1090
    stats = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
    assert stats["revenue"] == 1090 + 1980 and stats["skus"][0]["revenue"] == 1090 + 1980
    # the workers' own counts add the exact amounts too (flushed every 0.5 s)
    wait_for(lambda: int(r.hget(keys.stats(ev), "revenue") or 0) == 1090 + 1980,
             "the workers' revenue counts")
    check_invariants(r, gw, ev, body, [first, second])


def milestones_of(gw, ev):
    return gw.request("GET", f"/api/v1/events/{ev}")[1]["milestones"]


def test_milestones_in_the_view_the_stats_and_the_export(gw, r):
    """Over two SKUs: b's order takes the event to 2 units, c's to 4 (past 3 too);
    100 is not reached. The view (on every worker, from memory), the stats and the
    export say so; each buyer of a live order earns the reached rewards."""
    ev = new_id("mshttp")
    body = event_body(stock=(5, 5), limits=(3, 3),
                      milestones=[{"sold": 2, "reward": "tote"}, {"sold": 3, "reward": "cup"},
                                  {"sold": 100, "reward": "car"}])
    gw.put_event(ev, body)
    assert [m["reached"] for m in milestones_of(gw, ev)] == [False, False, False]
    acked = []
    for sku, user, qty in (("s0", "a", 1), ("s1", "b", 1), ("s0", "c", 2)):
        status, order, _ = gw.buy(ev, sku, user, qty)
        assert status == 200, order
        acked.append(order)
    _, b, c = acked
    want = [{"sold": 2, "reward": "tote", "reached": True, "reached_ms": b["created_ms"]},
            {"sold": 3, "reward": "cup", "reached": True, "reached_ms": c["created_ms"]},
            {"sold": 100, "reward": "car", "reached": False, "reached_ms": None}]
    assert store.parse_milestones(r.hgetall(keys.milestones(ev))) == {
        2: (b["created_ms"], b["order_id"]), 3: (c["created_ms"], c["order_id"])}
    gw.on_every_worker(lambda: milestones_of(gw, ev) == want, "the reached milestones")
    stats = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
    assert stats["milestones"] == want
    exported = gw.orders_export(ev)
    assert sorted(o["user_id"] for o in exported) == ["a", "b", "c"]
    assert all(o["rewards"] == ["tote", "cup"] for o in exported)
    check_invariants(r, gw, ev, body, acked)


def test_an_event_without_milestones(gw, r):
    ev = new_id("noms")
    body = event_body(stock=(3,), limits=(2,))
    gw.put_event(ev, body)
    status, order, _ = gw.buy(ev, "s0", "a", 2)
    assert status == 200, order
    assert gw.request("GET", f"/api/v1/events/{ev}")[1]["milestones"] == []
    assert gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]["milestones"] == []
    assert [o["rewards"] for o in gw.orders_export(ev)] == [[]]
    assert r.get(keys.event_units(ev)) == b"2" and not r.exists(keys.milestones(ev))
    check_invariants(r, gw, ev, body, [order])


@pytest.mark.parametrize("bad", [{"sold": 0, "reward": "x"}, {"sold": 1}, {"reward": "x"},
                                 {"sold": "2", "reward": "x"}, [2, "x"]])
def test_a_bad_milestone_is_refused_and_changes_nothing(gw, r, bad):
    ev = new_id("badms")
    body = event_body(stock=(3,), milestones=[bad])
    status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", body)
    assert (status, data["error"]) == (400, "bad_request")
    assert not r.exists(keys.event(ev), keys.SkuKeys(ev, "s0").meta, keys.event_units(ev))


def test_milestones_in_a_rush_over_several_workers(gw, r):
    """Buyers on many connections over both workers, qty 1-3, two SKUs (one with a
    ladder): every threshold the event's units reached is recorded once, by an order
    whose units crossed it as the streams order the sales; the orders' amounts add
    up to the revenue (check_invariants)."""
    import asyncio
    import random

    from tests.support import crossing_bounds, http_session

    ev = new_id("msrush")
    thresholds = list(range(4, 130, 7))
    body = event_body(stock=(60, 60), limits=(3, 3),
                      milestones=[{"sold": t, "reward": f"r{t}"} for t in thresholds])
    body["skus"][0]["tiers"] = [{"units": 5, "price": 10}, {"units": 5, "price": 20}]
    gw.put_event(ev, body)
    rng = random.Random(7)
    sessions = [[gw.buy_request(ev, f"s{rng.randrange(2)}", f"c{c}u{n}", rng.randint(1, 3))
                 for n in range(6)] for c in range(24)]
    results: list = []

    async def rush():
        await asyncio.gather(*(http_session(gw.port, reqs, results) for reqs in sessions))

    asyncio.run(rush())
    acked = [data for _tag, status, data in results if status == 200]
    assert all(status in (200, 409) for _tag, status, _ in results), results
    assert len(acked) > 20
    total = int(r.get(keys.event_units(ev)))
    assert total == sum(o["qty"] for o in acked)
    got = store.parse_milestones(r.hgetall(keys.milestones(ev)))
    assert sorted(got) == [t for t in thresholds if t <= total]
    bounds = crossing_bounds(r, ev, ["s0", "s1"])
    by_id = {o["order_id"]: o for o in acked}
    for t, (ms, oid) in got.items():
        lo, hi, q = bounds[oid]
        assert lo < t <= hi + q, f"{oid} ({lo}..{hi} before it, qty {q}) did not cross {t}"
        assert ms == by_id[oid]["created_ms"]
    check_invariants(r, gw, ev, body, acked)
