"""The producers of the notifications that come from time and totals, not from an
order: ``reminder``, ``milestone.reached``, ``sku.sold_out``, ``event.ended``.

Every instance with a webhook secret runs them (service.py), each ``tick`` looking
at every event that has a ``webhook_url``; each notification is enqueued exactly once
over all of them:

* its delivery id is deterministic (``<event>:reminder:<offset>:<batch>``,
  ``<event>:milestone:<sold>``, ``<event>:sold_out:<sku>``, ``<event>:ended``), and the
  outbox enqueues an id once (outbox.py);
* once enqueued it is marked in the event's ``notified`` hash (keys.notified), so no
  producer looks at it again (the outbox's memory of ids is kept 7 days; the marks
  are kept as long as the event).

Reminders. The one at offset ``s`` is due at ``starts_at_ms - s * 1000``. A producer
that finds it due claims it (lua/reminder_claim.lua: one producer at a time, a lease
taken over if its holder dies), reads the registered users up to the claim's cutoff,
sorted by (registration time, user), and enqueues them ``batch`` at a time; then marks
it done. A reminder found due more than ``grace_ms`` after its time (the event was
created or changed after it, or no instance ran then) is skipped, not sent late:
an event created 3 hours before its start gets no 6-hour reminder, and one created
within the grace after its start still gets the one "at the start" (offset 0). An
event with no registered user at an offset sends nothing for it.

Milestones, sold out: from the keys the commit script writes (``milestones(event)``:
threshold -> ``<reached_ms>|<order id>``; a SKU's ``sold_out_ms``), each once.
``event.ended``: once the clock passes ``ends_at_ms`` plus ``settle_ms`` (commits
decided before the end have landed), with the totals.

Their clock is Redis ``TIME`` (read once per tick), so the instances agree on when a
reminder is due and when a claim's lease ran out; ``clock`` (a callable giving ms)
replaces it, so tests run reminders at their offsets without waiting.
"""

from __future__ import annotations

import asyncio
import logging

from flashgate.core import keys, store
from flashgate.core.events import Event
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.core.scripts import Script
from flashgate.webhooks import outbox

log = logging.getLogger("flashgate.webhooks")

REMINDER_CLAIM = Script("reminder_claim.lua")


class Producers:
    def __init__(self, conn, *, clock=None, batch: int = 500, grace_ms: int = 300_000,
                 settle_ms: int = 2000, claim_lease_ms: int = 60_000):
        self.conn = conn
        self.clock = clock  # None: Redis TIME
        self.batch = batch
        self.grace_ms = grace_ms
        self.settle_ms = settle_ms
        self.claim_lease_ms = claim_lease_ms
        self._version: int | None = None
        self.events: list[Event] = []
        self._finished: set[tuple[str, int]] = set()  # (event, ends_at_ms) with "ended" sent

    async def run(self, interval: float = 0.5) -> None:
        said = float("-inf")
        while True:
            try:
                await self.tick()
            except (RedisUnavailable, RedisError) as e:
                now = asyncio.get_running_loop().time()
                if now - said >= 10.0:  # once in a while, not at every tick
                    log.warning("webhooks: producers cannot read Redis: %s", e)
                    said = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhooks: a producer failed")
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        """Enqueue whatever became due since the last tick."""
        version = int(await self.conn.execute("GET", keys.VERSION) or 0)
        if version != self._version:
            _, self.events = await store.load_events(self.conn)
            self._version = version
        now = self.clock() if self.clock is not None else await store.redis_time_ms(self.conn)
        for ev in self.events:
            if ev.webhook_url and (ev.id, ev.ends_at_ms) not in self._finished:
                await self._event(ev, now)

    async def _event(self, ev: Event, now: int) -> None:
        sku_keys = [keys.SkuKeys(ev.id, s.id) for s in ev.skus]
        replies = await self.conn.pipeline(
            [["HGETALL", keys.notified(ev.id)], ["HGETALL", keys.milestones(ev.id)]]
            + [["MGET", k.sold_out_ms, k.stock] for k in sku_keys])
        for r in replies:
            if isinstance(r, Exception):
                raise r
        notified = _pairs(replies[0])
        for offset in ev.reminders_s:
            state = notified.get(f"reminder:{offset}")
            if state is None or state.startswith("pending|"):
                await self._reminder(ev, offset, now, state is not None)
        reward = dict(ev.milestones)
        for sold_b, value in sorted(_pairs(replies[1]).items(), key=lambda x: int(x[0])):
            what = f"milestone:{sold_b}"
            if what in notified:
                continue
            reached_ms, _, order_id = value.partition("|")
            sold = int(sold_b)
            await self._once(ev, what, "milestone.reached", {
                "sold": sold, "reward": reward.get(sold), "reached_ms": int(reached_ms),
                "order_id": order_id or None}, int(reached_ms))
        for s, (sold_out_ms, stock) in zip(ev.skus, replies[2:], strict=True):
            what = f"sold_out:{s.id}"
            if sold_out_ms is None or what in notified:
                continue
            await self._once(ev, what, "sku.sold_out", {
                "sku": s.id, "sold_out_ms": int(sold_out_ms), "stock": int(stock or 0)},
                int(sold_out_ms))
        if now >= ev.ends_at_ms + self.settle_ms:
            if "ended" not in notified:
                await self._once(ev, "ended", "event.ended", await event_totals(self.conn, ev),
                                 ev.ends_at_ms)
            self._finished.add((ev.id, ev.ends_at_ms))

    async def _once(self, ev: Event, what: str, kind: str, data, ts_ms: int) -> None:
        """Enqueue one notification (its id: ``<event>:<what>``), then mark it."""
        outcome = await outbox.enqueue(self.conn, ev.id, kind, data, f"{ev.id}:{what}",
                                       ts_ms=ts_ms)
        if outcome == outbox.NO_WEBHOOK:
            return  # the URL was removed since the definitions were read: not now
        await self.conn.execute("HSET", keys.notified(ev.id), what, f"done|{ts_ms}|{outcome}")
        log.info("webhooks: %s of %s enqueued", kind, ev.id)

    async def _reminder(self, ev: Event, offset: int, now: int, pending: bool) -> None:
        """``pending``: a producer claimed it and has not finished (it may have died:
        its claim is taken over once its lease ran out, whatever the grace says)."""
        at = ev.starts_at_ms - offset * 1000
        if now < at:
            return
        what = f"reminder:{offset}"
        if not pending and now - at > self.grace_ms:
            if await self.conn.execute("HSETNX", keys.notified(ev.id), what,
                                       f"skipped|{now}|{at}"):
                log.info("webhooks: the reminder %d s before %s is %d s past: skipped",
                         offset, ev.id, (now - at) // 1000)
            return
        cutoff = await REMINDER_CLAIM.run(self.conn, [keys.notified(ev.id)],
                                          [what, now, self.claim_lease_ms])
        if cutoff is None:
            return  # another producer has it
        cutoff = int(cutoff)
        users: dict[str, int] = {}
        async for page in store.registrations(self.conn, ev.id):
            users.update(page)
        ordered = [u for u, ms in sorted(users.items(), key=lambda x: (x[1], x[0]))
                   if ms <= cutoff]
        batches = [ordered[i:i + self.batch] for i in range(0, len(ordered), self.batch)]
        for i, chunk in enumerate(batches):
            outcome = await outbox.enqueue(
                self.conn, ev.id, "reminder",
                {"starts_at_ms": ev.starts_at_ms, "offset_s": offset, "batch": i,
                 "batches": len(batches), "users": chunk},
                f"{ev.id}:reminder:{offset}:{i}", ts_ms=now)
            if outcome == outbox.NO_WEBHOOK:  # removed meanwhile: leave it unclaimed
                await self.conn.execute("HDEL", keys.notified(ev.id), what)
                return
        await self.conn.execute("HSET", keys.notified(ev.id), what,
                                f"done|{cutoff}|{len(ordered)}|{len(batches)}")
        log.info("webhooks: reminder %d s before %s: %d users in %d notifications",
                 offset, ev.id, len(ordered), len(batches))


def _pairs(flat) -> dict[str, str]:
    it = iter(flat)
    return {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}


async def event_totals(conn, ev: Event) -> dict:
    """The figures of ``event.ended``: units, orders and revenue, created and paid, per
    SKU and in all; registrations; the milestones reached."""
    skus = await store.sku_totals(conn, ev)
    cmds = []
    for s in ev.skus:
        k = keys.SkuKeys(ev.id, s.id)
        cmds.append(["MGET", k.units_paid, k.revenue_paid, k.sold_out_ms])
    cmds += [["HLEN", keys.registered(ev.id)], ["HGETALL", keys.milestones(ev.id)]]
    replies = await conn.pipeline(cmds)
    for r in replies:
        if isinstance(r, Exception):
            raise r
    for s, (paid, rev_paid, so) in zip(skus, replies[:len(ev.skus)], strict=True):
        s["units_paid"] = int(paid or 0)
        s["revenue_paid"] = int(rev_paid or 0)
        s["sold_out_at_ms"] = int(so) if so else None
    reached = _pairs(replies[-1])
    return {
        "starts_at_ms": ev.starts_at_ms, "ends_at_ms": ev.ends_at_ms,
        "orders": sum(s["orders"] for s in skus),
        "units_sold": sum(s["sold"] for s in skus),
        "units_paid": sum(s["units_paid"] for s in skus),
        "revenue": sum(s["revenue"] for s in skus),
        "revenue_paid": sum(s["revenue_paid"] for s in skus),
        "registered": int(replies[-2] or 0),
        "milestones": [{"sold": n, "reward": r, "reached": str(n) in reached,
                        "reached_ms": int(reached[str(n)].split("|")[0])
                        if str(n) in reached else None} for n, r in ev.milestones],
        "goals": dict(ev.goals),
        "skus": skus,
    }

