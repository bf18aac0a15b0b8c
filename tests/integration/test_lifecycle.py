"""The order lifecycle after the 200: payment, cancel, expiry with units returned, stock
added; the order's status wherever it is shown. Against the shared gateways (both
identity modes where the buyer takes part) and, for the transition script's rules, the
script called directly. Every test that touches stock ends with the invariant check."""

from __future__ import annotations

import os
import time

import pytest

from flashgate.core import keys, orders, scripts
from tests.integration.test_commit_script import commit, configure
from tests.support import check_invariants, event_body, new_id, now_ms, wait_for

ORDERS = "/api/v1/admin/orders/"
# FLASHGATE_SOAK=N runs the mixed lifecycle test N times longer (tests/integration/test_faults.py)
SOAK = float(os.environ.get("FLASHGATE_SOAK", "1"))


def paid(gw, order_id, body=None):
    return gw.admin("POST", ORDERS + order_id + "/paid", body)


def cancel(gw, order_id, body=None):
    return gw.admin("POST", ORDERS + order_id + "/cancel", body)


def add_stock(gw, ev, sku, body):
    return gw.admin("POST", f"/api/v1/admin/events/{ev}/skus/{sku}/stock", body)


def order_of(gw, order_id):
    status, data, _ = gw.admin("GET", "/api/v1/orders/" + order_id)
    assert status == 200, (status, data)
    return data


def buy_ok(gw, ev, sku, user, qty=1):
    status, data, _ = gw.buy(ev, sku, user, qty)
    assert status == 200, (status, data)
    return data


def buy_eventually(gw, ev, sku, user, qty=1, timeout=3.0):
    """A buy that succeeds once every worker has learnt that units came back (a worker
    that has not answered sold_out / limit_exceeded from memory: the next tick)."""
    got = []

    def attempt():
        status, data, _ = gw.buy(ev, sku, user, qty)
        if status == 200:
            got.append(data)
            return True
        assert status == 409 and data["error"] in ("sold_out", "limit_exceeded"), data
        return False

    wait_for(attempt, f"{user} buying {sku} again", timeout)
    return got[0]


def test_buy_answer_and_order_carry_updated_ms(any_gw, r):
    gw = any_gw
    ev = new_id("upd")
    body = event_body(stock=(3,))
    gw.put_event(ev, body)
    o = buy_ok(gw, ev, "s0", "u1")
    assert o["status"] == "reserved" and o["updated_ms"] == o["created_ms"]
    assert order_of(gw, o["order_id"]) == o
    check_invariants(r, gw, ev, body, [o])


def test_an_idempotent_replay_answers_the_same_body_after_a_payment(any_gw, r):
    # API.md: a buy repeated with its Idempotency-Key returns the same 200 body (the
    # order as it was made), even after the order was paid; GET shows it paid
    gw = any_gw
    ev = new_id("replay")
    body = event_body(stock=(3,), limits=[2])
    gw.put_event(ev, body)
    key = {"Idempotency-Key": "k-" + new_id("i")}
    status, o, _ = gw.buy(ev, "s0", "u1", headers=key)
    assert status == 200 and o["status"] == "reserved", o
    status, p, _ = paid(gw, o["order_id"])
    assert status == 200 and p["status"] == "paid", p
    status, again, _ = gw.buy(ev, "s0", "u1", headers=key)
    assert (status, again) == (200, o)
    assert order_of(gw, o["order_id"]) == p
    check_invariants(r, gw, ev, body, [o])


def test_payment_is_final_and_counted(any_gw, r):
    gw = any_gw
    ev = new_id("pay")
    body = event_body(stock=(3,), limits=[2])
    gw.put_event(ev, body)
    o = buy_ok(gw, ev, "s0", "u1", qty=2)
    t0 = now_ms()
    status, got, _ = paid(gw, o["order_id"])
    assert status == 200, got
    assert got["status"] == "paid" and got["updated_ms"] >= t0 - 1000
    assert {k: v for k, v in got.items() if k not in ("status", "updated_ms")} == \
        {k: v for k, v in o.items() if k not in ("status", "updated_ms")}
    # repeating is harmless: the same order, unchanged
    status, again, _ = paid(gw, o["order_id"], {"reference": "psp-1"})
    assert (status, again) == (200, got)
    # a paid order cannot be cancelled; nothing changes
    status, err, _ = cancel(gw, o["order_id"])
    assert status == 409 and err["error"] == "conflict", err
    assert order_of(gw, o["order_id"]) == got
    # the buyer sees it paid too
    status, mine, _ = gw.request("GET", "/api/v1/orders/" + o["order_id"], headers=gw.who("u1"))
    assert (status, mine) == (200, got)
    # the export and the stats say so
    assert [x["status"] for x in gw.orders_export(ev)] == ["paid"]
    status, stats, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")
    assert status == 200
    assert stats["units_paid"] == 2 and stats["revenue_paid"] == o["amount"]
    assert stats["units_sold"] == 2
    check_invariants(r, gw, ev, body, [o])


def test_cancel_returns_the_units_to_the_sale(any_gw, r):
    """Stock 1, limit 1: u1's cancelled order lets u2 buy the unit on every worker, and
    u1 may buy again once that is cancelled too (the workers' buyer tables forget)."""
    gw = any_gw
    ev = new_id("cxl")
    body = event_body(stock=(1,))
    gw.put_event(ev, body)
    o1 = buy_ok(gw, ev, "s0", "u1")
    gw.wait_state(ev, "sold_out")
    status, got, _ = cancel(gw, o1["order_id"])
    assert status == 200 and got["status"] == "cancelled", got
    assert (cancel(gw, o1["order_id"])[:2]) == (200, got)  # harmless again
    status, err, _ = paid(gw, o1["order_id"])
    assert status == 409 and err["error"] == "conflict"
    gw.wait_state(ev, "live")
    o2 = buy_eventually(gw, ev, "s0", "u2")
    assert cancel(gw, o2["order_id"])[0] == 200
    o3 = buy_eventually(gw, ev, "s0", "u1")  # u1 holds nothing any more
    k = keys.SkuKeys(ev, "s0")
    assert int(r.get(k.returned)) == 2 and int(r.get(k.sold)) == 1
    assert {x["order_id"]: x["status"] for x in gw.orders_export(ev)} == {
        o1["order_id"]: "cancelled", o2["order_id"]: "cancelled", o3["order_id"]: "reserved"}
    status, stats, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")
    assert stats["units_sold"] == 1 and stats["revenue"] == o3["amount"]
    check_invariants(r, gw, ev, body, [o1, o2, o3])


def test_unpaid_orders_expire_and_their_units_return(gw, r):
    gw_ = gw
    ev = new_id("exp")
    body = event_body(stock=(2,), payment_timeout_s=1)
    gw_.put_event(ev, body)
    a = buy_ok(gw_, ev, "s0", "u1")
    b = buy_ok(gw_, ev, "s0", "u2")
    assert a["pay_by_ms"] - a["created_ms"] == 1000
    status, p, _ = paid(gw_, b["order_id"])
    assert status == 200 and p["status"] == "paid"
    wait_for(lambda: order_of(gw_, a["order_id"])["status"] == "expired", "the expiry", 5)
    got = order_of(gw_, a["order_id"])
    assert got["updated_ms"] >= a["pay_by_ms"]
    assert order_of(gw_, b["order_id"])["status"] == "paid"  # a paid order never expires
    status, err, _ = paid(gw_, a["order_id"])
    assert status == 409 and err["error"] == "conflict"
    c = buy_eventually(gw_, ev, "s0", "u3")
    check_invariants(r, gw_, ev, body, [a, b, c])
    # and c expires in turn
    wait_for(lambda: order_of(gw_, c["order_id"])["status"] == "expired", "the expiry", 5)
    check_invariants(r, gw_, ev, body, [a, b, c])


def test_a_payment_after_the_deadline_loses_to_the_expiry(gw, r):
    """Whether or not the sweeper came first, the late payment is 409 and the order is
    expired, once."""
    ev = new_id("late")
    body = event_body(stock=(2,), payment_timeout_s=1)
    gw.put_event(ev, body)
    a = buy_ok(gw, ev, "s0", "u1")
    time.sleep(max(0.0, (a["pay_by_ms"] - now_ms()) / 1000) + 0.05)
    status, err, _ = paid(gw, a["order_id"])
    assert status == 409 and err["error"] == "conflict", err
    assert order_of(gw, a["order_id"])["status"] == "expired"
    check_invariants(r, gw, ev, body, [a])


def test_after_the_end_orders_end_but_keep_their_units(gw, r):
    ev = new_id("end")
    t = now_ms()
    body = event_body(stock=(3,), limits=[3], starts=t - 1000, ends=t + 1500)
    gw.put_event(ev, body)
    a = buy_ok(gw, ev, "s0", "u1")
    b = buy_ok(gw, ev, "s0", "u2")
    time.sleep(max(0.0, (body["ends_at_ms"] - now_ms()) / 1000) + 0.1)
    status, got, _ = cancel(gw, a["order_id"])
    assert status == 200 and got["status"] == "cancelled" and "kept" not in got
    k = keys.SkuKeys(ev, "s0")
    assert orders.kept(r.hget(k.order_by_id, a["order_id"]))
    assert int(r.get(k.sold)) == 2 and int(r.get(k.returned) or 0) == 0
    # paying within the deadline is still possible after the end
    assert paid(gw, b["order_id"])[1]["status"] == "paid"
    # no stock is added after the end
    status, err, _ = add_stock(gw, ev, "s0", {"add": 5})
    assert status == 409 and err["error"] == "ended", err
    assert int(r.get(k.stock)) == 3
    check_invariants(r, gw, ev, body, [a, b])


def test_stock_added_is_sold(any_gw, r):
    gw = any_gw
    ev = new_id("add")
    body = event_body(stock=(1,))
    gw.put_event(ev, body)
    a = buy_ok(gw, ev, "s0", "u1")
    gw.wait_state(ev, "sold_out")
    status, got, _ = add_stock(gw, ev, "s0", {"add": 2})
    assert status == 200, got
    assert got == {"event_id": ev, "sku": "s0", "stock": 3, "sold": 1, "left": 2, "added": 2}
    # every worker serves it when the 200 comes
    for _ in range(12):
        view = gw.request("GET", f"/api/v1/events/{ev}")[1]
        assert view["state"] == "live" and view["skus"][0]["stock"] == 3
    b = buy_ok(gw, ev, "s0", "u2")
    c = buy_ok(gw, ev, "s0", "u3")
    assert gw.buy(ev, "s0", "u4")[0] == 409
    # a new definition keeps the units added: stock = defined + added
    gw.put_event(ev, {**body, "name": "renamed"})
    k = keys.SkuKeys(ev, "s0")
    assert int(r.get(k.stock)) == 3
    status, stats, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")
    assert stats["skus"][0]["stock"] == 3 and stats["skus"][0]["left"] == 0
    check_invariants(r, gw, ev, body, [a, b, c])


@pytest.mark.parametrize("bad", [None, {}, {"add": 0}, {"add": -1}, {"add": "2"}, {"add": 1.5},
                                 {"add": True}, {"add": None}, [1], "add", {"add": 10**12}])
def test_bad_stock_additions_change_nothing(gw, r, bad):
    ev = new_id("badadd")
    body = event_body(stock=(2,))
    gw.put_event(ev, body)
    status, err, _ = add_stock(gw, ev, "s0", bad)
    assert status == 400 and err["error"] == "bad_request", (bad, status, err)
    status, err, _ = gw.request("POST", f"/api/v1/admin/events/{ev}/skus/s0/stock",
                                raw_body=b"{not json", headers={"Authorization": "Bearer x"})
    assert status == 401
    check_invariants(r, gw, ev, body, [])


def test_stock_addition_unknown_and_unauthorised(gw, r):
    ev = new_id("addnf")
    body = event_body(stock=(2,))
    gw.put_event(ev, body)
    assert add_stock(gw, ev, "nope", {"add": 1})[:2] == (404, {
        "error": "not_found", "message": "no such event, sku or order"})
    assert add_stock(gw, "no-such-event", "s0", {"add": 1})[0] == 404
    status, _, _ = gw.request("POST", f"/api/v1/admin/events/{ev}/skus/s0/stock", {"add": 1},
                              headers=gw.who("u1"))
    assert status == 401
    status, _, headers = gw.admin("GET", f"/api/v1/admin/events/{ev}/skus/s0/stock")
    assert status == 405 and headers["Allow"] == "POST"
    status, err, _ = gw.request("POST", f"/api/v1/admin/events/{ev}/skus/s0/stock",
                                raw_body=b"{not json",
                                headers={"Authorization": "Bearer test-admin-token"})
    assert status == 400 and err["error"] == "bad_request"
    check_invariants(r, gw, ev, body, [])


def test_bad_transitions_change_nothing(any_gw, r):
    gw = any_gw
    ev = new_id("badtr")
    body = event_body(stock=(2,))
    gw.put_event(ev, body)
    o = buy_ok(gw, ev, "s0", "u1")
    for oid in ("nope", f"{ev}.s0.000000000000ffff", f"{ev}.nosku.1", "a.b", "..", "a.b.c.d"):
        for act in (paid, cancel):
            status, err, _ = act(gw, oid)
            assert status == 404 and err["error"] == "not_found", (oid, status, err)
    for act in ("/paid", "/cancel"):
        for raw in (b"[1, 2]", b"{nope", b'"x"'):
            status, err, _ = gw.request("POST", ORDERS + o["order_id"] + act, raw_body=raw,
                                        headers={"Authorization": "Bearer test-admin-token"})
            assert status == 400 and err["error"] == "bad_request", (act, raw, status, err)
        # a buyer may not pay or cancel, not even their own order
        status, _, _ = gw.request("POST", ORDERS + o["order_id"] + act, headers=gw.who("u1"))
        assert status == 401
    status, _, headers = gw.admin("GET", ORDERS + o["order_id"] + "/paid")
    assert status == 405
    assert order_of(gw, o["order_id"]) == o
    check_invariants(r, gw, ev, body, [o])


# -- the transition script called directly ------------------------------------------


def transition(r, ev, sku, action, ids):
    ks = keys.SkuKeys(ev, sku).transition(ev)
    return r.eval(scripts.TRANSITION.source, len(ks), *ks, action, *ids)


def test_script_one_call_many_orders_and_duplicates(r):
    ev = new_id("scr")
    body = event_body(stock=(5,), limits=[5])
    configure(r, ev, body)
    batch = [(f"{ev}.s0.o{i}", f"u{i % 2}") for i in range(4)]
    commit(r, ev, "s0", batch)
    ids = [b[0] for b in batch]
    reply = transition(r, ev, "s0", "cancel", [ids[0], ids[0], ids[1], f"{ev}.s0.none"])
    assert reply[0] == 2
    assert [x.decode() if isinstance(x, bytes) else x for x in reply[1::2]] == \
        ["done", "same", "done", "not_found"]
    reply = transition(r, ev, "s0", "paid", [ids[2], ids[0], ids[2]])
    assert [x.decode() for x in reply[1::2]] == ["done", "conflict", "same"]
    reply = transition(r, ev, "s0", "expire", ids)  # none due (60 s to pay)
    assert [x.decode() for x in reply[1::2]] == ["not_due"] * 4
    k = keys.SkuKeys(ev, "s0")
    assert int(r.get(k.units_paid)) == 1 and int(r.get(k.revenue_paid)) == 100
    assert int(r.get(k.revenue)) == 200 and int(r.get(k.returned)) == 2
    assert int(r.get(k.sold)) == 2
    check_invariants(r, None, ev, body, [], exact=False)


def test_script_due_orders_expire_whatever_was_asked(r):
    ev = new_id("due")
    body = event_body(stock=(3,), limits=[3])
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    batch = [(f"{ev}.s0.o{i}", "u1") for i in range(3)]
    commit(r, ev, "s0", batch)
    # every order is due now: their deadline moved into the past
    for oid, _ in batch:
        d = orders.from_record(oid, r.hget(k.order_by_id, oid))
        r.hset(k.order_by_id, oid, orders.record("reserved", "u1", 1, 100, d["created_ms"] - 5000,
                                                 d["created_ms"] - 1))
    reply = transition(r, ev, "s0", "paid", [batch[0][0]])
    assert reply[1] == b"conflict" and reply[2].startswith(b"expired|")
    reply = transition(r, ev, "s0", "cancel", [batch[1][0]])
    assert reply[1] == b"conflict" and reply[2].startswith(b"expired|")
    reply = transition(r, ev, "s0", "expire", [batch[2][0], batch[0][0]])
    assert [x.decode() for x in reply[1::2]] == ["done", "not_due"]
    assert reply[0] == 0 and r.hlen(k.buyers) == 0
    check_invariants(r, None, ev, body, [], exact=False)


def test_script_refuses_an_unknown_action(r):
    ev = new_id("act")
    with pytest.raises(Exception, match="unknown action"):
        transition(r, ev, "s0", "refund", [f"{ev}.s0.x"])


def test_script_amount_of_a_straddled_order(r):
    """An order whose units straddle two tiers (bd=...) gives back its exact amount."""
    ev = new_id("bd")
    body = event_body(stock=(3,), limits=[3])
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    oid = f"{ev}.s0.o1"
    commit(r, ev, "s0", [(oid, "u1")])
    d = orders.from_record(oid, r.hget(k.order_by_id, oid))
    r.hset(k.order_by_id, oid, orders.record("reserved", "u1", 1, 100, d["created_ms"],
                                             d["pay_by_ms"], bd="1x70"))
    r.set(k.revenue, 70)
    transition(r, ev, "s0", "cancel", [oid])
    assert int(r.get(k.revenue)) == 0


def test_buys_payments_cancels_and_expiries_together(any_gw, r):
    """Rounds of concurrent buys (stock 12, limit 1, 40 users, 1 s to pay) while the
    operator cancels a third of the orders and pays a third, some of them right at
    their deadline, and the sweeper expires the rest: whatever wins each race, the
    invariants hold, every unit given back is sold again, and in the end every order
    is final and sold == the units paid."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    gw = any_gw
    ev = new_id("mix")
    body = event_body(stock=(12,), payment_timeout_s=1)
    gw.put_event(ev, body)
    rnd = random.Random(11)
    users = [f"m{i}" for i in range(40)]
    acked: list[dict] = []
    answers = {"paid": [], "cancel": []}
    deadline = time.monotonic() + 4.0 * SOAK
    with ThreadPoolExecutor(16) as pool:
        while time.monotonic() < deadline:
            got = list(pool.map(lambda u: gw.buy(ev, "s0", u), users))
            new = []
            for status, data, _ in got:
                if status == 200:
                    new.append(data)
                else:
                    assert status == 409 and data["error"] in ("sold_out", "limit_exceeded"), data
            acked += new
            jobs = []
            for o in new:
                pick = rnd.random()
                if pick < 1 / 3:
                    jobs.append(("cancel", o, 0.0))
                elif pick < 2 / 3:
                    # some pay at once, some right at the deadline (a race with the sweeper)
                    late = rnd.random() < 0.5
                    jobs.append(("paid", o, (o["pay_by_ms"] - now_ms()) / 1000 if late else 0.0))

            def run(job):
                action, o, wait = job
                if wait > 0:
                    time.sleep(wait)
                fn = paid if action == "paid" else cancel
                status, data, _ = fn(gw, o["order_id"])
                return action, o, status, data

            for action, o, status, data in pool.map(run, jobs):
                assert status in (200, 409), (action, status, data)
                if status == 409:
                    assert data["error"] == "conflict", data
                answers[action].append((o["order_id"], status))
            time.sleep(0.2)
    assert len(acked) > 12, "units given back were sold again"
    assert any(s == 200 for _, s in answers["paid"]) and answers["cancel"]

    def all_final():
        return all(x["status"] != "reserved" for x in gw.orders_export(ev))

    wait_for(all_final, "every order paid, cancelled or expired", 6)
    final = {x["order_id"]: x["status"] for x in gw.orders_export(ev)}
    for oid, status in answers["paid"]:
        assert final[oid] == ("paid" if status == 200 else "expired"), (oid, status)
    for oid, status in answers["cancel"]:
        assert final[oid] == ("cancelled" if status == 200 else "expired"), (oid, status)
    k = keys.SkuKeys(ev, "s0")
    assert int(r.get(k.sold)) == int(r.get(k.units_paid)) == \
        sum(1 for s in final.values() if s == "paid")
    check_invariants(r, gw, ev, body, acked)


def test_stock_added_during_a_rush(any_gw, r):
    """Buyers keep coming (16 at a time) while the operator adds stock twice: every unit
    added is sold, never more than the stock, and the buyers refused while it was
    sold out get the new units."""
    from concurrent.futures import ThreadPoolExecutor

    gw = any_gw
    ev = new_id("addrush")
    body = event_body(stock=(20,))
    gw.put_event(ev, body)
    users = [f"r{i}" for i in range(240)]
    acked: list[dict] = []
    refused: list[str] = []
    added = []

    def buy(u):
        status, data, _ = gw.buy(ev, "s0", u)
        assert status in (200, 409), (status, data)
        if status == 409:
            assert data["error"] == "sold_out", data
        return u, status, data

    with ThreadPoolExecutor(16) as pool:
        for part in range(3):
            for u, status, data in pool.map(buy, users[part * 80:(part + 1) * 80]):
                (acked.append(data) if status == 200 else refused.append(u))
            if part < 2:
                status, got, _ = add_stock(gw, ev, "s0", {"add": 30})
                assert status == 200, got
                added.append(got["stock"])
    assert added == [50, 80]
    # the refused try again until nothing is left: every unit added is sold
    for u in refused:
        if len(acked) == 80:
            break
        status, data, _ = gw.buy(ev, "s0", u)
        if status == 200:
            acked.append(data)
    assert len(acked) == 80 and len({o["user_id"] for o in acked}) == 80
    assert gw.buy(ev, "s0", "late")[1]["error"] == "sold_out"
    assert int(r.get(keys.SkuKeys(ev, "s0").sold)) == 80
    check_invariants(r, gw, ev, body, acked)


def test_the_sweep_interval_bounds_the_expiry_lag(redis_server, r, tmp_path):
    """With --sweep-interval 0.05 an unpaid order expires within a few passes of its
    deadline (the default, 0.5 s, lets it wait up to half a second)."""
    from tests.support import Gateway

    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1,
                 extra=["--sweep-interval", "0.05", "--dev"]).start()
    try:
        ev = new_id("sweepfast")
        body = event_body(stock=(2,), payment_timeout_s=1)
        gw.put_event(ev, body)
        o = buy_ok(gw, ev, "s0", "u1")
        wait_for(lambda: order_of(gw, o["order_id"])["status"] == "expired", "the expiry", 3)
        lag = order_of(gw, o["order_id"])["updated_ms"] - o["pay_by_ms"]
        assert 0 <= lag < 400, lag
        check_invariants(r, gw, ev, body, [o])
    finally:
        gw.stop()


def test_script_an_order_due_before_the_end_returns_its_units_when_swept_after_it(r):
    """The sweeper may come after the end: an order whose deadline fell before the end
    expired while the sale was open and gives its units back; one due after the end
    keeps them (kept=1)."""
    t = now_ms()
    ev = new_id("lateswp")
    body = event_body(stock=(2,), limits=[1], starts=t - 1000, ends=t + 700)
    configure(r, ev, body)
    k = keys.SkuKeys(ev, "s0")
    a, b = f"{ev}.s0.a", f"{ev}.s0.b"
    commit(r, ev, "s0", [(a, "u1"), (b, "u2")])
    for oid, user, pay_by in ((a, "u1", t + 300), (b, "u2", t + 800)):
        d = orders.from_record(oid, r.hget(k.order_by_id, oid))
        r.hset(k.order_by_id, oid, orders.record("reserved", user, 1, d["unit_price"],
                                                 d["created_ms"], pay_by))
    time.sleep(max(0.0, (t + 900 - now_ms()) / 1000))
    transition(r, ev, "s0", "expire", [a, b])
    assert int(r.get(k.sold)) == 1 and int(r.get(k.returned)) == 1
    assert not orders.kept(r.hget(k.order_by_id, a)) and orders.kept(r.hget(k.order_by_id, b))
    assert r.hget(k.buyers, "u1") is None and r.hget(k.buyers, "u2") == b"1"
    check_invariants(r, None, ev, body, [{"order_id": a, "sku": "s0", "user_id": "u1", "qty": 1},
                                         {"order_id": b, "sku": "s0", "user_id": "u2", "qty": 1}])
