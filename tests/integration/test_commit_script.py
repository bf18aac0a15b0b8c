"""The commit script called directly: a batch re-sent after a lost reply sells nothing twice."""


import pytest
import redis

from flashgate.core import keys, orders, scripts, store
from flashgate.core.events import parse_event
from flashgate.core.outcomes import EXISTS, IDEMPOTENCY_MISMATCH, LIMIT_EXCEEDED, REPLAY, SOLD
from tests.reference.purchase import reservation_args
from tests.support import check_invariants, event_body, new_id


def configure(r, ev, body):
    event = parse_event(ev, body)
    for s in event.skus:
        k = keys.SkuKeys(ev, s.id)
        meta = ["event", ev, "sku", s.id, "starts", event.starts_at_ms, "ends", event.ends_at_ms,
                "limit", s.per_user_limit, "price", s.price, "tiers", s.tiers_arg(),
                "pay_ms", 60_000, "reg", 0]
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


def items(reply, orders):
    """Per reservation: (code, order_id, unit_price, qty, created_ms, pay_by_ms), read as
    the worker reads them (codes other than SOLD, EXISTS, REPLAY carry nothing else)."""
    out, at = [], 4
    for oid, _user in orders:
        code = reply[at]
        if code == SOLD:
            out.append((0, oid.encode(), reply[at + 1], 1, reply[2], reply[3]))
            at += 2
        elif code in (EXISTS, REPLAY):
            out.append(tuple(reply[at:at + 6]))
            at += 6
        else:
            out.append((code, None, None, None, None, None))
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
    for (oid, user), (_, _, price, qty, created, payby) in zip(batch, got, strict=True):
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
    assert items(reply, [(other, "u1")]) == [(REPLAY, oid.encode(), 100, 1, 7, 60007)]
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

    assert _reply_fits([5, 10, 1, 2, 0, 100, 9, b"o", 100, 1, 1, 2, 1], 3)
    assert not _reply_fits([5, 10, 1, 2, 0, 100, 9, b"o", 100, 1, 1, 2, 1], 2)  # too long
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
