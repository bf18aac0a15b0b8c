"""The record of an order across price tiers, and the milestones' readers: pure code."""

from __future__ import annotations

from flashgate.core import orders, store
from flashgate.core.events import parse_event
from flashgate.gateway._commit import tiered_order

OID = "ev.s0.abc"


def test_a_record_with_a_breakdown_reads_as_its_order():
    rec = orders.record("reserved", "u1", 3, 100, 5, 6, bd="1x100,2x990")
    got = orders.from_record(OID, rec.encode())
    assert got == {"order_id": OID, "event_id": "ev", "sku": "s0", "user_id": "u1", "qty": 3,
                   "unit_price": 100, "amount": 2080, "status": "reserved", "created_ms": 5,
                   "pay_by_ms": 6, "updated_ms": 5, "price_breakdown": [{"qty": 1, "unit_price": 100},
                                                       {"qty": 2, "unit_price": 990}]}
    assert orders.breakdown_arg(got["price_breakdown"]) == "1x100,2x990"
    # the 200 of a new order across tiers is that very object
    assert tiered_order(OID.encode(), "u1", 3, 100, 5, 6, b"1x100,2x990") == got


def test_a_record_with_a_breakdown_that_does_not_read_is_none():
    for bd in ("", "1x", "x100", "1y100", "1x100,", "ax1"):
        assert orders.from_record(OID, f"reserved|u1|1|1|5|6|bd={bd}".encode()) is None, bd
    assert tiered_order(OID, "u1", 1, 1, 5, 6, "1x") is None


def test_the_milestones_view_and_the_rewards():
    ev = parse_event("ev", {"starts_at_ms": 1, "ends_at_ms": 2,
                            "skus": [{"id": "s0", "price": 1, "stock": 1}],
                            "milestones": [{"sold": 5, "reward": "cup"},
                                           {"sold": 2, "reward": "tote"}]})
    assert ev.milestones_arg() == "2,5"
    reached = store.parse_milestones([b"2", b"77|ev.s0.a", b"9", b"not a time|x", b"x", b"1|"])
    assert reached == {2: (77, "ev.s0.a")}
    assert store.milestones_view(ev, reached) == [
        {"sold": 2, "reward": "tote", "reached": True, "reached_ms": 77},
        {"sold": 5, "reward": "cup", "reached": False, "reached_ms": None}]
    found = [{"user_id": "a", "status": "reserved"}, {"user_id": "a", "status": "expired"},
             {"user_id": "b", "status": "cancelled"}, {"user_id": "c", "status": "paid"}]
    store.add_rewards(found, ev, reached)
    assert [o["rewards"] for o in found] == [["tote"], ["tote"], [], ["tote"]]
    store.add_rewards(found, ev, {})
    assert [o["rewards"] for o in found] == [[], [], [], []]
