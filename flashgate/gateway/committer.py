"""Group commit: the purchases of a loop turn leave for Redis together.

The purchase path (``_buy.BuyPath``) puts each admitted purchase in its SKU's batch
(the ledger holds the batches) and, for the first one of a loop turn, schedules
``Committer.flush``. A flush sends one commit script call per SKU batch (at most
``MAX_BATCH`` reservations a call), all pipelined in one write. At most
``--commit-flights`` flushes are in flight: under load the next batch leaves when
one comes back, so batches grow with the load instead of the writes (a lone request
on an idle worker still leaves at once).

A reply is settled by ``_commit.answer_commit`` (every reservation answered in C).
What it does not understand - a lost connection (indeterminate: answered 503; the
refresh tick re-reads what Redis really sold), an error reply, a reply of another
shape - is settled here: every reservation of the batch leaves the ledger and is
answered 503. ``NOSCRIPT`` (a restarted Redis) re-sends the call with the whole
script. Either way the SKU's parked requests then try again.

A reply whose sold reaches the stock is looked at once more: if this batch's sales
took sold from below the stock to it, this worker sold the last unit, and logs the
happening ``sold_out`` (once over every worker and instance: the script decides the
batches one after the other).
"""

from __future__ import annotations

import logging
from bisect import bisect_left

from flashgate.core import scripts
from flashgate.core._stock import Ledger
from flashgate.core.outcomes import SOLD, SOLD_TIERS, UNAVAILABLE
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway._buy import BuyPath, mono_us
from flashgate.gateway._commit import answer_commit, pack_commit, reply_offsets
from flashgate.gateway.runtime import Runtimes, SkuRuntime
from flashgate.logs import happening

log = logging.getLogger("flashgate.commit")

MAX_BATCH = 256  # reservations per commit script call
_HEAD = scripts.COMMIT.packed_head()
_HEAD_WHOLE = scripts.COMMIT.packed_head(whole=True)
# the metrics' histograms (gateway/metrics.py): upper bounds of the buckets, a last
# bucket beyond them; counted per commit call and per flush, never per request
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RTT_BOUNDS_US = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
                 500000, 1000000, 2500000)


class _Reply:
    """The callback of one call's reply. An object, not a closure: a closure that
    re-sends itself (on NOSCRIPT) is a reference cycle, which kept every batch's
    purchases alive until the cyclic GC found them; this one is freed with its last
    reference."""

    __slots__ = ("committer", "srt", "items", "flight")

    def __init__(self, committer: Committer, srt: SkuRuntime, items: list, flight: list):
        self.committer = committer
        self.srt = srt
        self.items = items
        self.flight = flight

    def __call__(self, reply) -> None:
        c = self.committer
        if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT"):
            # the script did not run: send it whole (after a Redis restart)
            c.conn.send_packed(pack_commit(_HEAD_WHOLE, self.srt.commit_keys, self.items),
                               (self,))
            return
        try:
            c.settle(self.srt, self.items, reply)
        finally:
            c.flight_done(self.flight)


class Committer:
    def __init__(self, path: BuyPath, ledger: Ledger, conn: RedisConnection,
                 runtimes: Runtimes, flights: int):
        self.path = path
        self.ledger = ledger
        self.conn = conn
        self.runtimes = runtimes
        self.max_flights = flights
        self.flights = 0  # flushes sent and not fully answered
        self._loop = None
        # commit calls by reservations per call, and their sum
        self.batches = [0] * (len(BATCH_BOUNDS) + 1)
        self.batched = 0
        # flushes by the time from their write to their last reply (µs), and its sum
        self.rtts = [0] * (len(RTT_BOUNDS_US) + 1)
        self.rtt_us = 0

    def bind(self, loop) -> None:
        self._loop = loop

    def flush(self) -> None:
        """Send every pending batch (the purchase path schedules this once per turn)."""
        path = self.path
        path.flush_scheduled = False
        if self.flights >= self.max_flights:
            return  # flight_done flushes again
        batches = self.ledger.take_batches()
        if not batches:
            return
        cmds = []
        cbs = []
        flight = [0, mono_us()]  # calls of this flush not answered yet, when it left
        skus = self.runtimes.skus
        counted = self.batches
        for idx, items in batches:
            srt = skus[idx]
            packed_keys = srt.commit_keys
            for i in range(0, len(items), MAX_BATCH):
                chunk = items[i:i + MAX_BATCH]
                counted[bisect_left(BATCH_BOUNDS, len(chunk))] += 1
                self.batched += len(chunk)
                cmds.append(pack_commit(_HEAD, packed_keys, chunk))
                cbs.append(_Reply(self, srt, chunk, flight))
        flight[0] = len(cmds)
        self.flights += 1
        self.conn.send_packed(b"".join(cmds), cbs)

    def flight_done(self, flight: list) -> None:
        flight[0] -= 1
        if flight[0] == 0:
            self.flights -= 1
            rtt = mono_us() - flight[1]
            self.rtts[bisect_left(RTT_BOUNDS_US, rtt)] += 1
            self.rtt_us += rtt
            path = self.path
            if not path.flush_scheduled:
                path.flush_scheduled = True
                self._loop.call_soon(self.flush)

    def settle(self, srt: SkuRuntime, items: list, reply) -> None:
        """Redis answered one batch: settle every reservation in the ledger exactly
        once and answer it, whatever the reply holds."""
        path = self.path
        path.queued -= len(items)
        if not answer_commit(self.ledger, srt, items, reply, mono_us()):
            # a lost connection (indeterminate: 503), an error, or a reply we cannot read
            if not isinstance(reply, RedisUnavailable):
                log.error("commit of %d reservations failed: %.200r", len(items), reply)
            ledger = self.ledger
            idx = srt.idx
            for p in items:
                ledger.settle(idx, p.user, p.held, 0)
                if not p.fut.done():
                    p.fut.set_result(answers.UNAVAILABLE)
            srt.ert.add(UNAVAILABLE, len(items))
        elif type(reply[0]) is int and type(reply[1]) is int and reply[0] >= reply[1]:
            self._sold_out(srt, items, reply)
        path.retry_waiters(srt)

    def _sold_out(self, srt: SkuRuntime, items: list, reply: list) -> None:
        """Log ``sold_out`` if this batch's sales took sold up to the stock (the
        reply has the script's shape: answer_commit read it)."""
        sold, stock = reply[0], reply[1]
        units = 0
        for p, at in zip(items, reply_offsets(reply, len(items)) or (), strict=False):
            if reply[at] == SOLD or reply[at] == SOLD_TIERS:
                units += p.qty
        if units and sold - units < stock:
            happening(log, "sold_out", f"{srt.event_id}/{srt.sku.id} sold out: {sold} units",
                      event_id=srt.event_id, sku=srt.sku.id, sold=sold, stock=stock)
