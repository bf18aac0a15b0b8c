"""What a worker learns from Redis besides its own commit replies.

Every ``--refresh-interval`` (0.1 s) the refresher reads, in one pipelined write:
Redis ``TIME`` (this host's clock is checked against it: beyond
``--max-clock-skew-ms`` the worker refuses to sell), the definitions' version
(``fg:events:version``, bumped by every change of any definition: a new version
reloads them all), and every SKU's stock and sold (so the sold-out flag and the
public ``left`` follow what other workers and instances sell); then the reached
milestones of each event that has some not yet reached (one HGETALL of a small hash
per such event; none once all are reached: a milestone stays reached), for the event
view served from memory.

Replies are applied by callbacks, in wire order with the commit replies on the same
connection: a refresh never overwrites what a later commit reported.

A milestone newly read as reached whose sale (its order id, which carries the worker's
boot id) this worker made is logged as the happening ``milestone_reached``: once over
every worker and instance, by the worker that made the sale, on its next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time

from flashgate.core import keys, store
from flashgate.core._stock import Ledger
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.gateway._buy import BuyPath
from flashgate.gateway.runtime import EventRuntime, Runtimes, SkuRuntime
from flashgate.logs import happening

log = logging.getLogger("flashgate.refresh")

_now_ns = time.time_ns


class Refresher:
    def __init__(self, conn: RedisConnection, ledger: Ledger, path: BuyPath,
                 runtimes: Runtimes, on_events, *, max_clock_skew_ms: int):
        self.conn = conn
        self.ledger = ledger
        self.path = path
        self.runtimes = runtimes
        self.on_events = on_events  # called after every reload (the router's routes)
        self.max_clock_skew_ms = max_clock_skew_ms
        self.version = -1  # of the definitions loaded
        self.loaded = False
        # the load running, and the number of the last call it answers
        self._reloading: tuple[asyncio.Future, int] | None = None
        self._asked = 0  # calls of reload() so far

    def forget(self) -> None:
        """Reload everything on the next tick (after a reconnect: whatever happened
        while this worker was away)."""
        self.version = -1

    async def reload(self) -> int:
        """Load every definition as Redis holds them now; returns the version loaded.
        Calls that come while a load runs share the next one: a load that began
        before a call may have read the definitions before the change the caller
        knows of, so it does not answer that call."""
        self._asked += 1
        mine = self._asked
        while self._reloading is not None:
            running, covers = self._reloading
            try:
                version = await asyncio.shield(running)
            except Exception:
                if covers >= mine:  # the load that failed was meant for this call too
                    raise
                continue
            if covers >= mine:
                return version
        fut = asyncio.get_running_loop().create_future()
        self._reloading = (fut, self._asked)  # this load answers every call made so far
        try:
            version, events = await store.load_events(self.conn)
            self.runtimes.apply(events)
            # every SKU's stock and sold before the new definitions are served (a change
            # of stock is the configure script's, in Redis)
            await self.read_counts(self.runtimes.all_skus())
            self.on_events(self.runtimes)
            self.version = version
            self.loaded = True
            fut.set_result(version)
            return version
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # (retrieved: the other waiters see it too)
            raise
        finally:
            self._reloading = None

    def read_counts(self, skus: list[SkuRuntime]) -> asyncio.Future:
        """Read the SKUs' stock and sold; the Future resolves when all are applied."""
        done = asyncio.get_running_loop().create_future()
        if not skus:
            done.set_result(None)
            return done
        left = [len(skus)]

        def applier(srt):
            def apply(reply):
                try:
                    if isinstance(reply, list):
                        self.returned(srt, int(reply[2] or 0))
                        self.observe(srt, int(reply[0] or 0), int(reply[1] or 0))
                finally:
                    left[0] -= 1
                    if not left[0] and not done.done():
                        done.set_result(None)
            return apply

        self.conn.send_many([["MGET", s.keys.stock, s.keys.sold, s.keys.returned] for s in skus],
                            [applier(s) for s in skus])
        return done

    async def read_milestones(self) -> None:
        """Read the reached milestones of every event that has one not reached yet."""
        erts = [ert for ert in self.runtimes.events.values()
                if any(n not in ert.reached for n, _ in ert.event.milestones)]
        if not erts:
            return
        try:
            replies = await self.conn.pipeline([["HGETALL", keys.milestones(ert.event.id)]
                                                for ert in erts])
        except (RedisUnavailable, RedisError):
            return
        for ert, reply in zip(erts, replies, strict=True):
            if isinstance(reply, list):
                reached = store.parse_milestones(reply)
                if len(reached) > len(ert.reached):
                    self._reached(ert, reached)
                ert.reached = reached

    def _reached(self, ert: EventRuntime, reached: dict[int, tuple[int, str]]) -> None:
        """Log the milestones newly in ``reached`` whose sale this worker made."""
        boot = self.runtimes.boot
        rewards = dict(ert.event.milestones)
        for sold, (reached_ms, order_id) in sorted(reached.items()):
            # an order id: <event>.<sku>.<boot id of the worker that made it><sequence>
            if sold in ert.reached or not order_id[order_id.rfind(".") + 1:].startswith(boot):
                continue
            happening(log, "milestone_reached",
                      f"event {ert.event.id} reached {sold} units sold: {rewards.get(sold)}",
                      event_id=ert.event.id, sold=sold, reward=rewards.get(sold),
                      order_id=order_id, reached_ms=reached_ms)

    def observe(self, srt: SkuRuntime, stock: int, sold: int) -> None:
        old_stock, old_sold, _, _ = self.ledger.state(srt.idx)
        self.ledger.observe(srt.idx, sold, stock)  # (units that came back: see observe)
        if (sold != old_sold or stock != old_stock) and srt.waiters:
            self.path.retry_waiters(srt)

    def returned(self, srt: SkuRuntime, returned: int) -> None:
        """The SKU's units given back so far (cancelled and expired orders; they only
        grow). When they grew since the last read, a buyer whose order ended may buy
        again: the local buyer table may be too strict, and is dropped (Redis's limit
        check stands in), even if sales made ``sold`` grow back meanwhile."""
        if srt.returned < returned:
            if srt.returned >= 0:
                self.ledger.forget_buyers(srt.idx)
            srt.returned = returned

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # a bug here must not stop learning what Redis knows
                log.exception("refresh failed")

    async def tick(self) -> None:
        if not self.conn.connected:
            return
        t0 = _now_ns()
        try:
            now, version = await self.conn.pipeline([["TIME"], ["GET", keys.VERSION]])
        except (RedisUnavailable, RedisError):
            return
        t1 = _now_ns()
        if isinstance(now, list) and t1 - t0 < 100_000_000:
            # a sample that took long says nothing of the clocks: skip it
            self._clock(int(now[0]) * 1000 + int(now[1]) // 1000 - (t0 + t1) // 2_000_000)
        # (both sent before either reply is awaited: one round trip)
        await asyncio.gather(self.read_counts(self.runtimes.all_skus()), self.read_milestones())
        if not isinstance(version, Exception) and int(version or 0) != self.version:
            try:
                await self.reload()
            except (RedisUnavailable, RedisError) as e:
                log.warning("cannot reload events: %s", e)

    def _clock(self, offset_ms: int) -> None:
        path = self.path
        path.clock_offset_ms = offset_ms
        ok = abs(offset_ms) <= self.max_clock_skew_ms
        if ok != path.clock_ok:
            if ok:
                log.warning("clock back within %d ms of Redis", self.max_clock_skew_ms)
            else:
                log.error("clock differs from Redis TIME by %d ms: refusing to sell", offset_ms)
        path.clock_ok = ok
