"""The operator's lists: registrations (export and count), every event, and the
definition fields of notifications (webhook_url, reminders_s, goals) with their
refusals."""

from __future__ import annotations

import json
from http.client import HTTPConnection

import pytest

from flashgate.core import keys
from tests.support import ADMIN, check_invariants, event_body, new_id, now_ms


def export(gw, event_id, token=ADMIN):
    conn = HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", f"/api/v1/admin/events/{event_id}/registrations",
                     headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        body = r.read()
        return r.status, r.getheader("Content-Type"), body
    finally:
        conn.close()


def test_registrations_are_exported_with_their_first_time_and_counted(gw, r):
    ev = new_id()
    body = event_body(stock=(3,))
    gw.put_event(ev, body)
    users = [f"fan{i}" for i in range(25)]
    before = now_ms()
    for u in users:
        status, data, _ = gw.request("POST", f"/api/v1/events/{ev}/register", None, gw.who(u))
        assert (status, data) == (200, {"registered": True})
    first = {u.decode(): int(ms) for u, ms in r.hgetall(keys.registered(ev)).items()}
    # a repeat is harmless and keeps the first time
    assert gw.request("POST", f"/api/v1/events/{ev}/register", None, gw.who("fan0"))[0] == 200
    assert int(r.hget(keys.registered(ev), "fan0")) == first["fan0"]
    status, ctype, raw = export(gw, ev)
    assert status == 200 and ctype == "application/x-ndjson"
    lines = [json.loads(x) for x in raw.splitlines()]
    assert {x["user_id"] for x in lines} == set(users) and len(lines) == len(users)
    assert all(set(x) == {"user_id", "registered_ms"} for x in lines)
    assert all(before - 5000 <= x["registered_ms"] <= now_ms() + 5000 for x in lines)
    assert {x["user_id"]: x["registered_ms"] for x in lines} == first
    assert [x["registered_ms"] for x in lines] == sorted(x["registered_ms"] for x in lines)
    status, stats, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")
    assert status == 200 and stats["registered"] == 25
    # a registered user buys: the stock's promises hold
    status, order, _ = gw.buy(ev, "s0", "fan1")
    assert status == 200
    check_invariants(r, gw, ev, body, [order])


def test_registrations_of_a_large_set_come_whole(gw, r):
    """HSCAN pages: more users than one page, each exactly once."""
    ev = new_id()
    gw.put_event(ev, event_body())
    r.hset(keys.registered(ev), mapping={f"u{i}": 1_700_000_000_000 + i for i in range(5000)})
    status, _, raw = export(gw, ev)
    lines = [json.loads(x) for x in raw.splitlines()]
    assert status == 200 and len(lines) == 5000
    assert [x["user_id"] for x in lines] == [f"u{i}" for i in range(5000)]
    assert gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]["registered"] == 5000


def test_registrations_and_events_need_the_admin_token(gw):
    ev = new_id()
    gw.put_event(ev, event_body())
    for path in (f"/api/v1/admin/events/{ev}/registrations", "/api/v1/admin/events"):
        for headers in ({}, {"Authorization": "Bearer not-the-admin-token"},
                        gw.who("u1")):
            status, data, _ = gw.request("GET", path, None, headers)
            assert (status, data["error"]) == (401, "unauthenticated"), (path, headers)
    status, data, _ = gw.admin("GET", "/api/v1/admin/events/no-such-event/registrations")
    assert (status, data["error"]) == (404, "not_found")


def test_events_list_says_each_state_and_window(gw):
    t = now_ms()
    ids = {"live": new_id(), "scheduled": new_id(), "ended": new_id(), "preheat": new_id()}
    gw.put_event(ids["live"], event_body(name="Live one"))
    gw.put_event(ids["scheduled"], event_body(starts=t + 3_600_000, ends=t + 7_200_000))
    gw.put_event(ids["preheat"], event_body(starts=t + 3_600_000, ends=t + 7_200_000,
                                            preheat_at_ms=t - 1000))
    gw.put_event(ids["ended"], event_body(starts=t - 7_200_000, ends=t - 3_600_000))
    status, data, _ = gw.admin("GET", "/api/v1/admin/events")
    assert status == 200 and list(data) == ["events"]
    listed = {e["id"]: e for e in data["events"]}
    for state, ev in ids.items():
        e = listed[ev]
        assert e["state"] == state, e
        assert set(e) == {"id", "name", "state", "starts_at_ms", "ends_at_ms"}
        view = gw.request("GET", f"/api/v1/events/{ev}")[1]
        assert (e["name"], e["starts_at_ms"], e["ends_at_ms"], e["state"]) == (
            view["name"], view["starts_at_ms"], view["ends_at_ms"], view["state"])
    assert listed[ids["live"]]["name"] == "Live one"
    starts = [e["starts_at_ms"] for e in data["events"]]
    assert starts == sorted(starts)


def test_notification_fields_round_trip(gw, r):
    ev = new_id()
    body = event_body(webhook_url="https://shop.example/hooks?src=fg", reminders_s=[60, 0, 3600],
                      goals={"units": 100, "buyers": 80})
    status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", body)
    assert status == 201
    assert data["webhook_url"] == "https://shop.example/hooks?src=fg"
    assert data["reminders_s"] == [3600, 60, 0]  # distinct, largest first
    assert data["goals"] == {"units": 100, "buyers": 80}
    assert gw.admin("GET", f"/api/v1/admin/events/{ev}")[1] == data
    assert r.hget(keys.HOOKS_URLS, ev) == b"https://shop.example/hooks?src=fg"
    # defaults; and a replacement without a URL stops the notifications
    del body["webhook_url"], body["reminders_s"], body["goals"]
    status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", body)
    assert status == 200
    assert (data["webhook_url"], data["reminders_s"], data["goals"]) == (
        None, [21600, 7200, 1800, 0], {})
    assert r.hget(keys.HOOKS_URLS, ev) is None


def test_definitions_stored_before_these_fields_still_load(gw, r):
    """A definition written by an earlier build (no webhook_url, reminders_s, goals)."""
    ev = new_id()
    gw.put_event(ev, event_body())
    stored = json.loads(r.get(keys.event(ev)))
    for k in ("webhook_url", "reminders_s", "goals"):
        del stored[k]
    r.set(keys.event(ev), json.dumps(stored))
    r.incr(keys.VERSION)
    gw.on_every_worker(lambda: gw.admin("GET", f"/api/v1/admin/events/{ev}")[1]
                       .get("reminders_s") == [21600, 7200, 1800, 0], "the old definition")
    assert gw.request("GET", f"/api/v1/events/{ev}")[0] == 200


@pytest.mark.parametrize("field,value", [
    ("webhook_url", "ftp://shop.example/h"),
    ("webhook_url", "shop.example/h"),
    ("webhook_url", "http://"),
    ("webhook_url", "https://user:pw@shop.example/h"),
    ("webhook_url", "https://shop.example:99999/h"),
    ("webhook_url", "https://shop.example/a b"),
    ("webhook_url", "https://shop.example/" + "x" * 2100),
    ("webhook_url", 42),
    ("webhook_url", ["https://shop.example/h"]),
    ("reminders_s", 3600),
    ("reminders_s", "3600"),
    ("reminders_s", [3600, -1]),
    ("reminders_s", [1.5]),
    ("reminders_s", [True]),
    ("reminders_s", ["60"]),
    ("reminders_s", [0] * 17),
    ("goals", [100]),
    ("goals", {"units": -1}),
    ("goals", {"revenue": 1.0}),
    ("goals", {"buyers": "80"}),
])
def test_bad_notification_fields_are_400_and_store_nothing(gw, r, field, value):
    ev = new_id()
    status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}",
                               event_body(**{field: value}))
    assert (status, data["error"]) == (400, "bad_request"), data
    assert field.split("_")[0] in data["message"]
    assert r.get(keys.event(ev)) is None and not r.sismember(keys.EVENTS, ev)
    assert r.hget(keys.HOOKS_URLS, ev) is None
    assert gw.admin("GET", f"/api/v1/admin/events/{ev}")[0] == 404
    # nor does a bad replacement change a stored event
    good = event_body(webhook_url="https://shop.example/h")
    gw.put_event(ev, good)
    status, _, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", {**good, field: value})
    assert status == 400
    assert gw.admin("GET", f"/api/v1/admin/events/{ev}")[1]["webhook_url"] == \
        "https://shop.example/h"
