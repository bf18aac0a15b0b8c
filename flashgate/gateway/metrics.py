"""``GET /metrics``: the instance's figures in the Prometheus text format (0.0.4).

Every worker counts in memory as it serves (the purchase path in C: ``_buy.EventCore``;
the commit batches in ``committer.Committer``, once per commit call, never per
request). Every ``--stats-interval`` (the counters' tick) each worker writes a
snapshot of its figures, as JSON, to ``<instance dir>/metrics/w<worker>.<pid>.json``
(written whole, then renamed into place). The instance directory is the supervisor's
private one (the peer channel's, 0700); the supervisor writes its count of worker
restarts there too.

A scrape, served by whichever worker the kernel picks, sums the snapshots of every
worker: its own, taken at that moment, and the other workers' files (at most one tick
old). Counters are summed over every file, a dead worker's last snapshot included, so
a restart does not set the instance's counters back (what a killed worker counted
after its last snapshot is lost: at most one tick). Gauges (commit queue, parked
requests, Redis connection) come from the newest file of each worker number only.
Units sold and left per SKU are the instance-wide figures of Redis, as the scraping
worker's ledger last read them (the refresh tick).

prometheus-client formats the text (custom collector, ``generate_latest``): its
metric families escape label values and write histograms' cumulative buckets, ``+Inf``,
``_sum`` and ``_count`` as the format wants.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from flashgate.core.outcomes import BY_NAME, REJECTIONS
from flashgate.gateway._buy import LATENCY_BOUNDS_US
from flashgate.gateway.committer import BATCH_BOUNDS, RTT_BOUNDS_US
from flashgate.gateway.counters import snapshot as event_snapshot

log = logging.getLogger("flashgate.metrics")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
SUBDIR = "metrics"
RESTARTS_FILE = "supervisor.json"
_SOLD_STATUS = str(BY_NAME["sold"].status)
_STATUS = {name: str(BY_NAME[name].status) for name in REJECTIONS}


def metrics_dir(instance_dir: str) -> Path:
    return Path(instance_dir) / SUBDIR


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_restarts(instance_dir: str, restarts: int) -> None:
    """The supervisor's count of worker restarts since it started."""
    d = metrics_dir(instance_dir)
    d.mkdir(mode=0o700, exist_ok=True)
    _write(d / RESTARTS_FILE, orjson.dumps({"restarts": restarts}))


def worker_snapshot(gw) -> dict:
    """One worker's figures: its counters since it started and its gauges now."""
    gw.counters.take_latency()
    lat_total = gw.counters.latency_total
    events = {}
    for event_id, ert in gw.runtimes.known.items():
        events[event_id] = {
            "counts": event_snapshot(ert),
            "latency": lat_total.get(event_id) or [0] * (len(LATENCY_BOUNDS_US) + 1),
            "latency_us": ert.latency_us,
        }
    c = gw.committer
    return {
        "worker": gw.worker_id,
        "pid": os.getpid(),
        "events": events,
        "batches": c.batches, "batched": c.batched,
        "rtts": c.rtts, "rtt_us": c.rtt_us, "unreplicated": c.unreplicated,
        "requests": [[op, status.decode("latin-1"), n]
                     for (op, status), n in gw.router.requests.items()],
        "queued": gw.path.queued, "parked": gw.path.waiting,
        "subscribers": gw.broadcast.subscribers,
        "redis_up": 1 if gw.conn.connected else 0,
    }


class Exporter:
    """One worker's part: its snapshot file, and the scrape of the instance."""

    def __init__(self, gw, instance_dir: str | None):
        self.gw = gw
        self.dir = metrics_dir(instance_dir) if instance_dir is not None else None
        self.file = None
        if self.dir is not None:
            self.file = self.dir / f"w{gw.worker_id}.{os.getpid()}.json"

    def write(self, snap: dict | None = None) -> None:
        """This worker's snapshot into the instance directory (the counters' tick, and
        each scrape this worker answers)."""
        if self.file is None:
            return
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            _write(self.file, orjson.dumps(snap or worker_snapshot(self.gw)))
        except OSError as e:
            log.warning("cannot write the metrics snapshot: %s", e)

    def _gather(self) -> tuple[list[dict], list[dict], int | None]:
        """(every snapshot, the current one of each worker, restarts or None)."""
        own = worker_snapshot(self.gw)
        self.write(own)  # what this scrape shows survives this worker
        snaps = [own]
        restarts = None
        newest: dict[int, tuple[int, dict]] = {}
        if self.dir is not None:
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.dir):
                    name = entry.name
                    if name.startswith(".") or entry.path == str(self.file):
                        continue
                    try:
                        data = orjson.loads(Path(entry.path).read_bytes())
                        mtime = entry.stat().st_mtime_ns
                    except (OSError, orjson.JSONDecodeError):
                        continue  # removed or replaced meanwhile
                    if name == RESTARTS_FILE:
                        restarts = int(data.get("restarts", 0))
                        continue
                    snaps.append(data)
                    w = data.get("worker")
                    if w != own["worker"] and (w not in newest or newest[w][0] < mtime):
                        newest[w] = (mtime, data)
        current = [own] + [d for _, d in newest.values()]
        return snaps, current, restarts

    def render(self) -> bytes:
        snaps, current, restarts = self._gather()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.gw, snaps, current, restarts))
        return generate_latest(registry)


def _add(acc: list, xs) -> None:
    for i, n in enumerate(xs):
        acc[i] += n


def _buckets(bounds, counts, scale: float) -> list[tuple[str, int]]:
    out = []
    acc = 0
    for b, n in zip(bounds, counts, strict=False):
        acc += n
        out.append((repr(b / scale), acc))
    out.append(("+Inf", acc + counts[len(bounds)]))
    return out


class _Collector:
    def __init__(self, gw, snaps, current, restarts):
        self.gw = gw
        self.snaps = snaps
        self.current = current
        self.restarts = restarts

    def collect(self):
        snaps = self.snaps
        gw = self.gw

        requests = CounterMetricFamily(
            "flashgate_requests", "Requests answered, by route (operationId) and HTTP status",
            labels=("route", "status"))
        outcomes = CounterMetricFamily(
            "flashgate_buy_outcomes", "Purchase requests by outcome (sold or the refusal)",
            labels=("event", "reason"))
        attempts = CounterMetricFamily(
            "flashgate_buy_attempts", "Purchase requests received", labels=("event",))
        latency = HistogramMetricFamily(
            "flashgate_buy_latency_seconds",
            "Time from a sale's request to its commit reply (every event)")
        by_status: dict[str, int] = {}
        events: dict[str, dict] = {}
        n_lat = len(LATENCY_BOUNDS_US) + 1
        for s in snaps:
            for event_id, e in s.get("events", {}).items():
                acc = events.get(event_id)
                if acc is None:
                    acc = events[event_id] = {
                        "counts": dict.fromkeys(e["counts"], 0),
                        "latency": [0] * n_lat, "latency_us": 0}
                for k, v in e["counts"].items():
                    acc["counts"][k] = acc["counts"].get(k, 0) + v
                _add(acc["latency"], e["latency"])
                acc["latency_us"] += e["latency_us"]
        lat = [0] * n_lat
        lat_us = 0
        for event_id in sorted(events):
            acc = events[event_id]
            c = acc["counts"]
            attempts.add_metric([event_id], c.get("attempts", 0))
            # "sold" always; a refusal once counted (a series per reason and event that
            # never happens would only weigh on every scrape)
            outcomes.add_metric([event_id, "sold"], c.get("orders", 0))
            by_status[_SOLD_STATUS] = by_status.get(_SOLD_STATUS, 0) + c.get("orders", 0)
            for name in REJECTIONS:
                n = c.get(name, 0)
                if n:
                    outcomes.add_metric([event_id, name], n)
                    st = _STATUS[name]
                    by_status[st] = by_status.get(st, 0) + n
            _add(lat, acc["latency"])
            lat_us += acc["latency_us"]
        latency.add_metric([], _buckets(LATENCY_BOUNDS_US, lat, 1e6), lat_us / 1e6)
        by_route = {("buy", st): n for st, n in by_status.items()}
        for s in snaps:
            for op, st, n in s.get("requests", ()):
                by_route[(op, st)] = by_route.get((op, st), 0) + n
        for key in sorted(by_route):
            requests.add_metric(list(key), by_route[key])
        yield requests
        yield attempts
        yield outcomes
        yield latency

        batches = [0] * (len(BATCH_BOUNDS) + 1)
        rtts = [0] * (len(RTT_BOUNDS_US) + 1)
        batched = rtt_us = 0
        for s in snaps:
            _add(batches, s.get("batches", ()))
            _add(rtts, s.get("rtts", ()))
            batched += s.get("batched", 0)
            rtt_us += s.get("rtt_us", 0)
        h = HistogramMetricFamily("flashgate_commit_batch_size",
                                  "Reservations per commit script call")
        h.add_metric([], _buckets(BATCH_BOUNDS, batches, 1), batched)
        yield h
        h = HistogramMetricFamily(
            "flashgate_commit_redis_roundtrip_seconds",
            "Time from a group commit's write to Redis to its last reply")
        h.add_metric([], _buckets(RTT_BOUNDS_US, rtts, 1e6), rtt_us / 1e6)
        yield h
        u = CounterMetricFamily(
            "flashgate_commit_unreplicated",
            "Sales committed on the master but answered 503 because fewer replicas than "
            "--commit-replicas acknowledged them in time")
        u.add_metric([], sum(s.get("unreplicated", 0) for s in snaps))
        yield u

        cur = self.current
        g = GaugeMetricFamily("flashgate_commit_queue_depth",
                              "Reservations sent or about to be sent to Redis, not answered yet")
        g.add_metric([], sum(s.get("queued", 0) for s in cur))
        yield g
        g = GaugeMetricFamily("flashgate_parked_purchases",
                              "Purchases parked on units in flight, not answered yet")
        g.add_metric([], sum(s.get("parked", 0) for s in cur))
        yield g
        g = GaugeMetricFamily("flashgate_sse_subscribers",
                              "Open event streams (GET /api/v1/events/{id}/stream)")
        g.add_metric([], sum(s.get("subscribers", 0) for s in cur))
        yield g
        g = GaugeMetricFamily("flashgate_redis_connected",
                              "1 if the worker's Redis connection is up, else 0",
                              labels=("worker",))
        for s in sorted(cur, key=lambda s: s.get("worker", 0)):
            g.add_metric([str(s.get("worker", 0))], s.get("redis_up", 0))
        yield g
        g = GaugeMetricFamily("flashgate_workers", "Worker processes reporting figures")
        g.add_metric([], len(cur))
        yield g

        sold = GaugeMetricFamily("flashgate_units_sold",
                                 "Units held by orders (Redis's count, instance-wide)",
                                 labels=("event", "sku"))
        left = GaugeMetricFamily("flashgate_units_left",
                                 "Units left to sell (stock - sold, at least 0)",
                                 labels=("event", "sku"))
        ledger = gw.ledger
        for srt in sorted(gw.runtimes.skus, key=lambda s: (s.event_id, s.sku.id)):
            stock, n, _inflight, _paused = ledger.state(srt.idx)
            sold.add_metric([srt.event_id, srt.sku.id], n)
            left.add_metric([srt.event_id, srt.sku.id], max(0, stock - n))
        yield sold
        yield left

        if self.restarts is not None:
            r = CounterMetricFamily("flashgate_worker_restarts",
                                    "Workers the supervisor restarted after they died")
            r.add_metric([], self.restarts)
            yield r
