"""The orders' notifications: ``order.created``, ``order.paid``, ``order.cancelled`` and
``order.expired``.

The orders streams of every event that has a ``webhook_url`` are followed through a
consumer group of their own (``flashgate-webhooks``; core/follow.py), so the
notifiers of every instance share the work and one that dies leaves its entries to
the next. Each order an entry names is enqueued (outbox.enqueue_many, one pipeline
per batch) with the delivery id ``<order id>:<status>``: the outbox takes an id once,
so an entry delivered twice (a notifier that died before its acknowledgement) is
notified once. The entries are acknowledged only once the outbox has them.

``data`` is the order as the API shows it when the entry is read: an
``order.created`` read after the payment already says ``"status": "paid"`` (the
``order.paid`` that follows says it too); the type says what happened, the order
what it is now. Events without a webhook URL are not followed at all: their orders
cost the notifier nothing.
"""

from __future__ import annotations

import asyncio
import logging

from flashgate.core.follow import OrderFollower
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.webhooks import outbox

log = logging.getLogger("flashgate.webhooks")

GROUP = "flashgate-webhooks"
KINDS = {"created": "order.created", "paid": "order.paid", "cancelled": "order.cancelled",
         "expired": "order.expired"}


def notifications(batch) -> list[tuple[str, str, dict, str]]:
    """The outbox items (event id, type, order, delivery id) of a batch of entries."""
    items = []
    for entry in batch.entries:
        kind = KINDS.get(entry.kind)
        if kind is None:
            continue
        for order in entry.orders:
            items.append((entry.event_id, kind, order, f"{order['order_id']}:{entry.kind}"))
    return items


class OrderFeed:
    """Follows the orders of the events with a webhook URL into the outbox. ``url``:
    Redis, on a connection of the feed's own (its reads block)."""

    def __init__(self, url: str, *, claim_idle_ms: int = 30_000, block_ms: int = 500):
        self.url = url
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.enqueued = 0
        self.follower: OrderFollower | None = None

    async def run(self) -> None:
        conn = RedisConnection(self.url, command_timeout=self.block_ms / 1000 + 5.0,
                               happenings=False)  # (the notifier's own connection says them)
        await conn.connect()
        self.follower = f = OrderFollower(
            conn, group=GROUP, claim_idle_ms=self.claim_idle_ms, block_ms=self.block_ms,
            select=lambda ev: bool(ev.webhook_url))
        try:
            while not f.stopping:
                try:
                    async for batch in f.batches():
                        items = notifications(batch)
                        if items:
                            await outbox.enqueue_many(conn, items)
                            self.enqueued += len(items)
                        await f.ack(batch)
                except (RedisUnavailable, RedisError, OSError) as e:
                    # nothing acknowledged is lost: the entries stay pending and come
                    # again (to this consumer or, after claim_idle_ms, to another)
                    log.warning("notifier: the order feed lost Redis (%s); again in 1 s", e)
                    if not conn.connected:
                        conn.start_reconnecting()
                    await asyncio.sleep(1.0)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
