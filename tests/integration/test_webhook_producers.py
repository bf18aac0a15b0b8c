"""The producers of notifications (reminders at their offsets with an injected clock,
milestones, sold out, the end), each enqueued once over several producers; and the
whole chain in a real gateway: its notifier process sends a real receiver the
reminder of registered users, the sold-out of a SKU bought empty and the end."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from flashgate.core import keys, store
from flashgate.core.events import parse_event
from flashgate.webhooks import outbox
from flashgate.webhooks.producers import Producers
from flashgate.webhooks.signing import verify
from tests.integration.test_cli import clean_env, flashgate
from tests.support import Gateway, check_invariants, event_body, new_id, now_ms, wait_for
from tests.webhook_support import DB, SECRET, Receiver, connect

H = 3_600_000


class Clock:
    def __init__(self, t: int):
        self.t = t

    def __call__(self) -> int:
        return self.t


def queued(r) -> dict[str, dict]:
    """The deliveries in the outbox, by id: their bodies."""
    return {k.decode(): json.loads(v) for k, v in r.hgetall(keys.HOOKS_BODY).items()}


async def define(conn, ev_id: str, body: dict):
    ev = parse_event(ev_id, body)
    await store.save_event(conn, ev)
    return ev


def test_reminders_at_their_offsets_in_batches_each_once(hooks_db):
    url, r = hooks_db
    start = now_ms() + 10 * H  # the sale's start; the clock below walks up to it
    ev = new_id()
    # 1,200 registered users: 3 batches of 500; registered before the reminders
    r.hset(keys.registered(ev), mapping={f"u{i:04d}": now_ms() - 10_000 + i for i in range(1200)})

    async def main():
        conn = await connect(url)
        await define(conn, ev, event_body(starts=start, ends=start + H,
                                          webhook_url="http://127.0.0.1:1/h"))
        clock = Clock(start - 6 * H - 1000)
        p = Producers(conn, clock=clock)
        await p.tick()
        assert queued(r) == {}  # a second before the 6 h mark: nothing
        clock.t = start - 6 * H
        await p.tick()
        got = queued(r)
        assert sorted(got) == [f"{ev}:reminder:21600:{i}" for i in range(3)]
        users = []
        for i in range(3):
            b = got[f"{ev}:reminder:21600:{i}"]
            assert (b["type"], b["event_id"], b["ts_ms"]) == ("reminder", ev, clock.t)
            assert b["data"]["starts_at_ms"] == start and b["data"]["batches"] == 3
            users += b["data"]["users"]
        assert users == [f"u{i:04d}" for i in range(1200)]  # each once, in order
        assert [len(got[f"{ev}:reminder:21600:{i}"]["data"]["users"]) for i in range(3)] == \
            [500, 500, 200]
        r.delete(keys.HOOKS_BODY)
        for t in (start - 6 * H + 60_000, start - 2 * H - 1):
            clock.t = t
            await p.tick()  # the 6 h reminder is done; the 2 h one not due yet
        assert queued(r) == {}
        clock.t = start - 2 * H + 5000
        await p.tick()
        assert sorted(queued(r)) == [f"{ev}:reminder:7200:{i}" for i in range(3)]
        r.delete(keys.HOOKS_BODY)
        # the clock jumps past the 30 min mark by more than the grace: skipped, not late
        clock.t = start - 1000
        await p.tick()
        assert queued(r) == {}
        assert r.hget(keys.notified(ev), "reminder:1800").startswith(b"skipped|")
        clock.t = start
        await p.tick()
        assert sorted(queued(r)) == [f"{ev}:reminder:0:{i}" for i in range(3)]
        r.delete(keys.HOOKS_BODY)
        # a new producer (another instance, a restart) sends none of them again
        p2 = Producers(conn, clock=clock)
        await p2.tick()
        await p.tick()
        assert queued(r) == {}
        conn.close()

    asyncio.run(main())


def test_an_event_created_late_skips_the_passed_reminders(hooks_db):
    """Created 3 h before its start: no 6 h reminder; created within the grace after
    its start: the one at the start still comes."""
    url, r = hooks_db
    start = now_ms() + 10 * H
    late, started = new_id(), new_id()
    for ev in (late, started):
        r.hset(keys.registered(ev), "fan", now_ms() - 1000)

    async def main():
        conn = await connect(url)
        await define(conn, late, event_body(starts=start, ends=start + H,
                                            webhook_url="http://127.0.0.1:1/h"))
        await define(conn, started, event_body(starts=start - 3 * H, ends=start + H,
                                               webhook_url="http://127.0.0.1:1/h",
                                               reminders_s=[3600, 0]))
        clock = Clock(start - 3 * H + 60_000)  # 1 min after "started" began
        p = Producers(conn, clock=clock)
        await p.tick()
        got = queued(r)
        assert sorted(got) == [f"{started}:reminder:0:0"]
        assert r.hget(keys.notified(late), "reminder:21600").startswith(b"skipped|")
        assert r.hget(keys.notified(started), "reminder:3600").startswith(b"skipped|")
        clock.t = start - 2 * H
        await p.tick()
        assert f"{late}:reminder:7200:0" in queued(r)
        conn.close()

    asyncio.run(main())


def test_concurrent_producers_enqueue_each_reminder_once(hooks_db):
    """Four producers (four instances) tick at the same moment, many times."""
    url, r = hooks_db
    start = now_ms() + 10 * H
    ev = new_id()
    r.hset(keys.registered(ev), mapping={f"u{i}": now_ms() - 5000 for i in range(1300)})

    async def main():
        conns = [await connect(url) for _ in range(4)]
        await define(conns[0], ev, event_body(starts=start, ends=start + H,
                                              webhook_url="http://127.0.0.1:1/h",
                                              reminders_s=[60, 0]))
        clock = Clock(start - 60_000)
        ps = [Producers(c, clock=clock) for c in conns]
        for _ in range(5):
            await asyncio.gather(*(p.tick() for p in ps))
        clock.t = start
        for _ in range(5):
            await asyncio.gather(*(p.tick() for p in ps))
        for c in conns:
            c.close()

    asyncio.run(main())
    got = queued(r)
    assert sorted(got) == sorted(f"{ev}:reminder:{o}:{i}" for o in (60, 0) for i in range(3))
    for o in (60, 0):
        users = [u for i in range(3) for u in got[f"{ev}:reminder:{o}:{i}"]["data"]["users"]]
        assert sorted(users) == sorted(f"u{i}" for i in range(1300))
    assert r.zcard(keys.HOOKS_DUE) == 6


def test_a_producer_that_died_mid_reminder_is_taken_over_with_the_same_batches(hooks_db):
    url, r = hooks_db
    start = now_ms() + 10 * H
    ev = new_id()
    r.hset(keys.registered(ev), mapping={f"u{i:03d}": now_ms() - 5000 + i for i in range(250)})

    async def main():
        conn = await connect(url)
        await define(conn, ev, event_body(starts=start, ends=start + H,
                                          webhook_url="http://127.0.0.1:1/h", reminders_s=[0]))
        clock = Clock(start)
        # the first producer claimed the reminder and enqueued its first batch only
        p1 = Producers(conn, clock=clock, batch=100, claim_lease_ms=10_000)
        p1_enqueue = outbox.enqueue
        calls = []

        async def dies_after_one(*a, **kw):
            if calls:
                raise RuntimeError("the producer's process died")
            calls.append(a)
            return await p1_enqueue(*a, **kw)

        import flashgate.webhooks.producers as producers_mod
        producers_mod.outbox.enqueue = dies_after_one
        try:
            with pytest.raises(RuntimeError):
                await p1.tick()
        finally:
            producers_mod.outbox.enqueue = p1_enqueue
        # users who register now come after the claim's cutoff: not in this reminder
        r.hset(keys.registered(ev), "late-fan", start + 5000)
        p2 = Producers(conn, clock=clock, batch=100, claim_lease_ms=10_000)
        await p2.tick()
        assert sorted(queued(r)) == [f"{ev}:reminder:0:0"]  # p1's lease still runs
        clock.t = start + 11_000
        await p2.tick()
        conn.close()

    asyncio.run(main())
    got = queued(r)
    assert sorted(got) == [f"{ev}:reminder:0:{i}" for i in range(3)]
    users = [u for i in range(3) for u in got[f"{ev}:reminder:0:{i}"]["data"]["users"]]
    assert users == [f"u{i:03d}" for i in range(250)]
    assert r.hget(keys.notified(ev), "reminder:0").startswith(b"done|")


def test_milestones_sold_out_and_the_end_each_once(hooks_db):
    """The keys other parts write (the commit script's milestones and sold-out time)
    set here directly; the end with its totals."""
    url, r = hooks_db
    t = now_ms()
    ev = new_id()
    body = event_body(stock=(2, 3), starts=t - H, ends=t + H, webhook_url="http://127.0.0.1:1/h",
                      reminders_s=[], milestones=[{"sold": 1, "reward": "tote"},
                                                  {"sold": 4, "reward": "cup"}],
                      goals={"units": 4})

    async def main():
        conn = await connect(url)
        e = await define(conn, ev, body)
        clock = Clock(t)
        ps = [Producers(conn, clock=clock) for _ in range(2)]
        await asyncio.gather(*(p.tick() for p in ps))
        assert queued(r) == {}
        s0 = keys.SkuKeys(ev, "s0")
        r.hset(keys.milestones(ev), "1", f"{t + 5}|{ev}.s0.abc")
        r.set(s0.sold_out_ms, t + 7)
        r.set(s0.sold, 2)
        r.hset(s0.buyers, mapping={"a": 1, "b": 1})
        r.hset(keys.registered(ev), mapping={"a": t, "b": t, "c": t})
        for _ in range(3):
            await asyncio.gather(*(p.tick() for p in ps))
        got = queued(r)
        assert sorted(got) == [f"{ev}:milestone:1", f"{ev}:sold_out:s0"]
        m = got[f"{ev}:milestone:1"]
        assert (m["type"], m["ts_ms"]) == ("milestone.reached", t + 5)
        assert m["data"] == {"sold": 1, "reward": "tote", "reached_ms": t + 5,
                             "order_id": f"{ev}.s0.abc"}
        so = got[f"{ev}:sold_out:s0"]
        assert so["type"] == "sku.sold_out"
        assert so["data"] == {"sku": "s0", "sold_out_ms": t + 7, "stock": 2}
        r.delete(keys.HOOKS_BODY)
        clock.t = e.ends_at_ms + 1000  # not settled yet
        await ps[0].tick()
        assert queued(r) == {}
        clock.t = e.ends_at_ms + 2000
        for _ in range(3):
            await asyncio.gather(*(p.tick() for p in ps))
        conn.close()

    asyncio.run(main())
    got = queued(r)
    assert sorted(got) == [f"{ev}:ended"]
    end = got[f"{ev}:ended"]
    assert end["type"] == "event.ended"
    d = end["data"]
    assert (d["units_sold"], d["registered"], d["goals"]) == (2, 3, {"units": 4})
    assert [(m["sold"], m["reached"]) for m in d["milestones"]] == [(1, True), (4, False)]
    assert [s["id"] for s in d["skus"]] == ["s0", "s1"]
    assert d["skus"][0]["sold_out_at_ms"] == t + 7


def test_events_without_a_webhook_url_produce_nothing(hooks_db):
    url, r = hooks_db
    t = now_ms()
    ev = new_id()

    async def main():
        conn = await connect(url)
        await define(conn, ev, event_body(starts=t - H, ends=t - 1000 - H // 2, reminders_s=[0]))
        r.hset(keys.registered(ev), "fan", t - 2 * H)
        r.set(keys.SkuKeys(ev, "s0").sold_out_ms, t - H)
        await Producers(conn, clock=Clock(t)).tick()
        conn.close()

    asyncio.run(main())
    assert queued(r) == {} and r.hlen(keys.notified(ev)) == 0


# -- the whole chain, in a real gateway -------------------------------------------------


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "webhook_secret"
    path.write_text(SECRET.decode() + "\n")
    path.chmod(0o600)
    return path


def test_a_gateway_sends_the_sale_s_notifications(hooks_db, secret_file, tmp_path):
    url, r = hooks_db
    recv = Receiver()
    gw = Gateway(url, tmp_path / "gw", workers=2,
                 extra=["--webhook-secret-file", str(secret_file),
                        "--webhook-retry-min", "0.05"]).start()
    try:
        text = "".join(gw.output)
        assert "webhooks: signed with the webhook secret" in text
        assert SECRET.decode() not in text
        ev = new_id()
        t = now_ms()
        body = event_body(stock=(2,), starts=t + 2500, ends=t + 6000, webhook_url=recv.url,
                          reminders_s=[1, 0], preheat_at_ms=t - 1000,
                          milestones=[{"sold": 2, "reward": "cup"}])
        gw.put_event(ev, body)
        for u in ("fan1", "fan2"):
            assert gw.request("POST", f"/api/v1/events/{ev}/register", None, gw.who(u))[0] == 200
        wait_for(lambda: len(recv.acknowledged()) >= 2, "the two reminders", timeout=8)
        gw.wait_state(ev, "live", timeout=5)
        acked = [gw.buy(ev, "s0", u)[1] for u in ("fan1", "fan2")]
        assert all(o.get("status") == "reserved" for o in acked), acked
        # the commit script recorded the milestone: the order that reached 2 units
        assert r.hget(keys.milestones(ev), "2").decode().endswith("|" + acked[1]["order_id"])
        wait_for(lambda: {x.json["type"] for x in recv.acknowledged()} >= {
            "reminder", "sku.sold_out", "milestone.reached", "event.ended"},
            "every notification of the sale", timeout=12)
        check_invariants(r, gw, ev, body, acked)
    finally:
        gw.stop()
        recv.close()
    by_type: dict[str, list] = {}
    for x in recv.acknowledged():
        assert verify(SECRET, x.body, x.headers["X-Flashgate-Signature"])
        by_type.setdefault(x.json["type"], []).append(x.json)
    assert sorted(x["id"] for x in by_type["reminder"]) == [f"{ev}:reminder:0:0",
                                                             f"{ev}:reminder:1:0"]
    assert all(sorted(x["data"]["users"]) == ["fan1", "fan2"] for x in by_type["reminder"])
    assert [x["id"] for x in by_type["sku.sold_out"]] == [f"{ev}:sold_out:s0"]
    assert [x["data"]["order_id"] for x in by_type["milestone.reached"]] == \
        [acked[1]["order_id"]]
    [end] = by_type["event.ended"]
    assert (end["data"]["orders"], end["data"]["units_sold"], end["data"]["registered"]) == \
        (2, 2, 2)
    ids = [x.json["id"] for x in recv.acknowledged()]
    assert len(ids) == len(set(ids))  # each once


def test_orders_are_notified_once_each_with_their_state(hooks_db, secret_file, tmp_path):
    """order.created, .paid, .cancelled and .expired of an event with a webhook URL, each
    once (id ``<order id>:<status>``), its data the order; an event without a URL
    notifies nothing. Two gateways (two notifiers) share the feed."""
    url, r = hooks_db
    recv = Receiver()
    extra = ["--webhook-secret-file", str(secret_file), "--webhook-retry-min", "0.05"]
    gws = [Gateway(url, tmp_path / f"gw{i}", workers=1, extra=extra).start() for i in (0, 1)]
    gw = gws[0]
    try:
        ev, quiet = new_id("hooked"), new_id("quiet")
        body = event_body(stock=(5,), limits=[1], webhook_url=recv.url, payment_timeout_s=1)
        gw.put_event(ev, body)
        quiet_body = event_body(stock=(5,))
        gw.put_event(quiet, quiet_body)
        gws[1].wait_state(ev, "live", timeout=5)  # the other instance: its next refresh
        acked = [gws[i % 2].buy(ev, "s0", f"u{i}")[1] for i in range(4)]
        assert all(o.get("status") == "reserved" for o in acked), acked
        quiet_acked = [gw.buy(quiet, "s0", "q1")[1]]
        a, b, c, d = (o["order_id"] for o in acked)
        assert gw.admin("POST", f"/api/v1/admin/orders/{a}/paid")[0] == 200
        assert gw.admin("POST", f"/api/v1/admin/orders/{b}/cancel")[0] == 200
        assert gw.admin("POST", f"/api/v1/admin/orders/{c}/paid")[0] == 200
        want = {f"{o}:created" for o in (a, b, c, d)} | {f"{a}:paid", f"{b}:cancelled",
                                                         f"{c}:paid", f"{d}:expired"}

        def orders_notified():
            return {x.json["id"] for x in recv.acknowledged()
                    if x.json["type"].startswith("order.")}

        wait_for(lambda: orders_notified() >= want, "every order's notifications", timeout=15)
        time.sleep(0.5)  # nothing more comes
        check_invariants(r, gw, ev, body, acked)
        check_invariants(r, gw, quiet, quiet_body, quiet_acked)
    finally:
        for g in gws:
            g.stop()
        recv.close()
    got = [x for x in recv.acknowledged() if x.json["type"].startswith("order.")]
    assert sorted(x.json["id"] for x in got) == sorted(want)  # each once, nothing else
    for x in got:
        assert verify(SECRET, x.body, x.headers["X-Flashgate-Signature"])
        n = x.json
        oid, _, kind = n["id"].rpartition(":")
        assert n["type"] == "order." + kind and n["event_id"] == ev
        assert n["data"]["order_id"] == oid and n["data"]["event_id"] == ev
        if kind != "created":  # a created order's data is the order when it was read
            assert n["data"]["status"] == kind, n


@pytest.mark.parametrize("args,env,words", [
    (["--webhook-secret", "x" * 31], {}, ["webhook secret is too short", "31 bytes"]),
    (["--webhook-secret-file", "/nonexistent/secret"], {}, ["cannot read the webhook secret"]),
    (["--webhook-secret-file", "{secret}"], {"FLASHGATE_WEBHOOK_SECRET": "y" * 40},
     ["give the webhook secret once"]),
    (["--webhook-retry-min", "5", "--webhook-retry-max", "1"], {},
     ["--webhook-retry-max must not be below"]),
    (["--webhook-concurrency", "0"], {}, ["--webhook-concurrency must be at least 1"]),
])
def test_serve_refuses_bad_webhook_settings(args, env, words, secret_file):
    args = [a.replace("{secret}", str(secret_file)) for a in args]
    out = flashgate("serve", "--dev", "--port", "0", *args, env=clean_env(**env))
    assert out.returncode == 2, out
    for w in words:
        assert w in out.stderr, out.stderr


def test_a_webhook_secret_flag_is_warned_of(redis_server, tmp_path):
    gw = Gateway(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", tmp_path / "gw", workers=1,
                 extra=["--webhook-secret", SECRET.decode()]).start()
    gw.stop()
    text = "".join(gw.output)
    assert "--webhook-secret is visible to every local user" in text
    assert SECRET.decode() not in text
    assert os.path.basename(__file__)  # (the gateway stopped cleanly: checked at teardown)


def test_deliveries_outlive_a_stopped_gateway(hooks_db, secret_file, tmp_path):
    """A gateway whose receiver fails is stopped (SIGTERM, a drain) with deliveries
    pending; the next gateway's notifier delivers each of them, once."""
    url, r = hooks_db
    up = {"ok": False}
    recv = Receiver(lambda n, body: 200 if up["ok"] else 500)
    flags = ["--webhook-secret-file", str(secret_file), "--webhook-retry-min", "0.05",
             "--webhook-retry-max", "0.2"]
    try:
        r.hset(keys.HOOKS_URLS, "evr", recv.url)

        async def enqueue():
            conn = await connect(url)
            got = await outbox.enqueue_many(
                conn, [("evr", "order.paid", {"i": i}, f"evr.s0.{i}:paid") for i in range(20)])
            conn.close()
            return got

        assert asyncio.run(enqueue()) == [outbox.ENQUEUED] * 20
        first = Gateway(url, tmp_path / "a", workers=1, extra=flags).start()
        wait_for(lambda: len({x.json["id"] for x in recv.received}) == 20, "first attempts")
        assert first.stop() == 0
        assert r.hlen(keys.HOOKS_BODY) == 20 and recv.acknowledged() == []
        up["ok"] = True
        second = Gateway(url, tmp_path / "b", workers=1, extra=flags).start()
        wait_for(lambda: len(recv.acknowledged()) >= 20, "the deliveries", timeout=10)
        time.sleep(0.3)
        second.stop()
    finally:
        recv.close()
    acked = sorted(x.json["id"] for x in recv.acknowledged())
    assert acked == sorted(f"evr.s0.{i}:paid" for i in range(20))
    assert r.hlen(keys.HOOKS_BODY) == 0
    for x in recv.received:
        assert verify(SECRET, x.body, x.headers["X-Flashgate-Signature"])
