"""A follower of the orders streams: every order event of the chosen events, delivered
at least once, to whatever takes them (``flashgate orders follow``'s sinks; notifiers).

Theory of operation:

* Each SKU's ``orders`` stream (core/keys.py) is read through one Redis consumer group
  (``group``), created at the stream's start (``XGROUP CREATE <stream> <group> 0
  MKSTREAM``) the first time a follower sees the SKU: the group starts with the whole
  history, and every follower of the same group shares the work.
* A follower is one consumer of the group with a name of its own (host, pid and a
  random part). ``XREADGROUP ... >`` hands it new entries; they stay pending (in the
  group's list of entries delivered and not acknowledged) until ``ack`` is called for
  the batch they came in, which the caller does only once it has made them durable.
* An entry whose consumer died stays pending. Every follower looks for entries idle
  longer than ``claim_idle_ms`` (``XAUTOCLAIM``, Redis 6.2+) and takes them over, so a
  follower killed mid-batch loses nothing: the next one (or a restarted one) delivers
  its entries again. Delivery is at least once; a sink must make a repeat harmless.
* An entry names orders; the orders' records (the SKU's ``order_by_id`` hash) are
  their truth, read when the entry is delivered (``HMGET``): a late or repeated entry
  gives the order's current state, never an older one.
* The events followed are re-read whenever ``fg:events:version`` changes (checked
  every ``rescan_interval`` seconds): an event or a SKU created later is followed
  within seconds.

Sans sink: ``batches()`` yields ``Batch`` objects and ``ack(batch)`` acknowledges one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson

from flashgate.core import keys, orders
from flashgate.core.events import Event
from flashgate.core.redisconn import RedisConnection, RedisError
from flashgate.core.scripts import Script

log = logging.getLogger("flashgate.follow")

DEFAULT_GROUP = "flashgate-follow"
HMGET_CHUNK = 1000  # order ids per HMGET: no single command keeps Redis busy long
# a consumer of the group with nothing pending that has not read for this long is gone
# (a live follower reads every block_ms): its name is removed from the group
FORGET_CONSUMER_MS = 3_600_000
FORGET_CONSUMER = Script("forget_consumer.lua")  # checks and removes in one step


def consumer_name() -> str:
    """A consumer name no other process has: host, pid, and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class Entry:
    """One stream entry: ``kind`` (created, paid, cancelled, expired), ``ts`` (ms) and
    the current state of each order it names, as the API shows an order."""

    stream: str
    event_id: str
    sku: str
    entry_id: str
    kind: str
    ts: int
    orders: list[dict]

    @property
    def sku_keys(self) -> keys.SkuKeys:
        return keys.SkuKeys(self.event_id, self.sku)


@dataclass(slots=True)
class Batch:
    entries: list[Entry] = field(default_factory=list)

    def orders(self) -> list[dict]:
        """Every order of the batch, once each, in its most recent state: a final state
        over ``reserved`` (an order has one final state, whatever the clock said), else
        the greatest ``updated_ms``."""
        seen: dict[str, dict] = {}
        for e in self.entries:
            for o in e.orders:
                had = seen.get(o["order_id"])
                if had is None or _recency(o) >= _recency(had):
                    seen[o["order_id"]] = o
        return list(seen.values())

    def __len__(self) -> int:
        return len(self.entries)


def _recency(order: dict) -> tuple[bool, int]:
    return order["status"] != "reserved", order.get("updated_ms", order["created_ms"])


class OrderFollower:
    """Follows the orders streams of ``events`` (None: every event in ``fg:events``)
    as consumer ``consumer`` of ``group``; ``select`` (if given) keeps only the events
    whose definition it accepts, decided again whenever a definition changes.
    ``conn`` is a connected RedisConnection whose ``command_timeout`` exceeds
    ``block_ms``."""

    def __init__(self, conn: RedisConnection, *, group: str = DEFAULT_GROUP,
                 consumer: str | None = None, events: list[str] | None = None,
                 claim_idle_ms: int = 30_000, count: int = 1000, block_ms: int = 500,
                 rescan_interval: float = 1.0, select: Callable[[Event], bool] | None = None):
        self.conn = conn
        self.group = group
        self.consumer = consumer or consumer_name()
        self.events = list(events) if events else None
        self.select = select
        self.claim_idle_ms = claim_idle_ms
        self.count = count
        self.block_ms = block_ms
        self.rescan_interval = rescan_interval
        # stream key -> (event id, sku id), of the streams whose group exists
        self.streams: dict[str, tuple[str, str]] = {}
        self._version: bytes | None = None
        self._next_scan = 0.0
        self._next_claim = 0.0
        self._claim_cursor: dict[str, str] = {}
        self._next_forget = 0.0
        self._waiting_said = False
        self.stopping = False

    # -- which streams ---------------------------------------------------------------

    async def _event_ids(self) -> list[str]:
        if self.events is not None:
            return self.events
        return sorted(i.decode() for i in await self.conn.execute("SMEMBERS", keys.EVENTS))

    async def rescan(self, force: bool = False) -> None:
        """Follow the streams of every SKU of the chosen events (new ones get the group)."""
        version = await self.conn.execute("GET", keys.VERSION)
        if not force and version == self._version and self.streams:
            return
        ids = await self._event_ids()
        raws = await self.conn.pipeline([["GET", keys.event(i)] for i in ids]) if ids else []
        found: dict[str, tuple[str, str]] = {}
        for event_id, raw in zip(ids, raws, strict=True):
            if isinstance(raw, Exception):
                raise raw
            if not raw:
                continue
            try:
                ev = Event.from_dict(orjson.loads(raw))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("event %s: its definition cannot be read (%s); skipped", event_id, e)
                continue
            if self.select is not None and not self.select(ev):
                continue
            for s in ev.skus:
                found[keys.SkuKeys(ev.id, s.id).orders] = (ev.id, s.id)
        new = [k for k in found if k not in self.streams]
        if new:
            replies = await self.conn.pipeline(
                [["XGROUP", "CREATE", k, self.group, "0", "MKSTREAM"] for k in new])
            for k, r in zip(new, replies, strict=True):
                if isinstance(r, RedisError) and not str(r).startswith("BUSYGROUP"):
                    raise r
                self.streams[k] = found[k]
            log.info("following %d more stream(s): %s", len(new),
                     ", ".join(f"{e}/{s}" for e, s in (found[k] for k in new)))
        for k in [k for k in self.streams if k not in found]:
            del self.streams[k]  # a SKU removed from its event: nothing more comes
        if not self.streams and not self._waiting_said:
            log.info("no stream to follow yet (%s): waiting for one",
                     "no such event: " + ", ".join(self.events) if self.events
                     else "no event")
        self._waiting_said = not self.streams
        self._version = version

    # -- reading ---------------------------------------------------------------------

    async def _entries(self, stream: str, raw_entries) -> list[tuple[str, str, str, int, list]]:
        """(stream, entry id, kind, ts, [(order id, ...)]) of raw stream entries; an
        entry deleted meanwhile (no fields) has no orders."""
        out = []
        for item in raw_entries or ():
            if not item:  # (Redis 6.2's XAUTOCLAIM: an entry deleted meanwhile)
                continue
            entry_id, fields = item
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if not fields:
                out.append((stream, eid, "", 0, []))
                continue
            try:
                kind, ts, found = orders.stream_orders(fields)
            except (ValueError, KeyError) as e:
                log.error("%s %s: an entry that cannot be read (%s); acknowledged without "
                          "its orders", stream, eid, e)
                out.append((stream, eid, "", 0, []))
                continue
            out.append((stream, eid, kind, ts, found))
        return out

    async def _read(self) -> list:
        """New entries for this consumer (waits up to block_ms)."""
        names = list(self.streams)
        if not names:
            await asyncio.sleep(self.block_ms / 1000)
            return []
        reply = await self.conn.execute(
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.count,
            "BLOCK", self.block_ms, "STREAMS", *names, *(">" for _ in names))
        out = []
        for stream, entries in reply or ():
            out += await self._entries(stream.decode(), entries)
        return out

    async def _claim(self) -> list:
        """Entries pending longer than claim_idle_ms (a consumer that died), taken over."""
        out = []
        for stream in list(self.streams):
            start = self._claim_cursor.get(stream, "0-0")
            try:
                reply = await self.conn.execute(
                    "XAUTOCLAIM", stream, self.group, self.consumer, self.claim_idle_ms, start,
                    "COUNT", self.count)
            except RedisError as e:
                if "NOGROUP" in str(e):  # the stream was deleted: create it again on rescan
                    self.streams.pop(stream, None)
                    continue
                raise
            nxt = reply[0].decode()
            self._claim_cursor[stream] = nxt
            got = await self._entries(stream, reply[1])
            if got:
                log.info("%s: took over %d entries pending longer than %d ms", stream,
                         len(got), self.claim_idle_ms)
            out += got
            if len(out) >= self.count:
                break
        return out

    async def _records(self, raw: list) -> Batch:
        """The batch of raw entries, each order as its record says now."""
        wanted: dict[str, list[str]] = {}
        for stream, _eid, _kind, _ts, found in raw:
            ids = wanted.setdefault(stream, [])
            ids += [o[0] for o in found]
        cmds, order = [], []
        for stream, ids in wanted.items():
            event_id, sku = self.streams.get(stream) or _split_stream(stream)
            hkey = keys.SkuKeys(event_id, sku).order_by_id
            for i in range(0, len(ids), HMGET_CHUNK):
                chunk = ids[i:i + HMGET_CHUNK]
                cmds.append(["HMGET", hkey, *chunk])
                order.append(chunk)
        current: dict[str, dict | None] = {}
        for ids, reply in zip(order, await self.conn.pipeline(cmds) if cmds else [],
                              strict=True):
            if isinstance(reply, Exception):
                raise reply
            for oid, rec in zip(ids, reply, strict=True):
                current[oid] = orders.from_record(oid, rec)
        batch = Batch()
        for stream, eid, kind, ts, found in raw:
            event_id, sku = self.streams.get(stream) or _split_stream(stream)
            got = []
            for o in found:
                rec = current.get(o[0])
                if rec is None:
                    log.warning("%s %s: order %s has no record; left out", stream, eid, o[0])
                    continue
                got.append(dict(rec))
            batch.entries.append(Entry(stream, event_id, sku, eid, kind, ts, got))
        return batch

    async def next_batch(self) -> Batch:
        """The next batch (empty when nothing came within block_ms): entries taken
        over from a dead consumer first, then new ones."""
        now = time.monotonic()
        if now >= self._next_scan:
            await self.rescan()
            self._next_scan = now + self.rescan_interval
        raw: list = []
        if now >= self._next_claim:
            raw = await self._claim()
            if len(raw) < self.count:  # none left behind: look again later
                self._next_claim = now + max(self.claim_idle_ms / 4000, 0.1)
        if not raw:
            try:
                raw = await self._read()
            except RedisError as e:
                if "NOGROUP" not in str(e):
                    raise
                # a stream (and its group) deleted, or a Redis that lost its data:
                # create the groups again
                log.warning("%s; creating the consumer groups again", e)
                self.streams.clear()
                self._next_scan = 0.0
                return Batch()
        if now >= self._next_forget:
            self._next_forget = now + 60.0
            await self._forget_consumers()
        return await self._records(raw) if raw else Batch()

    async def _forget_consumers(self) -> None:
        """Remove from the group the consumers that are gone: nothing pending, no read
        for FORGET_CONSUMER_MS (each follower's run adds one name)."""
        for stream in list(self.streams):
            try:
                infos = await self.conn.execute("XINFO", "CONSUMERS", stream, self.group)
            except RedisError:
                continue
            for info in infos:
                it = iter(info)
                d = {k.decode(): v for k, v in zip(it, it, strict=True)}
                name = d.get("name", b"").decode()
                if name != self.consumer and d.get("pending") == 0 and \
                        d.get("idle", 0) > FORGET_CONSUMER_MS and \
                        await FORGET_CONSUMER.run(self.conn, [stream],
                                                  [self.group, name, FORGET_CONSUMER_MS]):
                    log.info("%s: consumer %s forgotten (gone, nothing pending)", stream, name)

    async def batches(self) -> AsyncIterator[Batch]:
        """Non-empty batches until ``stop()``; each must be acknowledged (``ack``)
        once its orders are durable where they go."""
        while not self.stopping:
            batch = await self.next_batch()
            if batch.entries:
                yield batch

    async def ack(self, batch: Batch) -> None:
        """Acknowledge every entry of ``batch`` (XACK, one per stream, pipelined)."""
        by_stream: dict[str, list[str]] = {}
        for e in batch.entries:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        if not by_stream:
            return
        replies = await self.conn.pipeline(
            [["XACK", s, self.group, *ids] for s, ids in by_stream.items()])
        for r in replies:
            if isinstance(r, Exception):
                raise r

    def stop(self) -> None:
        self.stopping = True


def _split_stream(stream: str) -> tuple[str, str]:
    """(event, sku) of a SKU's orders stream key ``fg:{<event>:<sku>}:orders``."""
    inner = stream[stream.index("{") + 1:stream.rindex("}")]
    event_id, _, sku = inner.partition(":")
    return event_id, sku


async def redis_version(conn: RedisConnection) -> tuple[int, int]:
    info = (await conn.execute("INFO", "server")).decode()
    for line in info.splitlines():
        if line.startswith("redis_version:"):
            parts = line.split(":", 1)[1].strip().split(".")
            return int(parts[0]), int(parts[1])
    return 0, 0
