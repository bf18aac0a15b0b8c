"""The operator's figures against a scripted load whose page views, visitors, attempts
and orders are known exactly: the stats (docs/API.md, "The figures") and the
per-second series, in both identity modes (dev identity; signed tokens behind a
trusted proxy). Every test that sells ends with the invariant check."""

from __future__ import annotations

import socket
import time

import pytest

from flashgate.core import keys
from tests.support import check_invariants, event_body, new_id, now_ms, wait_for


def hll_near(got: int, want: int) -> bool:
    """A HyperLogLog's estimate of a small set: within 2 % (at least 1) of the truth."""
    return abs(got - want) <= max(1, round(0.02 * want))


def open_stream(gw, event_id: str, headers: dict, query: str = "") -> socket.socket:
    """A stream connect with ``headers``, its head read (200), left open."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(f"GET /api/v1/events/{event_id}/stream{query} HTTP/1.1\r\nHost: t\r\n"
              f"{extra}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "the stream closed before its head"
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 200"), buf[:80]
    return s


def scripted_load(gw, ev: str) -> dict:
    """The load, and what it must count: 30 anonymous visitors (each from its own
    client IP behind the trusted proxy; without one, all from 127.0.0.1) view the event
    twice; 25 signed-in users view it once and 5 of them open the stream (and an
    operator opens 3 streams with ?view=0: not views, not a visitor); those 25
    buy one unit each (20 in stock: 20 orders, 5 sold out); 3 more users buy without
    ever viewing (sold out)."""
    anon = [f"10.77.0.{i}" for i in range(30)]
    for ip in anon * 2:
        headers = {"X-Forwarded-For": ip} if gw.trusts_proxy else {}
        assert gw.request("GET", f"/api/v1/events/{ev}", headers=headers)[0] == 200
    users = [f"fig{i:02d}" for i in range(25)]
    for u in users:
        assert gw.request("GET", f"/api/v1/events/{ev}", headers=gw.who(u))[0] == 200
    streams = [open_stream(gw, ev, gw.who(u)) for u in users[:5]]
    # the dashboard's streams are not page views
    streams += [open_stream(gw, ev, gw.who("operator"), "?view=0") for _ in range(3)]
    acked, refused = [], []
    for u in users + ["late0", "late1", "late2"]:
        status, body, _ = gw.buy(ev, "s0", u)
        (acked if status == 200 else refused).append(body)
    assert len(acked) == 20 and {b["error"] for b in refused} == {"sold_out"}, refused
    # new visitors (127.0.0.1 viewed the event before: put_event's wait)
    visitors = (len(anon) if gw.trusts_proxy else 0) + len(users) + 3
    return {"streams": streams, "acked": acked, "pv": 60 + 25 + 5, "uv": visitors,
            "attempts": 28, "orders": 20, "participants": 28, "buyers": 20,
            "sold_out": 8}


def test_stats_count_the_scripted_load(any_gw, r):
    gw = any_gw
    ev = new_id("fig")
    body = event_body(stock=(20,))
    gw.put_event(ev, body)  # (its wait for every worker views the event from 127.0.0.1)
    time.sleep(0.7)  # those views flushed by every worker (lag_ms: 500)
    base = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
    want = scripted_load(gw, ev)
    try:
        def stats():
            s = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
            return s if (s["attempts"] == want["attempts"]
                         and s["pv"] - base["pv"] == want["pv"]) else None

        # the answering worker flushes its own counts; the other's arrive within lag_ms
        s = wait_for(stats, "every count flushed", timeout=3)
        assert s["lag_ms"] == 500 and abs(s["as_of_ms"] - now_ms()) < 2000
        assert s["orders"] == want["orders"] and s["units_sold"] == 20
        assert s["rejections"]["sold_out"] == want["sold_out"]
        assert sum(s["rejections"].values()) == want["sold_out"], s["rejections"]
        assert hll_near(s["uv"] - base["uv"], want["uv"]), (s["uv"], base["uv"], want)
        assert hll_near(s["participants"], want["participants"]), s
        assert hll_near(s["buyers"], want["buyers"]), s
        assert s["conversion"] == round(s["buyers"] / s["uv"], 4)
        sku = s["skus"][0]
        assert sku["sold_out_ms"] == sku["sold_out_at_ms"] - body["starts_at_ms"] >= 0
        assert s["sold_out_ms"] == sku["sold_out_ms"]
        assert s["latency_ms"]["p50"] is not None
    finally:
        for c in want["streams"]:
            c.close()
    check_invariants(r, gw, ev, body, want["acked"])


def test_series_second_by_second(any_gw, r):
    """The series adds up to the stats: every attempt, order, unit and rejection of
    the load lands in some second of the range; the units left reach 0; the open
    streams are counted in the seconds they were open."""
    gw = any_gw
    ev = new_id("ser")
    body = event_body(stock=(20,))
    gw.put_event(ev, body)
    t0 = now_ms()
    want = scripted_load(gw, ev)
    try:
        def series():
            st, got, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/series?from_ms={t0 - 5000}")
            assert st == 200, got
            pts = got["points"]
            done = (sum(p["attempts"] for p in pts) == want["attempts"]
                    and pts and pts[-1]["left"].get("s0") == 0
                    and any(p["subscribers"] >= 8 for p in pts))
            return got if done else None

        got = wait_for(series, "the load's seconds in the series", timeout=5)
    finally:
        for c in want["streams"]:
            c.close()
    pts = got["points"]
    assert got["step_ms"] == 1000 and got["from_ms"] == t0 - 5000
    ts = [p["ts_ms"] for p in pts]
    assert ts == list(range(ts[0], ts[-1] + 1000, 1000)) and ts[0] >= t0 - 5000
    assert ts[-1] <= now_ms()
    assert sum(p["orders"] for p in pts) == 20 and sum(p["units"] for p in pts) == 20
    assert sum(p["rejections"].get("sold_out", 0) for p in pts) == want["sold_out"]
    assert all(set(p["rejections"]) <= {"sold_out"} for p in pts)
    # nothing counted before the load began
    assert all(p["attempts"] == 0 for p in pts if p["ts_ms"] < t0 // 1000 * 1000)
    # the units left go down, never up (no return in this load)
    lefts = [p["left"]["s0"] for p in pts if "s0" in p["left"]]
    assert lefts == sorted(lefts, reverse=True) and lefts[-1] == 0
    # the series is kept until the event's end plus the retention
    minute_key = keys.series(ev, ts[-1] // 60000)
    ttl = r.pttl(minute_key)
    assert ttl > 0 and abs(now_ms() + ttl - (body["ends_at_ms"]
                                             + keys.SERIES_RETENTION_S * 1000)) < 5000
    check_invariants(r, gw, ev, body, want["acked"])


@pytest.mark.parametrize("query, error", [
    ("from_ms=abc", "integers"),
    ("from_ms=10&to_ms=5", "to_ms >= from_ms"),
    ("from_ms=-1", "from_ms must be >= 0"),
    ("from_ms=0&to_ms=999999999999", "at most"),
])
def test_series_bad_ranges(gw, query, error):
    ev = new_id("serbad")
    gw.put_event(ev, event_body(stock=(1,)))
    st, got, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/series?{query}")
    assert st == 400 and got["error"] == "bad_request" and error in got["message"], got


def test_series_default_range_and_unknown_event(gw):
    ev = new_id("serdef")
    t = now_ms()
    body = event_body(stock=(1,), starts=t + 3_600_000, ends=t + 7_200_000)
    gw.put_event(ev, body)
    st, got, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/series")
    # before the range's start (a minute before the sale's): no point yet
    assert st == 200 and got["points"] == [] and got["from_ms"] == body["starts_at_ms"] - 60_000
    assert gw.admin("GET", "/api/v1/admin/events/nope/series")[0] == 404
    assert gw.request("GET", f"/api/v1/admin/events/{ev}/series")[0] == 401
