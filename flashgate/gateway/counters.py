"""The event counters: counted per worker in C (``_buy.EventCore``), summed in Redis.

Each worker adds what it counted since its last flush to the event's hash
(``fg:stats:<event>``: one field per counter, and ``lat:<k>`` per latency bucket),
and merges its visitors' HyperLogLog registers into ``fg:stats:<event>:uv``, every
``--stats-interval`` (0.5 s) and once more when it stops. A count is taken as
flushed before the write: a lost write loses a few counts, never doubles them.
"""

from __future__ import annotations

import logging

from flashgate.core import keys
from flashgate.core.outcomes import BY_NAME, REJECTIONS
from flashgate.core.redisconn import RedisConnection
from flashgate.gateway._buy import LATENCY_BOUNDS_US
from flashgate.gateway.runtime import EventRuntime, Runtimes

log = logging.getLogger("flashgate.counters")

COUNTERS = ("pv", "attempts", "orders", "units_sold", "revenue", *REJECTIONS)
_REJECTION_CODES = tuple((name, BY_NAME[name].code) for name in REJECTIONS)


def snapshot(ert: EventRuntime) -> dict[str, int]:
    """What this worker counted for an event since it started."""
    answered = ert.answers()
    out = {"pv": ert.pv, "attempts": ert.attempts, "orders": ert.orders,
           "units_sold": ert.units, "revenue": ert.revenue}
    for name, code in _REJECTION_CODES:
        out[name] = answered[code]
    return out


class Counters:
    """The flushes of one worker's counters into Redis."""

    def __init__(self, conn: RedisConnection, runtimes: Runtimes, worker: str):
        self.conn = conn
        self.runtimes = runtimes
        self.worker = worker  # names this worker's part of a visitor merge
        self.flushed: dict[str, dict[str, int]] = {}  # event id -> what Redis has of it
        # event id -> latency buckets taken from C and not in Redis yet / since start
        self.latency_due: dict[str, list[int]] = {}
        self.latency_total: dict[str, list[int]] = {}

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
        cmds = []
        merged = []  # the visitor registers sent: dirty again if the write fails
        self.take_latency()
        for event_id, ert in self.runtimes.known.items():
            key = keys.stats(event_id)
            counts = snapshot(ert)
            flushed = self.flushed.get(event_id) or dict.fromkeys(COUNTERS, 0)
            delta = {k: counts[k] - flushed[k] for k in COUNTERS if counts[k] != flushed[k]}
            for i, n in enumerate(self.latency_due.pop(event_id, ())):
                if n:
                    delta[f"lat:{i}"] = n
            if delta:
                cmds += [["HINCRBY", key, k, v] for k, v in delta.items()]
                self.flushed[event_id] = counts
            if ert.uv.dirty:
                part = keys.stats_uv_part(event_id, self.worker)
                cmds += [["SET", part, ert.uv.dump(), "PX", 60000],
                         ["PFMERGE", keys.stats_uv(event_id), part], ["DEL", part]]
                merged.append(ert.uv)
        if not cmds:
            return
        try:
            replies = await self.conn.pipeline(cmds)
        except BaseException:
            for uv in merged:
                uv.dirty = True
            raise
        if any(isinstance(x, Exception) for x in replies):
            for uv in merged:
                uv.dirty = True


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
