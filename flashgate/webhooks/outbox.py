"""The webhook outbox in Redis: what is to be sent, by whom, and what was given up.

Theory of operation
===================

1. **A delivery is enqueued once.** ``enqueue`` stores its JSON body under its
   delivery id and makes it due at once, in one script that first checks that the
   event has a ``webhook_url`` (``fg:{hooks}:urls``, written with the definition)
   and that the id was not enqueued before (``fg:{hooks}:seen``, kept
   ``SEEN_RETENTION_MS``): a producer that crashed after enqueueing and does it again,
   or two instances doing it at once, store it once.
2. **A claim is a lease.** A sender claims due deliveries with a script that moves
   each from ``due`` to ``lease`` (until now + the lease) and counts the attempt. No
   other sender can claim it while the lease runs; the lease is longer than the
   sender's whole attempt (its HTTP timeout plus a margin), so one delivery is never
   in two senders' hands at once. A lease that ran out (its sender died or stalled)
   makes the delivery due again: nothing is lost when an instance dies.
3. **The attempt number fences.** ``done`` (a 2xx, or a drop) and ``retry`` name the
   attempt of their claim; a sender whose lease ran out and whose delivery was
   claimed again cannot acknowledge or reschedule for the new holder.
4. **Failures back off, then give up.** ``retry`` makes the delivery due again after
   the sender's delay, or, when that would be later than the give-up time after it
   was enqueued, moves it to the dead letters (``fg:{hooks}:dead``: the body, the
   attempts, the last error) for the operator.

Every time here is Redis ``TIME``: the instances agree on leases and due times
whatever their clocks say. Every key carries the hash tag ``{hooks}``, so each script
runs on one Redis Cluster slot.
"""

from __future__ import annotations

import time
import uuid

import orjson

from flashgate.core import keys
from flashgate.core.redisconn import RedisConnection, RedisError
from flashgate.core.scripts import Script

# What a notification may be (API.md, Webhooks)
KINDS = ("reminder", "order.created", "order.paid", "order.cancelled", "order.expired",
         "milestone.reached", "sku.sold_out", "event.ended")
MAX_ID = 200  # characters of a delivery id
SEEN_RETENTION_MS = 7 * 24 * 3600 * 1000  # how long an id is remembered (no re-enqueue)

ENQUEUED, NO_WEBHOOK, DUPLICATE = "enqueued", "no_webhook", "duplicate"
_ENQUEUE_REPLIES = {1: ENQUEUED, 0: NO_WEBHOOK, -1: DUPLICATE}

ENQUEUE = Script("hooks_enqueue.lua")
CLAIM = Script("hooks_claim.lua")
DONE = Script("hooks_done.lua")
RETRY = Script("hooks_retry.lua")
REQUEUE = Script("hooks_requeue.lua")

_ENQUEUE_KEYS = [keys.HOOKS_URLS, keys.HOOKS_SEEN, keys.HOOKS_DUE, keys.HOOKS_BODY,
                 keys.HOOKS_META]
_CLAIM_KEYS = [keys.HOOKS_DUE, keys.HOOKS_LEASE, keys.HOOKS_BODY, keys.HOOKS_META,
               keys.HOOKS_URLS]
_DONE_KEYS = [keys.HOOKS_DUE, keys.HOOKS_LEASE, keys.HOOKS_BODY, keys.HOOKS_META]
_RETRY_KEYS = [keys.HOOKS_DUE, keys.HOOKS_LEASE, keys.HOOKS_BODY, keys.HOOKS_META,
               keys.HOOKS_DEAD]


def body(delivery_id: str, event_id: str, kind: str, data, ts_ms: int) -> bytes:
    """The JSON a notification POSTs (API.md): id, type, event_id, ts_ms, data."""
    return orjson.dumps({"id": delivery_id, "type": kind, "event_id": event_id,
                         "ts_ms": ts_ms, "data": data})


def _delivery_id(event_id: str, kind: str, delivery_id: str | None) -> str:
    """The id a notification is enqueued under (a fresh one for None); ValueError for
    an unknown kind or an id that is not one."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification type {kind!r}")
    if delivery_id is None:
        return f"{event_id}:{kind}:{uuid.uuid4().hex}"
    if not isinstance(delivery_id, str) or not 0 < len(delivery_id) <= MAX_ID:
        raise ValueError(f"a delivery id is a string of 1-{MAX_ID} characters")
    return delivery_id


async def enqueue(conn: RedisConnection, event_id: str, kind: str, data,
                  delivery_id: str | None = None, *, ts_ms: int | None = None) -> str:
    """Queue a notification of ``kind`` about ``event_id`` for its webhook. Returns
    ``ENQUEUED``; ``NO_WEBHOOK`` when the event has no ``webhook_url`` (nothing is
    stored); ``DUPLICATE`` when ``delivery_id`` was enqueued before (give a
    deterministic id, e.g. ``<order id>:paid``, and repeating the call is harmless).
    Without an id a fresh one is made. ``ts_ms`` (default: now) is the body's
    ``ts_ms``: when what it tells happened. Raises ValueError for an unknown kind, and
    RedisUnavailable / RedisError as any store call."""
    delivery_id = _delivery_id(event_id, kind, delivery_id)
    ts = time.time_ns() // 1_000_000 if ts_ms is None else ts_ms
    reply = await ENQUEUE.run(conn, _ENQUEUE_KEYS,
                              [delivery_id, event_id, body(delivery_id, event_id, kind, data, ts)])
    return _ENQUEUE_REPLIES[int(reply)]


async def enqueue_many(conn: RedisConnection, items) -> list[str]:
    """``enqueue`` of many notifications in one round trip (a pipeline):
    ``items`` are ``(event_id, kind, data, delivery_id)`` (``delivery_id`` None: a
    fresh one); returns each one's outcome, in order. For a feed of orders, whose
    ids make the delivery ids (``<order id>:<status>``)."""
    now = time.time_ns() // 1_000_000
    calls = []
    for event_id, kind, data, delivery_id in items:
        delivery_id = _delivery_id(event_id, kind, delivery_id)
        calls.append([delivery_id, event_id, body(delivery_id, event_id, kind, data, now)])
    if not calls:
        return []
    replies = await conn.pipeline([ENQUEUE.args(_ENQUEUE_KEYS, argv) for argv in calls])
    if any(isinstance(r, RedisError) and str(r).startswith("NOSCRIPT") for r in replies):
        await conn.execute("SCRIPT", "LOAD", ENQUEUE.source)  # (a restarted Redis)
        replies = await conn.pipeline([ENQUEUE.args(_ENQUEUE_KEYS, argv) for argv in calls])
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return [_ENQUEUE_REPLIES[int(r)] for r in replies]


class Claimed:
    """One claimed delivery: ``id``, ``body`` (bytes), ``url`` ("" if the event has none
    now), ``attempt`` (1 on the first), ``enqueued_ms``."""

    __slots__ = ("id", "body", "url", "attempt", "enqueued_ms")

    def __init__(self, row):
        self.id = row[0].decode()
        self.body = row[1]
        self.url = row[2].decode()
        self.attempt = int(row[3])
        self.enqueued_ms = int(row[4])


async def claim(conn: RedisConnection, limit: int, lease_ms: int) -> list[Claimed]:
    """Up to ``limit`` due deliveries, leased to the caller for ``lease_ms``."""
    if limit <= 0:
        return []
    rows = await CLAIM.run(conn, _CLAIM_KEYS, [limit, lease_ms])
    return [Claimed(row) for row in rows]


async def done(conn: RedisConnection, d: Claimed) -> bool:
    """The delivery is over (acknowledged, or dropped); False: the claim was stale."""
    return await DONE.run(conn, _DONE_KEYS, [d.id, d.attempt]) == 1


async def retry(conn: RedisConnection, d: Claimed, delay_ms: int, give_up_ms: int,
                error: str) -> str:
    """After a failed attempt: "retry" (due again in ``delay_ms``), "dead" (given up:
    moved to the dead letters), or "stale" (the claim ran out and was taken again)."""
    reply = await RETRY.run(conn, _RETRY_KEYS, [d.id, d.attempt, delay_ms, give_up_ms,
                                                error[:500]])
    return {1: "retry", 2: "dead"}.get(int(reply), "stale")


async def forget_old(conn: RedisConnection, now_ms: int) -> int:
    """Forget the ids enqueued longer ago than ``SEEN_RETENTION_MS``."""
    return int(await conn.execute("ZREMRANGEBYSCORE", keys.HOOKS_SEEN, "-inf",
                                  now_ms - SEEN_RETENTION_MS))


async def pending(conn: RedisConnection) -> dict[str, int]:
    """How many deliveries are due or waiting to be retried, in flight, and dead."""
    due, lease, dead = await conn.pipeline([["ZCARD", keys.HOOKS_DUE],
                                            ["ZCARD", keys.HOOKS_LEASE],
                                            ["HLEN", keys.HOOKS_DEAD]])
    return {"due": int(due), "in_flight": int(lease), "dead": int(dead)}


async def dead_letters(conn: RedisConnection) -> list[dict]:
    """Every delivery given up on: ``{"id", "event_id", "attempts", "enqueued_ms",
    "dead_ms", "error", "body"}``."""
    flat = await conn.execute("HGETALL", keys.HOOKS_DEAD)
    return sorted((orjson.loads(v) for v in flat[1::2]), key=lambda d: d["dead_ms"])


async def requeue_dead(conn: RedisConnection, ids=()) -> list[str]:
    """Queue dead letters again (``ids``; none: all of them), due at once, with their
    attempts and give-up time counted afresh; returns the ids queued."""
    got = await REQUEUE.run(conn, [keys.HOOKS_DEAD, keys.HOOKS_DUE, keys.HOOKS_BODY,
                                   keys.HOOKS_META], list(ids))
    return [i.decode() for i in got]
