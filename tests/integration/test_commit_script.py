"""The commit script called directly: decisions, replies, writes, and what a malformed call leaves (nothing)."""


import pytest
import redis

from flashgate.core import keys, orders, scripts, store
from flashgate.core.events import parse_event
from flashgate.core.outcomes import (
    EXISTS,
    IDEMPOTENCY_MISMATCH,
    LIMIT_EXCEEDED,
    REPLAY,
    SOLD,
    SOLD_TIERS,
)
from tests.reference.purchase import reservation_args
from tests.support import check_invariants, crossing_bounds, event_body, new_id


def configure(r, ev, body):
    event = parse_event(ev, body)
    for s in event.skus:
        k = keys.SkuKeys(ev, s.id)
        meta = ["event", ev, "sku", s.id, "starts", event.starts_at_ms, "ends", event.ends_at_ms,
                "limit", s.per_user_limit, "price", s.price, "tiers", s.tiers_arg(),
                "pay_ms", 60_000, "reg", 0, "ms", event.milestones_arg()]
        r.eval(scripts.CONFIGURE_SKU.source, len(k.configure()), *k.configure(), s.stock, 0, *meta)


def raw_commit(r, k, reservations, n=None):
    """reservations: (order_id, user, qty, idempotency key, fingerprint), sent as the
    worker sends them (scripts.reservation_args; the key of each one with an
    Idempotency-Key in KEYS)."""
    idem = [k.idem(user, key) for _oid, user, _qty, key, _fp in reservations if key]
    argv = [len(reservations) if n is None else n]
    for oid, user, qty, key, fp in reservations:
        argv += reservation_args(oid, user, qty, fp if key else "")
    return eval_commit(r, k, argv, idem)


def eval_commit(r, k, argv, extra_keys=()):
    """The commit script on SKU keys ``k`` with these arguments, as the worker calls it."""
    ks = k.commit() + list(extra_keys)
    return r.eval(scripts.COMMIT.source, len(ks), *ks, *argv)


def commit(r, ev, sku, orders):
    """orders: (order_id, user), one unit each, no idempotency key."""
    return raw_commit(r, keys.SkuKeys(ev, sku), [(oid, u, 1, "", "") for oid, u in orders])


def items(reply, orders, qtys=None):
    """Per reservation: (code, order_id, unit_price, qty, created_ms, pay_by_ms,
    breakdown), read as the worker reads them (codes other than SOLD, SOLD_TIERS, EXISTS,
    REPLAY carry nothing else; ``qtys``: each reservation's qty, 1 by default); the
    breakdown is b"" for an order of one price. A SOLD_TIERS amount is checked against
    its breakdown."""
    out, at = [], 4
    for i, (oid, _user) in enumerate(orders):
        code = reply[at]
        qty = qtys[i] if qtys else 1
        if code == SOLD:
            out.append((0, oid.encode(), reply[at + 1], qty, reply[2], reply[3], b""))
            at += 2
        elif code == SOLD_TIERS:
            price, amount, bd = reply[at + 1:at + 4]
            assert amount == sum(int(q) * int(p) for q, p in
                                 (part.split(b"x") for part in bd.split(b","))), reply
            out.append((SOLD_TIERS, oid.encode(), price, qty, reply[2], reply[3], bd))
            at += 4
        elif code in (EXISTS, REPLAY):
            out.append(tuple(reply[at:at + 7]))
            at += 7
        else:
            out.append((code, None, None, None, None, None, None))
            at += 1
    assert at == len(reply), "the reply has another shape than commit.lua says"
    return out


def test_a_batch_stores_each_order_as_one_record(r):
    """Each new order is one field of the SKU's ``order_by_id`` hash (no key per order),
    and its record reads as the 200 the client got."""
    ev = new_id("rec")
    body = event_body(stock=(5,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    batch = [(f"{ev}.s0.r{i}", f"u{i}") for i in range(3)]
    reply = commit(r, ev, "s0", batch)
    got = items(reply, batch)
    assert [g[0] for g in got] == [0, 0, 0]
    assert r.hlen(k.order_by_id) == 3
    assert r.keys(k.prefix + "order:*") == []
    for (oid, user), (_, _, price, qty, created, payby, _) in zip(batch, got, strict=True):
        raw = r.hget(k.order_by_id, oid)
        assert raw == orders.record("reserved", user, qty, price, created, payby).encode()
        assert orders.from_record(oid, raw) == {
            "order_id": oid, "event_id": ev, "sku": "s0", "user_id": user, "qty": qty,
            "unit_price": price, "amount": price * qty, "status": "reserved",
            "created_ms": created, "pay_by_ms": payby, "updated_ms": created}
    check_invariants(r, None, ev, body,
                     [{"order_id": oid, "sku": "s0", "user_id": u, "qty": 1} for oid, u in batch])


def test_orders_of_the_earlier_layout_are_moved_into_the_hash_once(r):
    """An order stored as a hash of its own (``order:<id>``, the earlier layout) is moved
    into its SKU's ``order_by_id`` at start (store.migrate_layout), once; then it is an
    idempotent replay's answer."""
    import asyncio

    from flashgate.core.redisconn import RedisConnection

    ev = new_id("legacy")
    body = event_body(stock=(5,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    oid = f"{ev}.s0.old1"
    # what the earlier script left for one sold unit with an Idempotency-Key
    r.incrby(k.sold, 1)
    r.incrby(k.revenue, 100)
    r.hset(k.buyers, "u1", 1)
    r.incrby(k.orders_n, 1)
    r.xadd(k.orders, {"type": "created", "order_id": oid, "user": "u1", "qty": 1,
                      "unit_price": 100, "ts": 7})
    r.hset(keys.earlier_order(k.prefix, oid),
           mapping={"user_id": "u1", "qty": 1, "unit_price": 100, "status": "reserved",
                    "created_ms": 7, "pay_by_ms": 60007})
    r.set(k.idem("u1", "k"), oid + "|fp")
    # what the pattern also finds, and the migration must leave alone: an Idempotency-Key
    # holding "}:order:" (a string), a hash that is not an order, a name not of its SKU
    squatter = k.idem("u2", "}:order:x")
    r.set(squatter, "whatever|fp")
    not_order = keys.earlier_order(k.prefix, f"{ev}.s0.odd")
    r.hset(not_order, mapping={"colour": "red"})
    elsewhere = keys.earlier_order(k.prefix, f"{ev}.s9.zzz")
    r.hset(elsewhere, mapping={"user_id": "u9", "qty": 1, "unit_price": 1, "created_ms": 1,
                               "pay_by_ms": 2})
    r.delete(keys.LAYOUT)
    url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/0"

    async def migrate():
        conn = RedisConnection(url)
        await conn.connect()
        try:
            return await store.migrate_layout(conn), await store.migrate_layout(conn)
        finally:
            conn.close()

    first, second = asyncio.run(migrate())
    assert first >= 1 and second == 0
    assert not r.exists(keys.earlier_order(k.prefix, oid))
    assert r.get(squatter) == b"whatever|fp" and r.hgetall(not_order) == {b"colour": b"red"}
    assert r.exists(elsewhere) and r.hget(k.order_by_id, f"{ev}.s9.zzz") is None
    r.delete(squatter, not_order, elsewhere)
    assert orders.from_record(oid, r.hget(k.order_by_id, oid))["unit_price"] == 100
    other = f"{ev}.s0.new1"
    reply = raw_commit(r, k, [(other, "u1", 1, "k", "fp")])
    assert items(reply, [(other, "u1")]) == [(REPLAY, oid.encode(), 100, 1, 7, 60007, b"")]
    assert reply[0] == 1
    check_invariants(r, None, ev, body, [{"order_id": oid, "sku": "s0", "user_id": "u1", "qty": 1}])


def test_one_user_twice_in_a_batch_is_held_to_the_limit(r):
    """The buyers of a batch are read once (HMGET): what the batch itself sells to a
    user counts against the limit of that user's later items in the same batch."""
    ev = new_id("twice")
    body = event_body(stock=(10,), limits=(2,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    r.hset(k.buyers, "old", 1)  # bought 1 before (a unit sold earlier)
    r.incrby(k.sold, 1)
    r.incrby(k.event_units, 1)
    r.incrby(k.revenue, 100)
    r.incrby(k.orders_n, 1)
    r.xadd(k.orders, {"type": "created", "ts": 1, f"{ev}.s0.z0": "old|1|100"})
    r.hset(k.order_by_id, f"{ev}.s0.z0", orders.record("reserved", "old", 1, 100, 1, 2))
    batch = [(f"{ev}.s0.b{i}", u) for i, u in enumerate(["a", "a", "a", "old", "old", "b"])]
    reply = commit(r, ev, "s0", batch)
    codes = [i[0] for i in items(reply, batch)]
    assert codes == [SOLD, SOLD, LIMIT_EXCEEDED, SOLD, LIMIT_EXCEEDED, SOLD]  # a: 2 then limit; old: 1 more then limit
    assert reply[0] == 1 + 4
    assert r.hgetall(k.buyers) == {b"old": b"2", b"a": b"2", b"b": b"1"}
    acked = [{"order_id": f"{ev}.s0.z0", "sku": "s0", "user_id": "old", "qty": 1}]
    acked += [{"order_id": oid, "sku": "s0", "user_id": u, "qty": 1}
              for (oid, u), code in zip(batch, codes, strict=True) if code == 0]
    check_invariants(r, None, ev, body, acked)


def test_an_empty_batch_sells_nothing(r):
    ev = new_id("empty")
    body = event_body(stock=(3,))
    configure(r, ev, body)
    assert commit(r, ev, "s0", []) == [0, 3, 0, 0]
    check_invariants(r, None, ev, body, [])


def test_an_idempotent_replay_answers_the_first_order(r):
    ev = new_id("replay")
    body = event_body(stock=(5,), limits=(2,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")

    def call(oid, fp):
        return raw_commit(r, k, [(oid, "u1", 1, "key-1", fp)])

    first = items(call(f"{ev}.s0.a1", "s0:1"), [(f"{ev}.s0.a1", "u1")])[0]
    replay = items(call(f"{ev}.s0.a2", "s0:1"), [(f"{ev}.s0.a2", "u1")])[0]
    other = items(call(f"{ev}.s0.a3", "s0:2"), [(f"{ev}.s0.a3", "u1")])[0]
    assert (first[0], replay[0], other[0]) == (SOLD, REPLAY, IDEMPOTENCY_MISMATCH)
    assert replay[1:] == first[1:]  # the first order's id, price, qty and times
    check_invariants(r, None, ev, body,
                     [{"order_id": f"{ev}.s0.a1", "sku": "s0", "user_id": "u1", "qty": 1}])


def test_the_worker_reads_only_replies_of_the_right_shape():
    from flashgate.gateway._commit import reply_offsets as _reply_offsets

    def _reply_fits(reply, n):
        return _reply_offsets(reply, n) is not None

    assert _reply_fits([5, 10, 1, 2, 0, 100, 9, b"o", 100, 1, 1, 2, b"", 1], 3)
    assert not _reply_fits([5, 10, 1, 2, 0, 100, 9, b"o", 100, 1, 1, 2, b"", 1], 2)  # too long
    assert _reply_fits([5, 10, 1, 2, SOLD_TIERS, 100, 1090, b"1x100,1x990", 1], 2)
    assert not _reply_fits([5, 10, 1, 2, SOLD_TIERS, 100, 1090, 1], 2)  # cut short
    assert not _reply_fits([5, 10, 1, 2, 0], 1)  # cut short
    assert not _reply_fits([5, 10, 1, 2, b"0", 100], 1)  # not a code
    assert not _reply_fits(RuntimeError("x"), 1)
    assert _reply_fits([0, 3, 0, 0], 0)


def test_an_idempotency_key_twice_in_one_batch_makes_one_order(r):
    """The script decides the whole batch before it writes: a key claimed earlier in
    the same batch is answered from that claim (REPLAY, or IDEMPOTENCY_MISMATCH for another
    request)."""
    ev = new_id("idem2")
    body = event_body(stock=(5,), limits=(3,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    batch = [(f"{ev}.s0.c{i}", "u1") for i in range(4)]
    ikeys = ["key-1", "key-1", "key-1", "key-2"]
    fps = ["s0:1", "s0:1", "s0:2", "s0:1"]
    reply = raw_commit(r, k, [(oid, user, 1, key, fp) for (oid, user), key, fp
                              in zip(batch, ikeys, fps, strict=True)])
    got = items(reply, batch)
    assert [i[0] for i in got] == [SOLD, REPLAY, IDEMPOTENCY_MISMATCH, SOLD]
    assert got[1][1:] == got[0][1:]  # the first order's id, price, qty and times
    assert reply[0] == 2 and r.hget(k.buyers, "u1") == b"2"
    assert r.get(k.idem("u1", "key-1")).decode() == f"{batch[0][0]}|s0:1"
    # and a later batch replays it from Redis, with the same figures
    again = raw_commit(r, k, [(f"{ev}.s0.c9", "u1", 1, "key-1", "s0:1")])
    assert items(again, [(f"{ev}.s0.c9", "u1")])[0] == got[1]
    check_invariants(r, None, ev, body,
                     [{"order_id": batch[i][0], "sku": "s0", "user_id": "u1", "qty": 1}
                      for i in (0, 3)])


def test_a_batch_of_thousands_commits_whole(r):
    """Commands that take every buyer of a batch go in chunks: Lua's unpack() stops
    at a few thousand values, and a failure after `sold` was written would strand
    units. 9,000 reservations of distinct users, then 9,000 more of the same users."""
    ev = new_id("big")
    body = event_body(stock=(20_000,), limits=(2,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    acked = []
    for rnd in range(2):
        batch = [(f"{ev}.s0.k{rnd}x{i}", f"user{i}") for i in range(9000)]
        reply = commit(r, ev, "s0", batch)
        assert [i[0] for i in items(reply, batch)] == [0] * 9000
        acked += [{"order_id": oid, "sku": "s0", "user_id": u, "qty": 1} for oid, u in batch]
    assert r.hlen(k.buyers) == 9000 and r.hget(k.buyers, "user8999") == b"2"
    check_invariants(r, None, ev, body, acked)


def test_an_order_id_twice_in_one_batch_is_sold_once(r):
    ev = new_id("dup")
    body = event_body(stock=(5,), limits=(3,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    acked = []
    for i in range(2):
        oid = f"{ev}.s0.d{i}"
        batch = [(oid, "u1"), (oid, "u1")]
        got = items(raw_commit(r, k, [(oid, "u1", 1, "", "")] * 2), batch)
        assert [g[0] for g in got] == [0, 9]
        assert got[1][1:] == got[0][1:]  # the same order, the same figures
        acked.append({"order_id": oid, "sku": "s0", "user_id": "u1", "qty": 1})
    assert r.get(k.sold) == b"2" and r.xlen(k.orders) == 2
    check_invariants(r, None, ev, body, acked)


@pytest.mark.parametrize("qty", ["0", "-1", "1.5", "1.0e0x", "x", "", "1e10"])
def test_a_malformed_batch_is_refused_before_anything_is_written(r, qty):
    ev = new_id("badq")
    body = event_body(stock=(5,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    good = (f"{ev}.s0.g1", "u1", 1, "", "")
    for reservations, n in (([good, (f"{ev}.s0.g2", "u2", qty, "", "")], None),
                            ([good], 2), ([good, good], 1)):
        with pytest.raises(redis.ResponseError, match="commit: "):
            raw_commit(r, k, reservations, n=n)
    assert r.get(k.sold) == b"0" and not r.exists(k.buyers, k.orders)
    check_invariants(r, None, ev, body, [])


def test_an_integer_qty_is_stored_in_its_canonical_form(r):
    ev = new_id("canon")
    body = event_body(stock=(5,), limits=(3,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    oid = f"{ev}.s0.c1"
    got = items(raw_commit(r, k, [(oid, "u1", "2.0", "", "")]), [(oid, "u1")])
    assert got[0][0] == 0
    assert orders.from_record(oid, r.hget(k.order_by_id, oid))["qty"] == 2
    assert r.hget(k.order_by_id, oid).split(b"|")[2] == b"2"
    check_invariants(r, None, ev, body,
                     [{"order_id": oid, "sku": "s0", "user_id": "u1", "qty": 2}])


@pytest.mark.parametrize("spec", ["1|", "1|s0:1|", "|s0:1", "1.5|s0:1", "x|s0:1", "1|a|b"])
def test_a_malformed_spec_is_refused_before_anything_is_written(r, spec):
    # a spec with a key is "<qty>|<fingerprint>", the fingerprint not empty
    ev = new_id("bads")
    body = event_body(stock=(5,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    argv = [2, f"{ev}.s0.g1", "u1", 1, f"{ev}.s0.g2", "u2", spec]
    with pytest.raises(redis.ResponseError, match="commit: bad"):
        eval_commit(r, k, argv, [k.idem("u2", "key")])
    assert r.get(k.sold) == b"0" and not r.exists(k.buyers, k.orders)
    check_invariants(r, None, ev, body, [])


@pytest.mark.parametrize("extra", [0, 2])
def test_one_key_per_reservation_with_a_key_or_nothing_is_written(r, extra):
    ev = new_id("badk")
    body = event_body(stock=(5,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    argv = [2, f"{ev}.s0.g1", "u1", 1, f"{ev}.s0.g2", "u2", "1|s0:1"]
    with pytest.raises(redis.ResponseError, match="commit: "):
        eval_commit(r, k, argv, [k.idem("u2", f"key{i}") for i in range(extra)])
    assert r.get(k.sold) == b"0" and not r.exists(k.buyers, k.orders)
    check_invariants(r, None, ev, body, [])


def test_a_key_may_hold_the_separator(r):
    # the key is one of KEYS, not a part of the spec: a "|" in it is the key's own
    ev = new_id("bar")
    body = event_body(stock=(5,), limits=(2,))
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    b1, b2 = f"{ev}.s0.b1", f"{ev}.s0.b2"
    first = items(raw_commit(r, k, [(b1, "u1", 1, "k|1|", "s0:1")]), [(b1, "u1")])
    replay = items(raw_commit(r, k, [(b2, "u1", 1, "k|1|", "s0:1")]), [(b2, "u1")])
    assert first[0][0] == SOLD and replay[0][0] == REPLAY and replay[0][1] == f"{ev}.s0.b1".encode()
    assert r.get(k.idem("u1", "k|1|")) == f"{ev}.s0.b1|s0:1".encode()
    check_invariants(r, None, ev, body,
                     [{"order_id": f"{ev}.s0.b1", "sku": "s0", "user_id": "u1", "qty": 1}])


# -- the price ladder at a tier's edge ---------------------------------------------------


def tiered_body(tiers, price=990, stock=20, limit=5, **extra):
    body = event_body(stock=(stock,), limits=(limit,), **extra)
    body["skus"][0]["price"] = price
    body["skus"][0]["tiers"] = [{"units": u, "price": p} for u, p in tiers]
    return body


def test_an_order_across_tiers_is_charged_each_unit_at_its_tier(r):
    """Units 0 at 100, 1 at 500, then 990: an order of 3 from unit 0 is 100 + 500 + 990;
    its record carries the breakdown, its API object the price_breakdown and the exact
    amount (unit_price: the first unit's); the orders after it are of one price."""
    ev = new_id("tier")
    body = tiered_body([(1, 100), (1, 500)])
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    batch = [(f"{ev}.s0.t{i}", u) for i, u in enumerate(["a", "b", "c"])]
    qtys = [3, 1, 2]
    reply = raw_commit(r, k, [(oid, u, q, "", "") for (oid, u), q in zip(batch, qtys, strict=True)])
    got = items(reply, batch, qtys)
    assert [g[0] for g in got] == [SOLD_TIERS, SOLD, SOLD]
    assert reply[4:8] == [SOLD_TIERS, 100, 1590, b"1x100,1x500,1x990"]
    assert [g[2] for g in got] == [100, 990, 990]
    rec = r.hget(k.order_by_id, batch[0][0])
    assert rec.endswith(b"|bd=1x100,1x500,1x990")
    order = orders.from_record(batch[0][0], rec)
    assert order["unit_price"] == 100 and order["amount"] == 1590
    assert order["price_breakdown"] == [{"qty": 1, "unit_price": 100},
                                        {"qty": 1, "unit_price": 500},
                                        {"qty": 1, "unit_price": 990}]
    assert "price_breakdown" not in orders.from_record(batch[1][0], r.hget(k.order_by_id, batch[1][0]))
    # the stream says the order as every entry does: user, qty, first unit's price
    _, _, found = orders.stream_orders(r.xrange(k.orders)[0][1])
    assert found[0] == (batch[0][0], "a", 3, 100)
    assert int(r.get(k.revenue)) == 1590 + 990 + 2 * 990
    acked = [{"order_id": oid, "sku": "s0", "user_id": u, "qty": q}
             for (oid, u), q in zip(batch, qtys, strict=True)]
    check_invariants(r, None, ev, body, acked)


def test_an_order_starting_inside_a_tier_takes_its_rest(r):
    """Units 0-1 at 10, 2-3 at 50, 4 at 50, 5 at 990, then the base price 990. After one
    unit sold, an order of 4 (units 1-4) is 1 at 10 and 3 at 50 (two tiers of one price
    in a row are one run); an order at one price throughout (units 5-7: a tier at the
    base price, then the base price) is an order of one price."""
    ev = new_id("tier2")
    body = tiered_body([(2, 10), (2, 50), (1, 50), (1, 990)], limit=6)
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    steps = [("a", 1, SOLD, 10, 10, b""), ("b", 4, SOLD_TIERS, 10, 160, b"1x10,3x50"),
             ("c", 3, SOLD, 990, 2970, b""), ("d", 2, SOLD, 990, 1980, b"")]
    acked = []
    for i, (user, qty, code, price, amount, bd) in enumerate(steps):
        oid = f"{ev}.s0.u{i}"
        got = items(raw_commit(r, k, [(oid, user, qty, "", "")]), [(oid, user)], [qty])[0]
        assert (got[0], got[2], got[6]) == (code, price, bd), (user, got)
        assert orders.from_record(oid, r.hget(k.order_by_id, oid))["amount"] == amount
        acked.append({"order_id": oid, "sku": "s0", "user_id": user, "qty": qty})
    assert int(r.get(k.revenue)) == sum(s[4] for s in steps)
    check_invariants(r, None, ev, body, acked)


def test_a_replay_of_an_order_across_tiers_carries_its_breakdown(r):
    """An Idempotency-Key's replay (from Redis, or from the same batch) and an order id
    twice in a batch answer with the order's breakdown."""
    ev = new_id("tier3")
    body = tiered_body([(1, 100)], limit=4)
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    o1, o2, o3 = f"{ev}.s0.a", f"{ev}.s0.b", f"{ev}.s0.c"
    reply = raw_commit(r, k, [(o1, "u1", 2, "key", "s0:2"), (o2, "u1", 2, "key", "s0:2")])
    first, again = items(reply, [(o1, "u1"), (o2, "u1")], [2, 2])
    assert first[0] == SOLD_TIERS and first[6] == b"1x100,1x990"
    assert again == (REPLAY, o1.encode(), 100, 2, first[4], first[5], b"1x100,1x990")
    later = items(raw_commit(r, k, [(o3, "u1", 2, "key", "s0:2")]), [(o3, "u1")], [2])[0]
    assert later == again
    check_invariants(r, None, ev, body,
                     [{"order_id": o1, "sku": "s0", "user_id": "u1", "qty": 2}])
    ev2 = new_id("tier4")
    configure(r, ev2, body)
    k2 = keys.SkuKeys(ev2, "s0")
    o = f"{ev2}.s0.d"
    got = items(raw_commit(r, k2, [(o, "u1", 2, "", "")] * 2), [(o, "u1")] * 2, [2, 2])
    assert got[0][0] == SOLD_TIERS and got[1] == (EXISTS, o.encode(), 100, 2, got[0][4],
                                                   got[0][5], b"1x100,1x990")
    assert int(r.get(k2.revenue)) == 1090
    check_invariants(r, None, ev2, body, [{"order_id": o, "sku": "s0", "user_id": "u1", "qty": 2}])


# -- milestones --------------------------------------------------------------------------


def milestone_event(r, stock=(10, 10, 10), thresholds=(2, 5), limit=5):
    ev = new_id("ms")
    body = event_body(stock=stock, limits=(limit,) * len(stock),
                      milestones=[{"sold": t, "reward": f"gift {t}"} for t in thresholds])
    configure(r, ev, body)
    return ev, body


def reached(r, ev) -> dict[int, tuple[int, str]]:
    return store.parse_milestones(r.hgetall(keys.milestones(ev)))


def test_a_milestone_is_reached_by_the_order_whose_units_reach_it(r):
    """Over all the event's SKUs: the order whose units take the event's total from
    below a threshold to it or beyond reaches it, recorded with its batch's time; one
    order may reach two; once reached it stays reached."""
    ev, body = milestone_event(r, thresholds=(2, 5, 6, 40))
    ks = [keys.SkuKeys(ev, f"s{i}") for i in range(3)]
    acked = []

    def sell(i, *sales):
        res = [(f"{ev}.s{i}.{user}", user, qty, "", "") for user, qty in sales]
        reply = raw_commit(r, ks[i], res)
        assert [c for c in items(reply, [(o, u) for o, u, *_ in res], [q for _, q in sales])
                if c[0] not in (SOLD, SOLD_TIERS)] == []
        acked.extend({"order_id": o, "sku": f"s{i}", "user_id": u, "qty": q}
                     for o, u, q, _, _ in res)
        return reply

    sell(0, ("a", 1))
    assert reached(r, ev) == {} and r.get(keys.event_units(ev)) == b"1"
    reply = sell(1, ("b", 1), ("c", 2))  # 1 -> 2 (b reaches 2) -> 4
    assert reached(r, ev) == {2: (reply[2], f"{ev}.s1.b")}
    reply = sell(2, ("d", 3))  # 4 -> 7: d reaches 5 and 6
    got = reached(r, ev)
    assert got[5] == got[6] == (reply[2], f"{ev}.s2.d") and got[2][1] == f"{ev}.s1.b"
    # units returned (as a cancel or expiry does) take the total below 5; selling past
    # it again changes nothing: reached once, it stays reached
    r.decrby(keys.event_units(ev), 4)  # (the order's own keys are not this test's)
    sell(0, ("e", 2))
    assert reached(r, ev) == got and int(r.get(keys.event_units(ev))) == 5
    r.incrby(keys.event_units(ev), 4)
    check_invariants(r, None, ev, body, acked)


def test_an_event_without_milestones_counts_its_units_and_reaches_nothing(r):
    ev = new_id("noms")
    body = event_body(stock=(5, 5), limits=(3, 3))
    configure(r, ev, body)
    acked = []
    for i in range(2):
        oid = f"{ev}.s{i}.x"
        raw_commit(r, keys.SkuKeys(ev, f"s{i}"), [(oid, "u", 3, "", "")])
        acked.append({"order_id": oid, "sku": f"s{i}", "user_id": "u", "qty": 3})
    assert r.get(keys.event_units(ev)) == b"6" and not r.exists(keys.milestones(ev))
    check_invariants(r, None, ev, body, acked)


def test_a_milestone_defined_below_the_units_held_is_reached_when_defined(r):
    """The script records the thresholds a batch crosses; one the event had passed
    before it was defined is recorded by the definition (store.save_event), by no order."""
    import asyncio

    from flashgate.core.redisconn import RedisConnection

    ev = new_id("late")
    body = event_body(stock=(10,), limits=(5,))
    url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/0"

    async def define(b):
        conn = RedisConnection(url)
        await conn.connect()
        try:
            await store.save_event(conn, parse_event(ev, b))
        finally:
            conn.close()

    asyncio.run(define(body))
    k = keys.SkuKeys(ev, "s0")
    raw_commit(r, k, [(f"{ev}.s0.a", "a", 4, "", "")])
    body["milestones"] = [{"sold": 3, "reward": "x"}, {"sold": 6, "reward": "y"}]
    t0 = int(r.time()[0]) * 1000
    asyncio.run(define(body))
    got = reached(r, ev)
    assert list(got) == [3] and got[3][1] == "" and got[3][0] >= t0
    raw_commit(r, k, [(f"{ev}.s0.b", "b", 2, "", "")])  # 4 -> 6: b reaches 6
    assert reached(r, ev)[6][1] == f"{ev}.s0.b"
    check_invariants(r, None, ev, body, [
        {"order_id": f"{ev}.s0.a", "sku": "s0", "user_id": "a", "qty": 4},
        {"order_id": f"{ev}.s0.b", "sku": "s0", "user_id": "b", "qty": 2}])


@pytest.mark.parametrize("n_skus", [1, 3])
def test_milestones_under_concurrent_commits_are_reached_once_by_the_right_order(r, n_skus):
    """Four clients commit batches on the SKUs of one event at once (as the workers of
    several instances do): every threshold the total reached is recorded once, by the
    order whose units took the running total across it, as the streams order them;
    none beyond the total. One SKU's stream orders every sale (the check is exact);
    the streams of several SKUs order sales of different SKUs only to the millisecond
    (the check allows the sales of the same millisecond in either order)."""
    import random
    import threading

    thresholds = tuple(range(5, 400, 9))
    ev, body = milestone_event(r, stock=(450 // n_skus,) * n_skus, thresholds=thresholds,
                               limit=100)
    url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/0"
    acked, lock, errors = [], threading.Lock(), []

    def client(c):
        rng = random.Random(c)
        rc = redis.Redis.from_url(url)
        try:
            for b in range(50):
                i = rng.randrange(n_skus)
                res = [(f"{ev}.s{i}.c{c}b{b}n{n}", f"u{rng.randrange(30)}", rng.randint(1, 3), "", "")
                       for n in range(rng.randint(1, 4))]
                reply = raw_commit(rc, keys.SkuKeys(ev, f"s{i}"), res)
                got = items(reply, [(o, u) for o, u, *_ in res], [q for _o, _u, q, *_ in res])
                with lock:
                    acked.extend({"order_id": o, "sku": f"s{i}", "user_id": u, "qty": q}
                                 for (o, u, q, _, _), g in zip(res, got, strict=True)
                                 if g[0] == SOLD)
        except Exception as e:  # (reported below)
            errors.append(e)
        finally:
            rc.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = int(r.get(keys.event_units(ev)))
    assert total == sum(o["qty"] for o in acked) > 0
    got = reached(r, ev)
    assert sorted(got) == [t for t in thresholds if t <= total]
    bounds = crossing_bounds(r, ev, [f"s{i}" for i in range(n_skus)])
    for t, (ms, oid) in got.items():
        lo, hi, q = bounds[oid]
        assert lo < t <= hi + q, f"{oid} ({lo}..{hi} before it, qty {q}) did not cross {t}"
        if n_skus == 1:
            assert lo == hi
        created = orders.from_record(oid, r.hget(keys.SkuKeys(ev, oid.split(".")[1]).order_by_id,
                                                 oid))["created_ms"]
        assert ms == created, (t, ms, created)
    check_invariants(r, None, ev, body, acked)


def test_serve_counts_the_units_of_events_sold_before_they_were_counted(r):
    """An event whose SKUs sold before the commit script counted the event's units gets
    them (the sum of its SKUs' sold) when serve starts, and its passed milestones are
    recorded; an event that has its count keeps it."""
    import asyncio

    from flashgate.core.redisconn import RedisConnection

    ev = new_id("old")
    body = event_body(stock=(10, 10), limits=(5, 5),
                      milestones=[{"sold": 3, "reward": "x"}, {"sold": 9, "reward": "y"}])
    url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/0"

    async def run(coro_fn):
        conn = RedisConnection(url)
        await conn.connect()
        try:
            return await coro_fn(conn)
        finally:
            conn.close()

    asyncio.run(run(lambda conn: store.save_event(conn, parse_event(ev, body))))
    acked = []
    for i, qty in ((0, 2), (1, 3)):
        oid = f"{ev}.s{i}.a"
        raw_commit(r, keys.SkuKeys(ev, f"s{i}"), [(oid, "a", qty, "", "")])
        acked.append({"order_id": oid, "sku": f"s{i}", "user_id": "a", "qty": qty})
    assert reached(r, ev)[3][1] == f"{ev}.s1.a"
    # as an earlier version left it: no count, no milestones
    r.delete(keys.event_units(ev), keys.milestones(ev))
    assert asyncio.run(run(store.count_event_units)) >= 1
    assert r.get(keys.event_units(ev)) == b"5" and list(reached(r, ev)) == [3]
    assert reached(r, ev)[3][1] == ""  # reached before it was counted: by no order
    assert asyncio.run(run(store.count_event_units)) == 0  # once
    check_invariants(r, None, ev, body, acked)
