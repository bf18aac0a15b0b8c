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

With ``--commit-replicas N`` every flush ends with ``WAIT N timeout`` in the same
write: Redis answers it once N replicas acknowledged every write of this connection
so far (the flush's scripts among them), or at the timeout with the number that did.
The flush's replies are held (``_Gate``) until then: with N or more, they are
settled as above; with fewer (or an error, or a lost connection), the sales are
settled in the ledger (the master has them) but answered 503 (``UNREPLICATED``): not
known durable, never a 200. An Idempotency-Key's earlier order (REPLAY) was written
by another call, perhaps of another connection, that WAIT does not cover: a flush
with one is fenced once more, a ``PUBLISH`` (which every replica receives, and which
moves this connection's replication offset to the master's present one) and a
second ``WAIT``, before it is answered. Without ``--commit-replicas`` nothing of this
is on the path (no gate, no WAIT).

A reply whose sold reaches the stock is looked at once more: if this batch's sales
took sold from below the stock to it, this worker sold the last unit, and logs the
happening ``sold_out`` (once over every worker and instance: the script decides the
batches one after the other).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left

import hiredis

from flashgate.core import scripts
from flashgate.core._stock import Ledger
from flashgate.core.outcomes import SOLD, SOLD_TIERS, UNAVAILABLE
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway._buy import BuyPath, mono_us
from flashgate.gateway._commit import (
    answer_commit,
    answer_unreplicated,
    has_replay,
    pack_commit,
    reply_offsets,
)
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
# the channel of the fence's PUBLISH (no one listens: it only moves the replication
# offset, see the module's docstring)
FENCE_CHANNEL = b"fg:commit-fence"
SHORT_LOG_S = 5.0  # "replicas behind" is logged at most this often, with the count since


class _Reply:
    """The callback of one call's reply. An object, not a closure: a closure that
    re-sends itself (on NOSCRIPT) is a reference cycle, which kept every batch's
    purchases alive until the cyclic GC found them; this one is freed with its last
    reference."""

    __slots__ = ("committer", "srt", "items", "flight", "gate")

    def __init__(self, committer: Committer, srt: SkuRuntime, items: list, flight: list,
                 gate: _Gate | None):
        self.committer = committer
        self.srt = srt
        self.items = items
        self.flight = flight
        self.gate = gate  # --commit-replicas: the flush's WAIT decides the answers

    def __call__(self, reply) -> None:
        c = self.committer
        if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT"):
            # the script did not run: send it whole (after a Redis restart)
            whole = pack_commit(_HEAD_WHOLE, self.srt.commit_keys, self.items)
            if self.gate is None:
                c.conn.send_packed(whole, (self,))
            else:
                # the flush's WAIT was sent before this call: it needs a WAIT of its own
                gate = self.gate = _Gate(c, self.flight)
                self.flight[0] += 1
                c.conn.send_packed(whole + c.wait_cmd, (self, gate))
            return
        if self.gate is not None:
            self.gate.held.append((self.srt, self.items, reply))
            c.flight_done(self.flight)
            return
        try:
            c.settle(self.srt, self.items, reply)
        finally:
            c.flight_done(self.flight)


def _ignore(reply) -> None:
    pass


class _Gate:
    """The WAIT of one flush (--commit-replicas): its commit replies are held here, and
    answered when WAIT says how many replicas have them (see the module's docstring)."""

    __slots__ = ("committer", "flight", "held", "fenced")

    def __init__(self, committer: Committer, flight: list):
        self.committer = committer
        self.flight = flight
        self.held: list = []  # (srt, items, reply) of each call of the flush
        self.fenced = False

    def __call__(self, reply) -> None:
        c = self.committer
        try:
            durable = type(reply) is int and reply >= c.replicas
            if durable and not self.fenced and any(
                    has_replay(r, len(items)) for _, items, r in self.held):
                # an earlier order answered again: make sure the replicas have it too
                self.fenced = True
                self.flight[0] += 1
                c.conn.send_packed(c.fence_cmd, (_ignore, self))
                return
            held, self.held = self.held, []
            if durable:
                for srt, items, r in held:
                    c.settle(srt, items, r)
            else:
                c.short(reply, sum(c.settle(srt, items, r, unreplicated=True)
                                   for srt, items, r in held))
        finally:
            c.flight_done(self.flight)


class Committer:
    def __init__(self, path: BuyPath, ledger: Ledger, conn: RedisConnection,
                 runtimes: Runtimes, flights: int, replicas: int = 0,
                 replicas_timeout_ms: int = 1000):
        self.path = path
        self.ledger = ledger
        self.conn = conn
        self.runtimes = runtimes
        self.max_flights = flights
        # --commit-replicas: the WAIT that ends each flush (None: none), the fence
        self.replicas = replicas
        self.replicas_timeout_ms = replicas_timeout_ms
        self.wait_cmd = (hiredis.pack_command(("WAIT", replicas, replicas_timeout_ms))
                         if replicas > 0 else None)
        self.fence_cmd = (hiredis.pack_command((b"PUBLISH", FENCE_CHANNEL, b"")) + self.wait_cmd
                          if replicas > 0 else None)
        # sales answered 503 because WAIT said fewer than `replicas` replicas had them
        self.unreplicated = 0
        self._short = 0  # of them, not logged yet
        self._short_logged = float("-inf")
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
        gate = _Gate(self, flight) if self.wait_cmd is not None else None
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
                cbs.append(_Reply(self, srt, chunk, flight, gate))
        if gate is not None:
            cmds.append(self.wait_cmd)
            cbs.append(gate)
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

    def settle(self, srt: SkuRuntime, items: list, reply, unreplicated: bool = False) -> int:
        """Redis answered one batch: settle every reservation in the ledger exactly
        once and answer it, whatever the reply holds. ``unreplicated``: its WAIT fell
        short, the sales are answered 503 (returns how many)."""
        path = self.path
        path.queued -= len(items)
        held_back = 0
        if unreplicated:
            held_back = answer_unreplicated(self.ledger, srt, items, reply,
                                            answers.UNREPLICATED)
            ok = held_back >= 0
            held_back = max(0, held_back)
        else:
            ok = answer_commit(self.ledger, srt, items, reply, mono_us())
        if not ok:
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
        return held_back

    def short(self, reply, held_back: int) -> None:
        """A flush's WAIT said fewer replicas than --commit-replicas (``reply``: their
        number, or the error): its ``held_back`` sales were answered 503. Logged at most
        every SHORT_LOG_S seconds, with the sales held back since the last line."""
        self.unreplicated += held_back
        self._short += held_back
        now = time.monotonic()
        if now - self._short_logged < SHORT_LOG_S or not self._short:
            return
        self._short_logged = now
        acked = reply if type(reply) is int else f"none known ({reply})"
        happening(log, "replicas_behind",
                  f"{self._short} sales answered 503: {acked} of the {self.replicas} "
                  f"replicas asked for acknowledged their commit within "
                  f"{self.replicas_timeout_ms} ms", level=logging.WARNING,
                  replicas=self.replicas, acknowledged=reply if type(reply) is int else None,
                  sales=self._short, timeout_ms=self.replicas_timeout_ms)
        self._short = 0

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
