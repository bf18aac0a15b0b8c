"""Webhook deliveries against a real redis-server and a real HTTP receiver: the
signature, retries with back-off against a receiver that fails then recovers, one
delivery per id after a 2xx, survival of a stopped sender, two senders never holding
one delivery at once, the give-up into the dead letters, and the enqueue API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import pytest

from flashgate.core import keys
from flashgate.webhooks import outbox
from flashgate.webhooks.sender import Sender, backoff_s
from flashgate.webhooks.signing import signature, verify
from tests.webhook_support import SECRET, Receiver, connect, run_sender


@pytest.fixture
def receiver():
    recv = Receiver()
    yield recv
    recv.close()


def test_signature_and_body_as_documented(hooks_db, receiver):
    url, r = hooks_db

    async def main():
        conn = await connect(url)
        r.hset(keys.HOOKS_URLS, "ev1", receiver.url)
        got = await outbox.enqueue(conn, "ev1", "milestone.reached",
                                   {"sold": 150, "reward": "tote"}, "ev1:milestone:150",
                                   ts_ms=1_764_000_000_000)
        assert got == outbox.ENQUEUED
        await run_sender(Sender(conn, SECRET), lambda: receiver.acknowledged())
        conn.close()

    asyncio.run(main())
    [rec] = receiver.received
    assert rec.headers["Content-Type"] == "application/json"
    assert rec.json == {"id": "ev1:milestone:150", "type": "milestone.reached",
                        "event_id": "ev1", "ts_ms": 1_764_000_000_000,
                        "data": {"sold": 150, "reward": "tote"}}
    header = rec.headers["X-Flashgate-Signature"]
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    # what a receiver does, by hand: HMAC-SHA256 over "<t>.<body>"
    want = hmac.new(SECRET, t.encode() + b"." + rec.body, hashlib.sha256).hexdigest()
    assert v1 == want and abs(int(t) - time.time() * 1000) < 10_000
    assert verify(SECRET, rec.body, header)
    assert not verify(b"another-secret-0123456789abcdef-0123", rec.body, header)
    assert not verify(SECRET, rec.body + b" ", header)  # the body as it came, byte for byte
    assert not verify(SECRET, rec.body, header, now_ms=int(t) + 600_000)  # a replay, later
    assert verify(SECRET, b"{}", signature(SECRET, b"{}", 5), now_ms=5)
    assert rec.headers["X-Flashgate-Delivery"] == "ev1:milestone:150"
    # delivered: nothing left in the outbox
    assert (r.zcard(keys.HOOKS_DUE), r.zcard(keys.HOOKS_LEASE), r.hlen(keys.HOOKS_BODY)) == (0, 0, 0)


def test_enqueue_once_per_id_and_only_with_a_webhook(hooks_db):
    url, r = hooks_db

    async def main():
        conn = await connect(url)
        assert await outbox.enqueue(conn, "ev2", "sku.sold_out", {}, "ev2:x") == outbox.NO_WEBHOOK
        assert r.zcard(keys.HOOKS_DUE) == 0 and r.zcard(keys.HOOKS_SEEN) == 0
        r.hset(keys.HOOKS_URLS, "ev2", "http://127.0.0.1:1/")
        assert await outbox.enqueue(conn, "ev2", "sku.sold_out", {"a": 1}, "ev2:x") == outbox.ENQUEUED
        assert await outbox.enqueue(conn, "ev2", "sku.sold_out", {"a": 2}, "ev2:x") == outbox.DUPLICATE
        # without an id: a fresh one each time
        assert await outbox.enqueue(conn, "ev2", "order.paid", {}) == outbox.ENQUEUED
        assert await outbox.enqueue(conn, "ev2", "order.paid", {}) == outbox.ENQUEUED
        for bad in (("nope", {}, None), ("order.paid", {}, ""), ("order.paid", {}, "x" * 201)):
            with pytest.raises(ValueError):
                await outbox.enqueue(conn, "ev2", *bad)
        # concurrent callers with one id: stored once
        got = await asyncio.gather(*(outbox.enqueue(conn, "ev2", "order.created", {"n": i},
                                                    "ev2:same") for i in range(20)))
        assert sorted(got).count(outbox.ENQUEUED) == 1
        assert await outbox.pending(conn) == {"due": 4, "in_flight": 0, "dead": 0}
        # the memory of ids is trimmed after its retention
        assert await outbox.forget_old(conn, int(time.time() * 1000)) == 0
        assert await outbox.forget_old(conn, int(time.time() * 1000) + outbox.SEEN_RETENTION_MS
                                       + 10_000) == 4
        conn.close()

    asyncio.run(main())
    assert b'"a":1' in r.hget(keys.HOOKS_BODY, "ev2:x")


def test_enqueue_many_in_one_round_trip(hooks_db):
    """A feed of orders enqueues a batch at once; ids seen before, and events without
    a webhook, store nothing; a Redis that forgot its scripts is no failure."""
    url, r = hooks_db

    async def main():
        conn = await connect(url)
        r.hset(keys.HOOKS_URLS, "evm", "http://127.0.0.1:1/")
        r.script_flush()
        items = [("evm", "order.created", {"order_id": f"evm.s0.{i}"}, f"evm.s0.{i}:created")
                 for i in range(50)]
        items += [("no-hooks", "order.created", {}, "x:created"), items[0]]
        got = await outbox.enqueue_many(conn, items)
        assert got == [outbox.ENQUEUED] * 50 + [outbox.NO_WEBHOOK, outbox.DUPLICATE]
        assert await outbox.enqueue_many(conn, items[:3]) == [outbox.DUPLICATE] * 3
        assert await outbox.enqueue_many(conn, []) == []
        with pytest.raises(ValueError):
            await outbox.enqueue_many(conn, [("evm", "order.shipped", {}, None)])
        conn.close()

    asyncio.run(main())
    assert r.zcard(keys.HOOKS_DUE) == 50
    assert json.loads(r.hget(keys.HOOKS_BODY, "evm.s0.7:created"))["data"] == {
        "order_id": "evm.s0.7"}


def test_a_failing_receiver_is_retried_with_backoff_until_it_acknowledges(hooks_db):
    """500, 500, a timeout, a dropped connection, 503: then 200. Delivered once after
    the 2xx, the delays between attempts growing."""
    url, r = hooks_db
    plan = [500, 500, ("sleep", 0.6, 500), "close", 503]
    recv = Receiver(lambda n, body: plan[n] if n < len(plan) else 200)
    try:
        async def main():
            conn = await connect(url)
            r.hset(keys.HOOKS_URLS, "ev3", recv.url)
            await outbox.enqueue(conn, "ev3", "event.ended", {"orders": 3}, "ev3:ended")
            sender = Sender(conn, SECRET, timeout=0.3, retry_min=0.05, retry_max=5, poll=0.01)
            await run_sender(sender, lambda: recv.acknowledged())
            await asyncio.sleep(0.5)  # nothing more comes
            conn.close()
            return sender

        sender = asyncio.run(main())
    finally:
        recv.close()
    got = recv.of("ev3:ended")
    assert len(got) == 6 and len(recv.acknowledged()) == 1
    assert [g.headers["X-Flashgate-Attempt"] for g in got] == ["1", "2", "3", "4", "5", "6"]
    assert sender.sent == 1 and sender.failed == 5
    # equal jitter: attempt n waits [d/2, d] with d = 0.05 * 2**(n-1) (the timeout
    # attempt's gap includes its 0.3 s)
    gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        d = 0.05 * 2 ** (n - 1) + (0.3 if n == 3 else 0)
        assert gap >= d / 2 - 0.01, (n, gaps)
    assert gaps[4] > gaps[0] * 2, gaps
    assert all(g.json == got[0].json for g in got)  # the same body every time
    assert (r.zcard(keys.HOOKS_DUE), r.hlen(keys.HOOKS_META), r.hlen(keys.HOOKS_DEAD)) == (0, 0, 0)


def test_backoff_grows_to_its_cap():
    lo = [backoff_s(n, 1.0, 300.0, rand=lambda: 0.0) for n in range(1, 12)]
    hi = [backoff_s(n, 1.0, 300.0, rand=lambda: 1.0) for n in range(1, 12)]
    assert lo[:4] == [0.5, 1.0, 2.0, 4.0] and hi[:4] == [1.0, 2.0, 4.0, 8.0]
    assert hi[-1] == 300.0 and lo[-1] == 150.0
    assert backoff_s(10_000, 1.0, 300.0) <= 300.0


def test_retry_after_is_honoured(hooks_db):
    url, r = hooks_db
    recv = Receiver(lambda n, body: 429 if n == 0 else 200)
    orig = recv.server.RequestHandlerClass.send_header

    def send_header(self, name, value):
        orig(self, name, value)
        if name == "Content-Length" and recv.received and recv.received[0].status == 429:
            orig(self, "Retry-After", "1")

    recv.server.RequestHandlerClass.send_header = send_header
    try:
        async def main():
            conn = await connect(url)
            r.hset(keys.HOOKS_URLS, "ev4", recv.url)
            await outbox.enqueue(conn, "ev4", "order.paid", {}, "ev4:o:paid")
            await run_sender(Sender(conn, SECRET, retry_min=0.01, poll=0.01),
                             lambda: recv.acknowledged())
            conn.close()

        asyncio.run(main())
    finally:
        recv.close()
    first, second = recv.of("ev4:o:paid")
    assert second.at - first.at >= 0.95


def test_a_stopped_sender_leaves_its_deliveries_to_the_next(hooks_db):
    """Deliveries pending (due, waiting for a retry, or in the hands of a sender that
    died) survive: a new sender on a new connection delivers each."""
    url, r = hooks_db
    up = {"ok": False}
    recv = Receiver(lambda n, body: 200 if up["ok"] else 500)
    try:
        async def first():
            conn = await connect(url)
            r.hset(keys.HOOKS_URLS, "ev5", recv.url)
            for i in range(30):
                await outbox.enqueue(conn, "ev5", "order.created", {"i": i}, f"ev5:{i}")
            sender = Sender(conn, SECRET, retry_min=0.05, poll=0.01)
            await run_sender(sender, lambda: len(recv.received) >= 30)
            # a sender that claims and dies before it answers: its leases run out
            claimed = await outbox.claim(conn, 5, lease_ms=300)
            conn.close()
            return [c.id for c in claimed]

        held = asyncio.run(first())
        assert r.hlen(keys.HOOKS_BODY) == 30 and len(recv.acknowledged()) == 0
        up["ok"] = True

        async def second():
            conn = await connect(url)
            await run_sender(Sender(conn, SECRET, retry_min=0.05, poll=0.01),
                             lambda: len(recv.acknowledged()) >= 30)
            conn.close()

        asyncio.run(second())
    finally:
        recv.close()
    acked = [a.json["id"] for a in recv.acknowledged()]
    assert sorted(acked) == sorted(f"ev5:{i}" for i in range(30))  # each once
    assert set(held) <= set(acked)
    assert r.hlen(keys.HOOKS_BODY) == 0 and r.zcard(keys.HOOKS_LEASE) == 0


def test_two_senders_never_hold_one_delivery_at_once(hooks_db):
    """Two senders (two connections, as two instances) share 300 deliveries to a slow
    receiver that fails a third of the first attempts: no id is ever in two requests
    at once, and each is acknowledged exactly once."""
    url, r = hooks_db
    seen: dict[bytes, int] = {}

    def behave(n, body):
        seen[body] = seen.get(body, 0) + 1
        time.sleep(0.005)
        return 500 if seen[body] == 1 and hash(body) % 3 == 0 else 200

    recv = Receiver(behave)
    try:
        async def main():
            a, b = await connect(url), await connect(url)
            r.hset(keys.HOOKS_URLS, "ev6", recv.url)
            for i in range(300):
                await outbox.enqueue(a, "ev6", "order.created", {"i": i}, f"ev6:{i}")
            s1 = Sender(a, SECRET, concurrency=8, retry_min=0.02, poll=0.005)
            s2 = Sender(b, SECRET, concurrency=8, retry_min=0.02, poll=0.005)
            t2 = asyncio.get_running_loop().create_task(s2.run())
            await run_sender(s1, lambda: len(recv.acknowledged()) >= 300, timeout=30)
            await s2.stop()
            await t2
            a.close()
            b.close()
            return s1, s2

        s1, s2 = asyncio.run(main())
    finally:
        recv.close()
    assert recv.overlaps == []
    acked = [x.json["id"] for x in recv.acknowledged()]
    assert sorted(acked) == sorted(f"ev6:{i}" for i in range(300))
    assert s1.sent > 0 and s2.sent > 0 and s1.sent + s2.sent == 300


def test_given_up_after_the_give_up_time_into_the_dead_letters(hooks_db, receiver):
    url, r = hooks_db
    dead_recv = Receiver(lambda n, body: 500)
    try:
        async def main():
            conn = await connect(url)
            r.hset(keys.HOOKS_URLS, "ev7", dead_recv.url)
            r.hset(keys.HOOKS_URLS, "ev7b", receiver.url)
            await outbox.enqueue(conn, "ev7", "sku.sold_out", {"sku": "s0"}, "ev7:sold_out:s0")
            await outbox.enqueue(conn, "ev7b", "sku.sold_out", {"sku": "s0"}, "ev7b:sold_out:s0")
            sender = Sender(conn, SECRET, retry_min=0.05, retry_max=0.1, give_up=0.5, poll=0.01)
            await run_sender(sender, lambda: r.hlen(keys.HOOKS_DEAD) == 1)
            dead = await outbox.dead_letters(conn)
            conn.close()
            return sender, dead

        sender, dead = asyncio.run(main())
    finally:
        dead_recv.close()
    [d] = dead
    assert d["id"] == "ev7:sold_out:s0" and d["event_id"] == "ev7"
    assert d["error"] == "HTTP 500" and d["attempts"] == len(dead_recv.received) >= 3
    assert d["dead_ms"] - d["enqueued_ms"] >= 400
    assert b'"sku":"s0"' in d["body"].encode()
    assert sender.dead == 1
    assert [x.json["id"] for x in receiver.acknowledged()] == ["ev7b:sold_out:s0"]
    assert r.zcard(keys.HOOKS_DUE) == 0 and r.hlen(keys.HOOKS_BODY) == 0


def test_a_delivery_of_an_event_without_a_url_now_is_dropped(hooks_db, receiver):
    url, r = hooks_db

    async def main():
        conn = await connect(url)
        r.hset(keys.HOOKS_URLS, "ev8", receiver.url)
        await outbox.enqueue(conn, "ev8", "order.paid", {}, "ev8:a")
        r.hdel(keys.HOOKS_URLS, "ev8")
        await run_sender(Sender(conn, SECRET, poll=0.01), lambda: r.hlen(keys.HOOKS_BODY) == 0)
        conn.close()

    asyncio.run(main())
    assert receiver.received == []


def test_stale_claims_cannot_decide(hooks_db):
    """A claim whose lease ran out and was claimed again cannot acknowledge or
    reschedule the delivery for the new holder."""
    url, r = hooks_db

    async def main():
        conn = await connect(url)
        r.hset(keys.HOOKS_URLS, "ev9", "http://127.0.0.1:1/")
        await outbox.enqueue(conn, "ev9", "order.paid", {}, "ev9:a")
        [old] = await outbox.claim(conn, 10, lease_ms=50)
        assert await outbox.claim(conn, 10, lease_ms=50) == []  # leased: nobody else
        await asyncio.sleep(0.1)
        [new] = await outbox.claim(conn, 10, lease_ms=60_000)
        assert (old.attempt, new.attempt) == (1, 2)
        assert await outbox.done(conn, old) is False
        assert await outbox.retry(conn, old, 0, 10_000, "x") == "stale"
        assert r.zscore(keys.HOOKS_LEASE, "ev9:a") is not None  # still the new holder's
        assert await outbox.done(conn, new) is True
        conn.close()

    asyncio.run(main())
    assert r.hlen(keys.HOOKS_META) == 0


def test_a_url_the_client_refuses_is_a_failure_like_any_other(hooks_db):
    """(Stored past the definition's check, e.g. by an older build): retried, then
    given up - never stuck in a lease."""
    url, r = hooks_db

    async def main():
        conn = await connect(url)
        r.hset(keys.HOOKS_URLS, "evu", "http://[::1/h")
        await outbox.enqueue(conn, "evu", "order.paid", {}, "evu:a")
        await run_sender(Sender(conn, SECRET, give_up=0, poll=0.01),
                         lambda: r.hlen(keys.HOOKS_DEAD) == 1)
        [d] = await outbox.dead_letters(conn)
        conn.close()
        return d

    d = asyncio.run(main())
    assert d["error"].startswith("InvalidURL") and r.zcard(keys.HOOKS_LEASE) == 0
