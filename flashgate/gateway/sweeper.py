"""Payment timeouts: a reserved order not paid by its ``pay_by_ms`` becomes expired,
and its units return to the sale while the sale is open.

Theory of operation: every SKU's ``orders`` stream lists its orders in commit order
(``created`` entries; core/orders.py), and an order's deadline is its commit time plus
the event's payment timeout, so the orders come due in stream order. The sweeper
keeps, per SKU, a cursor in that stream: the entries before it hold no reserved order
that is not yet due. Each pass reads on from the cursor: an entry younger than the
shortest payment timeout (1 s) ends the pass; for an older one it reads the entry's
records, and asks the transition script (lua/transition.lua, action ``expire``) to
expire those that are reserved and due. An entry with an order still reserved and not
due stops the cursor there, and the SKU is not read again before that order's
deadline. The script decides by Redis's own clock, so a sweep racing a payment, or
two sweepers (one per instance), never expire an order twice or a paid one at all.

One worker per instance sweeps (worker 0). The cursors live in its memory: a restarted
sweeper reads each stream from its start again, once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from flashgate.core import orders, store
from flashgate.core.redisconn import RedisError, RedisUnavailable

log = logging.getLogger("flashgate.sweeper")

SWEEP_INTERVAL_S = 0.5  # between passes (--sweep-interval)
ENTRIES_PER_READ = 200  # stream entries per XRANGE
MIN_TIMEOUT_MS = 1000  # the shortest payment timeout (core/events.py: 1 s)


class Sweeper:
    def __init__(self, conn, runtimes, refresher, now_ms):
        self.conn = conn
        self.runtimes = runtimes
        self.refresher = refresher
        self.now_ms = now_ms  # () -> this worker's clock, set to Redis's (ms)
        # per SKU (its keys' prefix): (the stream id the next read starts after, the
        # earliest time the SKU can hold a due order)
        self.cursors: dict[str, tuple[str, int]] = {}
        self.expired = 0  # orders this sweeper expired
        self._said: dict[str, float] = {}  # SKU -> when its last failure was logged

    async def run(self, interval: float = SWEEP_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.conn.connected:
                continue
            try:
                await self.sweep()
            except Exception:  # (sweep() logs each SKU's failure; this is the last guard)
                log.exception("sweep failed")

    async def sweep(self) -> int:
        """One pass over every SKU; returns the orders it expired. A SKU that fails
        (Redis, or an entry that cannot be read) is logged and skipped for this pass:
        it never keeps the SKUs after it from being swept."""
        n = 0
        for srt in self.runtimes.all_skus():
            try:
                n += await self.sweep_sku(srt)
            except (RedisUnavailable, RedisError) as e:
                self._failed(srt, f"Redis: {e}", exc_info=False)
            except Exception:  # a bug here must not stop the expiries for good
                self._failed(srt, "an unexpected error", exc_info=True)
        return n

    def _failed(self, srt, why: str, *, exc_info: bool) -> None:
        # at most one line per SKU every 10 s: a lasting failure is seen, not a flood
        now = time.monotonic()
        key = srt.keys.prefix
        if now - self._said.get(key, float("-inf")) >= 10.0:
            self._said[key] = now
            log.warning("sweeper: a pass over %s failed (%s); its unpaid orders wait for "
                        "the next pass", srt.keys.orders, why, exc_info=exc_info)

    async def sweep_sku(self, srt) -> int:
        k = srt.keys
        now = self.now_ms()
        cursor, wake = self.cursors.get(k.prefix, ("0-0", 0))
        if now < wake:
            return 0
        done = 0
        while True:
            entries = await self.conn.execute("XRANGE", k.orders, "(" + cursor, "+",
                                              "COUNT", ENTRIES_PER_READ)
            for entry_id, fields in entries:
                kind, ts, found = orders.stream_orders(fields)
                if kind != "created" or not found:
                    cursor = entry_id.decode()
                    continue
                if ts > now - MIN_TIMEOUT_MS:
                    self.cursors[k.prefix] = (cursor, ts + MIN_TIMEOUT_MS)
                    return self._done(srt, done)
                ids = [o[0] for o in found]
                due, wait = [], None
                for i in range(0, len(ids), store.MAX_TRANSITION_IDS):
                    chunk = ids[i:i + store.MAX_TRANSITION_IDS]
                    records = await self.conn.execute("HMGET", k.order_by_id, *chunk)
                    for oid, raw in zip(chunk, records, strict=True):
                        d = orders.from_record(oid, raw)
                        if d is None or d["status"] != "reserved":
                            continue
                        if d["pay_by_ms"] <= now:
                            due.append(oid)
                        else:
                            wait = d["pay_by_ms"] if wait is None else min(wait, d["pay_by_ms"])
                for i in range(0, len(due), store.MAX_TRANSITION_IDS):
                    _, got = await store.transition(self.conn, srt.event_id, srt.sku.id,
                                                    "expire", due[i:i + store.MAX_TRANSITION_IDS])
                    done += sum(outcome == "done" for outcome, _ in got)
                    if any(outcome == "not_due" and o is not None and o["status"] == "reserved"
                           for outcome, o in got):
                        wait = now + MIN_TIMEOUT_MS  # (clocks differ a little: again soon)
                if wait is not None:
                    self.cursors[k.prefix] = (cursor, wait)
                    return self._done(srt, done)
                cursor = entry_id.decode()
            if len(entries) < ENTRIES_PER_READ:
                # the stream is read: what is committed from now on is due in a second
                # at the earliest
                self.cursors[k.prefix] = (cursor, now + MIN_TIMEOUT_MS)
                return self._done(srt, done)

    def _done(self, srt, n: int) -> int:
        if n:
            self.expired += n
            # units came back: this worker serves them now, the others on their tick
            self.refresher.read_counts([srt])
        return n
