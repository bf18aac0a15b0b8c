"""The commit script called directly: a batch re-sent after a lost reply sells nothing twice."""

import time

from flashgate.core import store
from flashgate.core.events import parse_event
from tests.support import check_invariants, event_body, new_id


def configure(r, ev, body):
    event = parse_event(ev, body)
    for s in event.skus:
        p = store.sku_prefix(ev, s.id)
        meta = ["event", ev, "sku", s.id, "starts", event.starts_at_ms, "ends", event.ends_at_ms,
                "limit", s.per_user_limit, "price", s.price, "tiers", s.tiers_arg(),
                "pay_ms", 60_000, "reg", 0]
        r.eval(store.CONFIGURE_SKU.source, 3, p + "meta", p + "stock", p + "sold", s.stock, 0, *meta)


def commit(r, ev, sku, orders, resent):
    p = store.sku_prefix(ev, sku)
    argv = [p, len(orders), 1 if resent else 0]
    for oid, user in orders:
        argv += [oid, user, 1, "", ""]
    return r.eval(store.COMMIT.source, 6, *store.commit_keys(p), *argv)


def test_a_resent_batch_sells_nothing_twice(r):
    ev = new_id("resend")
    body = event_body(stock=(3,))
    configure(r, ev, body)
    batch = [(f"{ev}.s0.a1", "u1"), (f"{ev}.s0.a2", "u2")]
    first = commit(r, ev, "s0", batch, resent=False)
    assert first[0] == 2 and [first[2], first[8]] == [0, 0]
    time.sleep(0.01)
    again = commit(r, ev, "s0", batch, resent=True)
    assert again[0] == 2, "the re-sent batch sold again"
    assert [again[2], again[8]] == [9, 9]  # "this order exists": the same orders
    assert [again[3], again[9]] == [first[3], first[9]]
    assert again[6] == first[6]  # created_ms of the original
    orders = [{"order_id": oid.decode(), "sku": "s0", "user_id": u, "qty": 1}
              for oid, u in ((first[3], "u1"), (first[9], "u2"))]
    check_invariants(r, None, ev, body, orders)
