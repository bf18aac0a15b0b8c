"""Reading stored records without I/O."""

import pytest

from flashgate.core.orders import from_record, kept, record, record_of_hash
from flashgate.core.store import evicting_policy


def flat(d: dict) -> list[bytes]:
    return [str(x).encode() for kv in d.items() for x in kv]


def test_an_order_record_reads_as_the_api_object():
    raw = record("reserved", "u1", 2, 1999, 1000, 61000).encode()
    assert raw == b"reserved|u1|2|1999|1000|61000"
    assert from_record("ev.s0.ab1", raw) == {
        "order_id": "ev.s0.ab1", "event_id": "ev", "sku": "s0", "user_id": "u1", "qty": 2,
        "unit_price": 1999, "amount": 3998, "status": "reserved", "created_ms": 1000,
        "pay_by_ms": 61000, "updated_ms": 1000}


def test_fields_a_later_state_adds_are_read():
    raw = record("paid", "u1", 1, 100, 1000, 61000, paid_ms=5000, by="op-1").encode()
    order = from_record("ev.s0.ab1", raw)
    assert (order["status"], order["paid_ms"], order["by"]) == ("paid", 5000, "op-1")


def test_a_transition_says_when_and_kept_is_not_shown():
    raw = record("cancelled", "u1", 1, 100, 1000, 61000, updated_ms=7000, kept=1).encode()
    order = from_record("ev.s0.ab1", raw)
    assert (order["status"], order["updated_ms"]) == ("cancelled", 7000)
    assert "kept" not in order and kept(raw)
    assert not kept(record("cancelled", "u1", 1, 100, 1000, 61000, updated_ms=7000).encode())


@pytest.mark.parametrize("raw", [None, b"", b"reserved|u1|1|100", b"reserved|u1|x|100|7|8"])
def test_no_record_or_a_broken_one_is_no_order(raw):
    assert from_record("ev.s0.ab1", raw) is None


def test_an_order_hash_of_the_earlier_layout_becomes_its_record():
    h = {"user_id": "u1", "qty": 2, "unit_price": 1999, "status": "reserved",
         "created_ms": 1000, "pay_by_ms": 61000}
    assert record_of_hash(flat(h)) == "reserved|u1|2|1999|1000|61000"
    # hashes written before the id said them hold order_id, event_id, sku and amount too
    legacy = {"order_id": "ev.s0.ab1", "event_id": "ev", "sku": "s0", "amount": 3998, **h}
    assert record_of_hash(flat(legacy)) == record_of_hash(flat(h))


@pytest.mark.parametrize("h", [{}, {"qty": 1}, {"user_id": "u", "qty": "x", "unit_price": 1,
                                                 "created_ms": 1, "pay_by_ms": 2}])
def test_a_hash_that_is_not_an_order_has_no_record(h):
    assert record_of_hash(flat(h)) is None


@pytest.mark.parametrize(("info", "policy"), [
    (b"# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n", None),
    (b"# Memory\r\nmaxmemory:1073741824\r\nmaxmemory_policy:noeviction\r\n", None),
    (b"# Memory\r\nmaxmemory:1073741824\r\nmaxmemory_policy:volatile-lru\r\n", "volatile-lru"),
    ("maxmemory:5\nmaxmemory_policy:allkeys-random\n", "allkeys-random"),
    (b"", None),
])
def test_an_evicting_redis_is_told_apart(info, policy):
    assert evicting_policy(info) == policy


def test_a_stream_entry_names_its_orders():
    from flashgate.core.orders import stream_orders

    flat = [b"type", b"created", b"ts", b"7", b"ev.s0.a", b"u1|2|100", b"ev.s0.b", b"u2|1|50"]
    assert stream_orders(flat) == ("created", 7, [("ev.s0.a", "u1", 2, 100),
                                                  ("ev.s0.b", "u2", 1, 50)])
    assert stream_orders({"type": "paid", "ts": "9", "ev.s0.a": "u1|2|100"}) == (
        "paid", 9, [("ev.s0.a", "u1", 2, 100)])
    # an entry of the earlier layout: one order, a field per figure
    old = {b"type": b"created", b"order_id": b"ev.s0.c", b"user": b"u3", b"qty": b"1",
           b"unit_price": b"990", b"ts": b"5"}
    assert stream_orders(old) == ("created", 5, [("ev.s0.c", "u3", 1, 990)])
