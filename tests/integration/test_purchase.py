"""The purchase path under concurrency, against a real Redis and a 2-worker gateway,
in both identity modes (``any_gw``: dev identity with limits off, and the production
configuration: signed tokens, the default rate limits, a trusted proxy, a global
admission rate). Every test ends with the invariant check."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from tests.support import (
    MODES,
    Gateway,
    check_invariants,
    event_body,
    http_session,
    new_id,
    now_ms,
    read_response,
    wait_for,
)


def run_sessions(port, sessions, timeout=60):
    """Run each list of requests on its own keep-alive connection, concurrently."""
    results: list = []

    async def main():
        await asyncio.wait_for(
            asyncio.gather(*(http_session(port, s, results) for s in sessions)), timeout)

    asyncio.run(main())
    return results


def acked_orders(results):
    return [body for _, status, body in results if status == 200]


def workers_that_sold(orders) -> set[str]:
    # order ids are <event>.<sku>.<12 hex chars of the worker's boot id><sequence>
    return {o["order_id"].split(".")[2][:12] for o in orders}


def test_rush_sells_exactly_the_stock(any_gw, r):
    """Stock 500 in 2 SKUs (limits 2 and 1), 2,400 users, 12,800 buys from 64
    concurrent keep-alive connections spread over both workers. No user sends more
    than 6 (within the default per-user burst of 10: a rush of many buyers, not of a
    few bots), so every answer is a sale or a refusal of the ledger."""
    gw = any_gw
    ev = new_id("rush")
    body = event_body(stock=(300, 200), limits=(2, 1))
    gw.put_event(ev, body)
    rnd = random.Random(7)
    users = [f"u{i}" for i in range(2400)] * 6
    rnd.shuffle(users)
    sessions = [
        [gw.buy_request(ev, rnd.choice(("s0", "s1")), users.pop(), qty=rnd.choice((1, 1, 2)))
         for _ in range(200)]
        for _ in range(64)
    ]
    results = run_sessions(gw.port, sessions)
    assert len(results) == 64 * 200
    statuses = {}
    for _, status, payload in results:
        key = (status, payload.get("error") if status != 200 else "ok")
        statuses[key] = statuses.get(key, 0) + 1
    orders = acked_orders(results)
    # only documented answers
    allowed = {(200, "ok"), (409, "sold_out"), (409, "limit_exceeded")}
    assert set(statuses) <= allowed, statuses
    figures = check_invariants(r, gw, ev, body, orders)
    assert figures["s0"]["sold"] == 300 and figures["s1"]["sold"] == 200, figures
    assert sum(o["qty"] for o in orders) == 500
    assert len(workers_that_sold(orders)) == 2, "both workers should have sold"
    # the public view reaches 0 left on every worker within a refresh tick
    def views_sold_out():
        views = [gw.request("GET", f"/api/v1/events/{ev}")[1] for _ in range(6)]
        return all(all(s["left"] == 0 for s in v["skus"]) for v in views) and views

    views = wait_for(views_sold_out, "0 left on every worker", timeout=3)
    assert all(v["state"] == "sold_out" for v in views), views[0]

    # the counters add up across workers (they reach Redis at each worker's flush)
    def stats_of():
        return gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]

    stats = wait_for(lambda: (s := stats_of())["attempts"] == len(results) and s,
                     "every attempt counted", timeout=3)
    assert stats["orders"] == len(orders) and stats["units_sold"] == 500
    rej = stats["rejections"]
    assert rej["sold_out"] == statuses.get((409, "sold_out"), 0)
    assert rej["limit_exceeded"] == statuses.get((409, "limit_exceeded"), 0)
    assert stats["sold_out_ms"] is not None
    # unique visitors: both workers' HyperLogLogs merged, within the sketch's error
    visitors = {req[4][0] for session in sessions for req in session}
    near = wait_for(lambda: abs((s := stats_of())["uv"] - len(visitors))
                    <= 0.03 * len(visitors) and s, "the unique visitors", timeout=3)
    assert abs(near["uv"] - len(visitors)) <= 0.03 * len(visitors), (near["uv"], len(visitors))


def test_one_user_many_connections_gets_exactly_the_limit(any_gw, r):
    """One user, 200 buys on 40 connections: exactly the limit of 2 sells. With the
    default limits, the user's (and their IP's) burst is spent too: the rest is
    limit_exceeded or rate_limited."""
    gw = any_gw
    ev = new_id("one")
    body = event_body(stock=(50,), limits=(2,))
    gw.put_event(ev, body)
    sessions = [[gw.buy_request(ev, "s0", "greedy") for _ in range(5)] for _ in range(40)]
    results = run_sessions(gw.port, sessions)
    orders = acked_orders(results)
    assert sum(o["qty"] for o in orders) == 2
    refused = {p["error"] for _, s, p in results if s != 200}
    if math.isinf(gw.user_burst):
        assert refused == {"limit_exceeded"}
    else:  # 200 requests of one user are far beyond its burst on any worker
        assert refused == {"limit_exceeded", "rate_limited"}, refused
    check_invariants(r, gw, ev, body, orders)
    assert int(r.hget("fg:{" + ev + ":s0}:buyers", "greedy")) == 2


def test_concurrent_idempotent_retries_make_one_order(any_gw, r):
    """Concurrent retries of one purchase (one Idempotency-Key): one order, and every
    retry answered with it. (30 retries; with the default limits, as many as the
    user's burst leaves for the two later requests, whatever worker they meet.)"""
    gw = any_gw
    ev = new_id("idem")
    body = event_body(stock=(10,), limits=(1,))
    gw.put_event(ev, body)
    retries = int(min(30, gw.user_burst - 2))
    sessions = [[gw.buy_request(ev, "s0", "retrier", idem="key-1")] for _ in range(retries)]
    results = run_sessions(gw.port, sessions)
    assert {s for _, s, _ in results} == {200}, results
    ids = {p["order_id"] for _, _, p in results}
    assert len(ids) == 1, ids
    # the same key with another body
    status, payload, _ = gw.buy(ev, "s0", "retrier", qty=2, headers={"Idempotency-Key": "key-1"})
    assert (status, payload["error"]) == (422, "idempotency_mismatch")
    # a later replay still returns the original order
    status, payload, _ = gw.buy(ev, "s0", "retrier", headers={"Idempotency-Key": "key-1"})
    assert status == 200 and payload["order_id"] in ids
    check_invariants(r, gw, ev, body, [results[0][2]])
    assert int(r.get("fg:{" + ev + ":s0}:sold")) == 1


def test_window_boundaries_under_load(any_gw, r):
    """Buys hammer an event that opens 1 s from now and closes 1 s later: before
    the start everything is not_started, after the end everything is ended, and
    every order was created inside the window (by Redis's clock)."""
    gw = any_gw
    ev = new_id("win")
    start = now_ms() + 1000
    body = event_body(stock=(100000,), limits=(1,), starts=start, ends=start + 1000)
    gw.put_event(ev, body)
    counter = iter(range(10**9))

    async def hammer(results, until):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            while now_ms() < until:
                request = gw.buy_bytes(ev, "s0", f"w{next(counter)}")
                sent = now_ms()
                writer.write(request)
                status, data = await read_response(reader)
                results.append((sent, now_ms(), status, data))
        finally:
            writer.close()

    results: list = []

    async def main():
        await asyncio.gather(*(hammer(results, start + 1600) for _ in range(8)))

    asyncio.run(main())
    orders = [d for _, _, s, d in results if s == 200]
    assert orders, "nothing sold inside the window"
    for sent, received, status, data in results:
        if received < start - 50:
            assert (status, data.get("error")) == (409, "not_started")
        if sent > start + 1000 + 50:
            assert (status, data.get("error")) == (409, "ended")
        assert status in (200, 409), data
    for o in orders:
        assert start <= o["created_ms"] < start + 1000, o
    check_invariants(r, gw, ev, body, orders)


@pytest.fixture(scope="module", params=MODES)
def gw4(request, redis_server, tmp_path_factory):
    """A 4-worker gateway of each identity mode."""
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("gw4"), workers=4, mode=request.param,
                shared=True).start()
    yield g
    g.close()


def test_small_stock_on_four_workers_sells_exactly_and_never_early(gw4, r):
    """Stock 5 on 4 workers: exactly 5 sold, and no buyer hears sold_out before
    the last unit was committed."""
    ev = new_id("small")
    body = event_body(stock=(5,), limits=(1,))
    gw4.put_event(ev, body)
    results: list = []

    async def one(user):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw4.port)
        try:
            writer.write(gw4.buy_bytes(ev, "s0", user, extra="Connection: close\r\n"))
            raw = await reader.read()
            received = now_ms()
            head, _, data = raw.partition(b"\r\n\r\n")
            results.append((int(head.split()[1]), json.loads(data), received))
        finally:
            writer.close()

    async def main():
        await asyncio.gather(*(one(f"buyer{i}") for i in range(200)))

    asyncio.run(main())
    orders = [d for s, d, _ in results if s == 200]
    assert len(orders) == 5
    last_sale = max(o["created_ms"] for o in orders)
    for status, data, received in results:
        assert status in (200, 409), data
        if status == 409:
            assert data["error"] == "sold_out"
            # 1 ms of slack: Redis TIME and the local clock round differently
            assert received >= last_sale - 1, "sold_out answered while a unit was open"
    check_invariants(r, gw4, ev, body, orders)


def pipelined(port, requests, timeout=10.0):
    """Send every request in ONE write on one connection; read the answers in order."""

    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = b""
        for method, path, headers, payload, _ in requests:
            head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            data += head.encode() + b"\r\n" + payload
        writer.write(data)
        out = []
        for _ in requests:
            out.append(await read_response(reader, timeout))
        writer.close()
        return out

    return asyncio.run(main())


def test_units_in_flight_that_fail_go_to_the_buyers_waiting(any_gw, r):
    """Five unregistered buyers take every open unit in flight (Redis will refuse
    them: not_registered); the five registered buyers pipelined behind them must
    wait for that answer and then buy, not hear sold_out: all 5 units sell."""
    gw = any_gw
    ev = new_id("wait")
    body = event_body(stock=(5,), limits=(1,), registration_required=True)
    gw.put_event(ev, body)
    for i in range(5):
        status, _, _ = gw.request("POST", f"/api/v1/events/{ev}/register", None,
                                  gw.who(f"reg{i}"))
        assert status == 200
    reqs = [gw.buy_request(ev, "s0", f"anon{i}") for i in range(5)]
    reqs += [gw.buy_request(ev, "s0", f"reg{i}") for i in range(5)]
    answers = pipelined(gw.port, reqs)
    assert [a[1].get("error") for a in answers[:5]] == ["not_registered"] * 5
    assert [a[0] for a in answers[5:]] == [200] * 5, answers[5:]
    check_invariants(r, gw, ev, body, [a[1] for a in answers[5:]])
