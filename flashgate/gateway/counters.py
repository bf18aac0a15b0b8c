"""The event counters: counted per worker in C (``_buy.EventCore``), summed in Redis.

Each worker adds what it counted since its last flush to the event's hash
(``fg:stats:<event>``: one field per counter, and ``lat:<k>`` per latency bucket),
merges its HyperLogLogs (visitors, participants, buyers) into the event's, and adds the
same changes to the event's per-second series (``fg:{<event>}:series:<minute>``), every
``--stats-interval`` (0.5 s, on the wall clock's multiples of it) and once more when it
stops. A flush's changes go to the second of the middle of the span they were counted
in (with flushes on the half seconds, exactly the second they were counted in). Once a
second, while the event is near (an hour before its start until five minutes after its
end), each worker adds its stream subscribers to that second, and worker 0 writes each
SKU's units left. A count is taken as flushed before the write: a lost write loses a
few counts, never doubles them.
"""

from __future__ import annotations

import logging
import time

from flashgate.core import keys
from flashgate.core.outcomes import BY_NAME, REJECTIONS
from flashgate.core.redisconn import RedisConnection
from flashgate.gateway._buy import LATENCY_BOUNDS_US
from flashgate.gateway.runtime import EventRuntime, Runtimes

log = logging.getLogger("flashgate.counters")

COUNTERS = ("pv", "attempts", "orders", "units_sold", "revenue", *REJECTIONS)
_REJECTION_CODES = tuple((name, BY_NAME[name].code) for name in REJECTIONS)
# the series' fields per second: counter -> its field ("<second>:<field>")
SERIES_FIELDS = {"attempts": "a", "orders": "o", "units_sold": "u",
                 **{name: "r:" + name for name in REJECTIONS}}
GAUGES_BEFORE_MS = 3_600_000  # the gauges are written from this long before the start
GAUGES_AFTER_MS = 300_000  # until this long after the end


def snapshot(ert: EventRuntime) -> dict[str, int]:
    """What this worker counted for an event since it started."""
    answered = ert.answers()
    out = {"pv": ert.pv, "attempts": ert.attempts, "orders": ert.orders,
           "units_sold": ert.units, "revenue": ert.revenue}
    for name, code in _REJECTION_CODES:
        out[name] = answered[code]
    return out


class Counters:
    """The flushes of one worker's counters into Redis. ``now_ms`` is the clock the
    seconds are read on (the gateway's, corrected to Redis TIME, so every worker of
    every instance agrees); ``subscribers(event_id)`` this worker's open streams of an
    event; ``left(ert)`` the units left per SKU id, or None when another worker writes
    them."""

    def __init__(self, conn: RedisConnection, runtimes: Runtimes, worker: str, *,
                 now_ms=None, subscribers=None, left=None):
        self.conn = conn
        self.runtimes = runtimes
        self.worker = worker  # names this worker's part of a HyperLogLog merge
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.subscribers = subscribers or (lambda event_id: 0)
        self.left = left or (lambda ert: None)
        self.flushed: dict[str, dict[str, int]] = {}  # event id -> what Redis has of it
        # event id -> latency buckets taken from C and not in Redis yet / since start
        self.latency_due: dict[str, list[int]] = {}
        self.latency_total: dict[str, list[int]] = {}
        self.last_ms = 0  # when the last flush took its counts
        self.gauge_second = 0  # the last second whose gauges were written

    def take_latency(self) -> None:
        """Move the latency buckets counted in C into both tallies (the flush's and the
        metrics'): the C buckets are zeroed on each take, so every reader goes here."""
        for event_id, ert in self.runtimes.known.items():
            taken = ert.take_latency()
            if not any(taken):
                continue
            for tally in (self.latency_due, self.latency_total):
                acc = tally.get(event_id)
                if acc is None:
                    tally[event_id] = list(taken)
                else:
                    for i, n in enumerate(taken):
                        acc[i] += n

    async def flush(self) -> None:
        """Add every counter's change since the last flush to Redis."""
        now = self.now_ms()
        # the changes were counted between the last flush and now: their second is the
        # middle's (the first flush has no start: now's)
        second = ((self.last_ms + now) // 2 if self.last_ms else now) // 1000
        self.last_ms = now
        gauges = now // 1000 if now // 1000 != self.gauge_second else 0
        cmds = []
        merged = []  # the registers sent: dirty again if the write fails
        self.take_latency()
        for event_id, ert in self.runtimes.known.items():
            key = keys.stats(event_id)
            counts = snapshot(ert)
            flushed = self.flushed.get(event_id) or dict.fromkeys(COUNTERS, 0)
            delta = {k: counts[k] - flushed[k] for k in COUNTERS if counts[k] != flushed[k]}
            series: dict[int, list] = {}  # minute -> its HINCRBY/HSET arguments
            if delta:
                at = series.setdefault(second // 60, [])
                for k, v in delta.items():
                    f = SERIES_FIELDS.get(k)
                    if f is not None:
                        at.append(("HINCRBY", f"{second % 60}:{f}", v))
            for i, n in enumerate(self.latency_due.pop(event_id, ())):
                if n:
                    delta[f"lat:{i}"] = n
            if delta:
                cmds += [["HINCRBY", key, k, v] for k, v in delta.items()]
                self.flushed[event_id] = counts
            ev = ert.event
            if gauges and (ev.starts_at_ms - GAUGES_BEFORE_MS <= now
                           <= ev.ends_at_ms + GAUGES_AFTER_MS):
                at = series.setdefault(gauges // 60, [])
                s = gauges % 60
                n = self.subscribers(event_id)
                if n:
                    at.append(("HINCRBY", f"{s}:s", n))
                for sku, left in (self.left(ert) or {}).items():
                    at.append(("HSET", f"{s}:l:{sku}", left))
            expire = ev.ends_at_ms + keys.SERIES_RETENTION_S * 1000
            for minute, writes in series.items():
                if writes:
                    skey = keys.series(event_id, minute)
                    cmds += [[op, skey, f, v] for op, f, v in writes]
                    cmds.append(["PEXPIREAT", skey, expire])
            for name in keys.HLLS:
                hll = getattr(ert, name)
                if hll.dirty:
                    part = keys.stats_hll_part(event_id, name, self.worker)
                    cmds += [["SET", part, hll.dump(), "PX", 60000],
                             ["PFMERGE", keys.stats_hll(event_id, name), part], ["DEL", part]]
                    merged.append(hll)
        if gauges:
            self.gauge_second = gauges
        if not cmds:
            return
        try:
            replies = await self.conn.pipeline(cmds)
        except BaseException:
            for hll in merged:
                hll.dirty = True
            raise
        if any(isinstance(x, Exception) for x in replies):
            for hll in merged:
                hll.dirty = True


def latency_percentiles(buckets: list[int]) -> dict:
    """p50 / p99 / p99.9 in ms from latency bucket counts (each the bucket's upper
    bound; beyond the last bound, twice it); None before the first order."""
    total = sum(buckets)
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        if not total:
            out[name] = None
            continue
        need = q * total
        acc = 0
        for i, n in enumerate(buckets):
            acc += n
            if acc >= need:
                bound = (LATENCY_BOUNDS_US[i] if i < len(LATENCY_BOUNDS_US)
                         else LATENCY_BOUNDS_US[-1] * 2)
                out[name] = bound / 1000
                break
    return out


LATENCY_BUCKETS = len(LATENCY_BOUNDS_US) + 1
