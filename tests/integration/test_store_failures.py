"""Races and store failures on the purchase path: each ends with the invariant check.
The Idempotency-Key cases run in both identity modes (``any_gw``)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis

from flashgate.embedded import EmbeddedRedis
from tests.support import Gateway, check_invariants, event_body, new_id, now_ms


def sku_key(ev, sku, name):
    return "fg:{" + ev + ":" + sku + "}:" + name


def test_a_definition_change_never_undoes_a_pause(gw, r):
    ev = new_id("pause")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    assert gw.admin("POST", f"/api/v1/admin/events/{ev}/pause")[0] == 200
    renamed = dict(body, name="renamed while paused")
    status, _, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", renamed)
    assert status == 200
    assert r.hget(sku_key(ev, "s0", "meta"), "paused") == b"1"
    gw.on_every_worker(
        lambda: gw.request("GET", f"/api/v1/events/{ev}")[1]["name"] == "renamed while paused",
        "the new name")
    for i in range(6):  # every worker still refuses
        status, data, _ = gw.buy(ev, "s0", f"p{i}")
        assert (status, data["error"]) == (409, "paused")
    check_invariants(r, gw, ev, body, [])


def test_an_ended_sale_cannot_be_reopened(gw, r):
    ev = new_id("end")
    t = now_ms()
    body = event_body(stock=(10,), starts=t - 5000, ends=t + 700)
    gw.put_event(ev, body)
    gw.wait_state(ev, "ended")
    later = dict(body, ends_at_ms=t + 60_000)
    status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", later)
    assert (status, data["error"]) == (409, "conflict")
    status, data, _ = gw.buy(ev, "s0", "late")
    assert (status, data["error"]) == (409, "ended")
    check_invariants(r, gw, ev, body, [])


def test_new_idempotency_keys_on_a_sold_out_sku_write_nothing(any_gw, r):
    gw = any_gw
    ev = new_id("flood")
    body = event_body(stock=(1,))
    gw.put_event(ev, body)
    status, order, _ = gw.buy(ev, "s0", "first", headers={"Idempotency-Key": "k0"})
    assert status == 200
    gw.wait_state(ev, "sold_out")  # every worker has heard it is sold out
    for i in range(30):
        status, data, _ = gw.buy(ev, "s0", f"bot{i}", headers={"Idempotency-Key": f"k{i}"})
        assert (status, data["error"]) == (409, "sold_out")
    assert r.keys("fg:{" + ev + "}:idem:bot*") == []
    # the real buyer's repeat still gets the order back
    status, again, _ = gw.buy(ev, "s0", "first", headers={"Idempotency-Key": "k0"})
    assert status == 200 and again["order_id"] == order["order_id"]
    check_invariants(r, gw, ev, body, [order])


def test_a_replay_whose_order_vanished_is_answered_and_frees_nothing(any_gw, r):
    gw = any_gw
    ev = new_id("gone")
    body = event_body(stock=(3,))
    gw.put_event(ev, body)
    status, order, _ = gw.buy(ev, "s0", "u0", headers={"Idempotency-Key": "k"})
    assert status == 200
    record = r.hget(sku_key(ev, "s0", "order_by_id"), order["order_id"])
    r.hdel(sku_key(ev, "s0", "order_by_id"), order["order_id"])  # e.g. deleted by hand
    status, data, _ = gw.buy(ev, "s0", "u0", headers={"Idempotency-Key": "k"})
    assert (status, data["error"]) == (404, "not_found")
    # the worker's ledger is intact: the two other units still sell
    acked = [gw.buy(ev, "s0", f"u{i}")[1] for i in (1, 2)]
    assert all("order_id" in o for o in acked), acked
    status, data, _ = gw.buy(ev, "s0", "u3")
    assert (status, data["error"]) == (409, "sold_out")
    assert int(r.get(sku_key(ev, "s0", "sold"))) == 3
    # nothing else changed: with the record put back, every invariant holds
    r.hset(sku_key(ev, "s0", "order_by_id"), order["order_id"], record)
    check_invariants(r, gw, ev, body, [order, *acked])


@pytest.mark.expected_log(r" ERROR flashgate\.commit: commit of 1 reservations failed: "
                          r".*ERR value is not an integer")
def test_a_script_failing_mid_batch_can_only_undersell(gw, r):
    """Scripts do not roll back: a commit that fails after its first write must
    leave sold counted (no unit may be sold twice), and the buyer hears 503."""
    ev = new_id("half")
    body = event_body(stock=(1,))
    gw.put_event(ev, body)
    r.set(sku_key(ev, "s0", "revenue"), "not a number")  # INCRBY on it fails
    status, data, _ = gw.buy(ev, "s0", "u1")
    assert (status, data["error"]) == (503, "unavailable")
    r.delete(sku_key(ev, "s0", "revenue"))
    status, data, _ = gw.buy(ev, "s0", "u2")
    assert (status, data["error"]) == (409, "sold_out")
    # the indeterminate order is in Redis, counted, and nothing else was sold (its
    # revenue was never added: the failure)
    figures = check_invariants(r, gw, ev, body, [], exact=False, revenue=False)
    assert figures["s0"]["sold"] == 1


@pytest.fixture
def private(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=1, extra=["--log-level", "info"]).start()
    yield server, gw
    server.proc.send_signal(signal.SIGCONT)
    gw.stop()
    server.stop()


@pytest.mark.expected_log(r" ERROR flashgate\.redis: Redis has not answered for [\d.]+ s: "
                          r"closing the connection$")
def test_a_stalled_redis_is_answered_503_fast_and_selling_resumes(private):
    server, gw = private
    r = redis.Redis.from_url(server.url)
    ev = new_id("stall")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    acked = [gw.buy(ev, "s0", "before")[1]]
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        answers = []

        def buy():
            t0 = time.monotonic()
            answers.append((gw.buy(ev, "s0", "during")[0], time.monotonic() - t0))

        worker = threading.Thread(target=buy)
        worker.start()
        worker.join(15)
        assert answers, "a buy hung while Redis was stalled"
        status, took = answers[0]
        assert status == 503 and took < 5, answers
        assert gw.request("GET", "/readyz")[0] == 503
        assert gw.request("GET", f"/api/v1/events/{ev}")[0] == 200  # reads from memory
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    gw.wait_ready(timeout=10)
    status, order, _ = gw.buy(ev, "s0", "after")
    assert status == 200, order
    acked.append(order)
    # the worker logged the loss and the return, once each (not a line per failed command)
    back = gw.wait_happening("redis_back")
    lost = gw.happenings("redis_lost")
    assert len(lost) == 1 and lost[0]["level"] == "warning" and lost[0]["worker"] == 0, lost
    assert lost[0]["redis"] == server.url and back["away_ms"] >= 0, (lost, back)
    assert len(gw.happenings("redis_back")) == 1
    check_invariants(r, gw, ev, body, acked, exact=False)
    r.close()


def test_a_flushed_script_cache_is_refilled_by_the_commit(private):
    """After SCRIPT FLUSH (or a Redis restart without its scripts) a commit's EVALSHA
    answers NOSCRIPT: the batch is sent again with the script's source, and sells."""
    server, gw = private
    r = redis.Redis.from_url(server.url)
    ev = new_id("noscript")
    body = event_body(stock=(5,))
    gw.put_event(ev, body)
    acked = []
    for user in ("u1", "u2", "u3"):
        status, order, _ = gw.buy(ev, "s0", user)
        assert status == 200, order
        acked.append(order)
        r.script_flush()
    assert [o["unit_price"] for o in acked] == [100] * 3
    check_invariants(r, gw, ev, body, acked)
    r.close()


def test_registration_opens_at_preheat(gw, r):
    ev = new_id("pre")
    t = now_ms()
    body = event_body(stock=(5,), starts=t + 60_000, ends=t + 120_000,
                      preheat_at_ms=t + 30_000, registration_required=True)
    gw.put_event(ev, body)
    status, data, _ = gw.request("POST", f"/api/v1/events/{ev}/register", None,
                                 gw.who("early"))
    assert (status, data["error"]) == (409, "not_started")
    assert r.smembers(sku_key(ev, "s0", "reg")) == set()
    assert gw.request("GET", f"/api/v1/events/{ev}")[1]["state"] == "scheduled"
    check_invariants(r, gw, ev, body, [])
