"""The event stream (``GET /api/v1/events/{id}/stream``, Server-Sent Events): what one
worker sends to its subscribers.

One ``Channel`` per event that has subscribers on this worker. Every ``--stream-tick``
(0.25 s) the broadcaster:

* reads the new entries of the orders streams of every subscribed event's SKUs with
  non-blocking ``XREAD`` (one per SKU, pipelined: one round trip) on the worker's
  Redis connection, from the ids it last saw
  (for a SKU first read: from when its channel opened, by the Redis clock). Orders committed by any worker of
  any instance are learnt so, never from another worker;
* compares each channel's event with what it last sent: the state (``state_of``), each
  SKU's left and sold (the ledger, which the refresher keeps current every 0.1 s), the
  reached milestones (the refresher's too);
* encodes what changed as one frame (SSE events ``order``, ``stock``, ``milestone``,
  ``state``; the id ``<worker boot>.<sequence>`` on its last event) and writes the same
  bytes to every subscriber of the channel. Nothing is encoded per subscriber.

A channel with nothing to say for ``--stream-heartbeat`` seconds sends the comment
``: hb``. Every frame of a tick opens with the comment ``: t=<ms>``, the tick's
wall-clock time (ignored by clients; the bench's ``live`` scenario times deliveries
with it). A new subscriber gets the snapshot (the state, every SKU's stock, the
reached milestones, as of the channel's last frame, with that frame's id), or, with a
``Last-Event-ID`` this worker can still serve from the channel's ring of recent
frames (``--stream-resume-frames``), the frames after it. A subscriber that leaves
more than ``--stream-max-buffer`` bytes unread is disconnected (``Stream`` enforces
it; the socket's kernel send buffer is bounded to about as much); beyond ``--stream-max-subscribers`` open streams a new one gets 503.

A channel without subscribers is kept ``KEEP_S`` seconds (so a reconnect resumes),
then dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time

import orjson

from flashgate.core import orders
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway._protocol import send_all
from flashgate.gateway.protocol import Stream, build_stream_head
from flashgate.gateway.runtime import EventRuntime, state_of

log = logging.getLogger("flashgate.stream")

HEAD = build_stream_head(headers=((b"Cache-Control", b"no-cache"),
                                  (b"X-Accel-Buffering", b"no")))
HEARTBEAT = b": hb\n\n"
KEEP_S = 60.0  # a channel without subscribers is kept this long
CLOCK_SLACK_MS = 50
XREAD_COUNT = 1000  # entries read per SKU per tick at most (the rest: the next tick)
# subscribers written between two yields of the loop: a write is ~6.5 µs on loopback, so
# a purchase waits at most ~1.6 ms behind a slice (1,000: purchase p99 2.3x with 10,000
# subscribers; 250: 1.2x, each frame reaching the last subscriber ~15 ms later;
# docs/BENCHMARKS.md, "live")
SLICE = 250


def mask(user: str) -> str:
    """A user id as the stream shows it: its first character, ***, its last."""
    return user[:1] + "***" + user[-1:] if user else "***"


def _event(name: bytes, data) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _frame(events: list[bytes], event_id: bytes, tick_ms: int | None = None) -> bytes:
    """The events as one frame, the id on the last one (a client cut off in the middle
    of a frame resumes from the previous frame: a repeat, never a gap); with
    ``tick_ms``, first the comment ``: t=<tick_ms>``."""
    events[-1] = b"id: " + event_id + b"\n" + events[-1]
    if tick_ms is not None:
        events[0] = b": t=%d\n" % tick_ms + events[0]
    return b"".join(events)


class Channel:
    """One event's stream on this worker."""

    def __init__(self, event_id: str, seq: int):
        self.event_id = event_id
        self.subs: set[Stream] = set()
        self.seq = seq  # the id of the last frame (the snapshot's id)
        self.floor = seq  # every frame after this id is in the ring
        self.ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self.state: str | None = None  # as last sent
        self.stock: dict[str, tuple[int, int]] = {}  # sku -> (left, sold), as last sent
        self.milestones: dict[tuple[int, str], int] = {}  # (sold, reward) -> reached_ms
        self.server_time_ms = 0
        self.starts_at_ms = self.ends_at_ms = 0
        self.pending: list[tuple[str, int, str, int]] = []  # orders read: (sku, qty, user, ts)
        self.last_write = 0.0  # loop time of the last bytes sent
        self.empty_since = 0.0  # loop time it lost its last subscriber
        self.snapshot: bytes | None = None  # cached for self.seq

    def state_data(self) -> dict:
        return {"state": self.state, "server_time_ms": self.server_time_ms,
                "starts_at_ms": self.starts_at_ms, "ends_at_ms": self.ends_at_ms}

    def snapshot_bytes(self, boot: bytes) -> bytes:
        if self.snapshot is None:
            events = [_event(b"state", self.state_data())]
            events += [_event(b"stock", {"sku": sku, "left": left, "sold": sold})
                       for sku, (left, sold) in self.stock.items()]
            events += [_event(b"milestone", {"sold": n, "reward": reward, "reached_ms": ms})
                       for (n, reward), ms in self.milestones.items()]
            self.snapshot = _frame(events, boot + b".%d" % self.seq)
        return self.snapshot

    def since(self, last: int) -> bytes | None:
        """The frames after id ``last``, or None when the ring no longer has them all."""
        if not self.floor <= last <= self.seq:
            return None
        return b"".join(frame for seq, frame in self.ring if seq > last)


class Broadcaster:
    def __init__(self, gw):
        cfg = gw.cfg
        self.gw = gw
        self.boot = gw.boot.encode()
        self.tick_s = cfg.stream_tick
        self.heartbeat_s = cfg.stream_heartbeat
        self.max_subscribers = cfg.stream_max_subscribers
        self.max_buffer = cfg.stream_max_buffer
        self.orders_per_tick = cfg.stream_orders_per_tick
        self.ring_size = cfg.stream_resume_frames
        self.channels: dict[str, Channel] = {}
        self.subscribers = 0  # open streams, over every channel
        self.seq = 0  # the last frame id given, over every channel
        self.read_from: dict[str, str] = {}  # orders stream key -> the last id read
        self.tick_ms: int | None = None  # wall-clock ms of the tick under way
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- subscribers ------------------------------------------------------------

    def subscribe(self, ert: EventRuntime, req):
        """The answer to a stream request for ``ert``: a Stream, or 503 at the cap."""
        if self.subscribers >= self.max_subscribers:
            return answers.STREAM_FULL
        ch = self.channels.get(ert.event.id)
        if ch is None:
            ch = self._open(ert)
        first = None
        last = req.headers.get(b"last-event-id")
        if last:
            boot, _, seq = last.strip().partition(b".")
            if boot == self.boot and seq.isdigit():
                first = ch.since(int(seq))
                if first is not None and len(first) > self.max_buffer // 2:
                    first = None  # a big catch-up: the snapshot is smaller
        if first is None:
            first = ch.snapshot_bytes(self.boot)
        stream = Stream(HEAD, max_buffer=self.max_buffer, on_close=self._closer(ch))
        stream.send(first)
        ch.subs.add(stream)
        self.subscribers += 1
        if self._loop is not None:
            self._loop.call_soon(self._bound_kernel, stream)  # (once it is attached)
        return stream

    def _bound_kernel(self, stream: Stream) -> None:
        """Bound the kernel's send buffer of a stream's socket too (by default it grows
        to megabytes for a peer that does not read): what a subscriber leaves unread is
        then at most about twice ``max_buffer`` (the kernel's, then the stream's)."""
        transport = stream.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(2048, self.max_buffer // 2))
        except (OSError, AttributeError):
            pass

    def _closer(self, ch: Channel):
        def closed(stream, reason):
            if stream in ch.subs:
                ch.subs.discard(stream)
                self.subscribers -= 1
                if not ch.subs:
                    ch.empty_since = self._now()
        return closed

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _open(self, ert: EventRuntime) -> Channel:
        self.seq += 1
        ch = self.channels[ert.event.id] = Channel(ert.event.id, self.seq)
        ch.last_write = self._now()
        start = self._start_id()
        for srt in ert.skus:  # its orders from now on (committed after the snapshot's stock)
            self.read_from.setdefault(srt.keys.orders, start)
        self._observe(ch, ert)  # its first state: the snapshot's (not a frame of the ring)
        ch.ring.clear()
        ch.floor = ch.seq
        return ch

    def _start_id(self) -> str:
        """An orders stream id for "from now" (the ids are Redis TIME in ms; this
        worker's clock follows Redis's, CLOCK_SLACK_MS of slack for its error)."""
        return f"{self.gw.path.now_ms() - CLOCK_SLACK_MS}-0"

    # -- the tick -----------------------------------------------------------------

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.tick_s
            delay = next_at - loop.time()
            if delay < 0:  # late (a stalled loop): tick now, and count from now
                next_at, delay = loop.time(), 0
            await asyncio.sleep(delay)
            try:
                await self.tick()
            except Exception:  # a bug here must not end every stream's updates
                log.exception("stream tick failed")

    async def tick(self) -> None:
        self.tick_ms = time.time_ns() // 1_000_000
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        for event_id, ch in list(self.channels.items()):
            if not ch.subs and now - ch.empty_since >= KEEP_S:
                del self.channels[event_id]
        if not self.channels:
            self.read_from.clear()
            return
        events = self.gw.runtimes.events
        await self._read_orders(events)
        now = self._loop.time()
        for event_id, ch in list(self.channels.items()):
            ert = events.get(event_id)
            if ert is None:
                ch.pending.clear()
                continue
            frame = self._observe(ch, ert)
            if frame is not None:
                ch.last_write = now
                await self._send(ch, frame)
            elif now - ch.last_write >= self.heartbeat_s:
                ch.last_write = now
                await self._send(ch, HEARTBEAT)

    async def _send(self, ch: Channel, data: bytes) -> None:
        """``data`` to every subscriber of ``ch``, in slices of ``SLICE`` with the loop
        let go between them (purchases are not held up behind a big fan-out)."""
        subs = list(ch.subs)
        for i in range(0, len(subs), SLICE):
            if i:
                await asyncio.sleep(0)
            send_all(subs[i:i + SLICE], data)  # (one that overflows ends, leaves ch.subs)

    async def _read_orders(self, events: dict) -> None:
        """The orders committed since the last tick, into each channel's ``pending``."""
        conn = self.gw.conn
        where: dict[str, tuple[Channel, str]] = {}
        for event_id, ch in self.channels.items():
            ert = events.get(event_id)
            if ert is not None:
                for srt in ert.skus:
                    where[srt.keys.orders] = (ch, srt.sku.id)
        if not where or not conn.connected:
            return
        start = self._start_id()
        stream_keys = list(where)
        ids = [self.read_from.setdefault(k, start) for k in stream_keys]
        for k in [k for k in self.read_from if k not in where]:
            del self.read_from[k]
        try:  # (one XREAD per SKU, pipelined: the SKUs' keys are in different slots)
            replies = await conn.pipeline(
                [["XREAD", "COUNT", str(XREAD_COUNT), "STREAMS", k, i]
                 for k, i in zip(stream_keys, ids, strict=True)])
        except (RedisUnavailable, RedisError):
            return
        for key, reply in zip(stream_keys, replies, strict=True):
            if not isinstance(reply, list):
                continue  # None: nothing new (an error reply: the next tick tries again)
            ch, sku = where[key]
            for entry_id, fields in reply[0][1]:
                self.read_from[key] = entry_id.decode() if isinstance(entry_id, bytes) \
                    else entry_id
                try:
                    kind, ts, found = orders.stream_orders(fields)
                except (ValueError, KeyError):
                    continue
                if kind == "created":
                    ch.pending.extend((sku, qty, user, ts) for _, user, qty, _ in found)

    def _observe(self, ch: Channel, ert: EventRuntime) -> bytes | None:
        """Take the event's news into the channel; the frame that tells them, if any."""
        gw = self.gw
        ev = ert.event
        ledger = gw.ledger
        out: list[bytes] = []
        if ch.pending:
            pending = sorted(ch.pending, key=lambda o: o[3])
            ch.pending = []
            for sku, qty, user, ts in pending[:self.orders_per_tick]:
                out.append(_event(b"order", {"sku": sku, "qty": qty, "user": mask(user),
                                             "ts_ms": ts}))
            if len(pending) > self.orders_per_tick:
                out.append(_event(b"order", {"more": len(pending) - self.orders_per_tick}))
        for srt in ert.skus:
            stock, sold, _, _ = ledger.state(srt.idx)
            now_stock = (max(0, stock - sold), sold)
            if ch.stock.get(srt.sku.id) != now_stock:
                ch.stock[srt.sku.id] = now_stock
                out.append(_event(b"stock", {"sku": srt.sku.id, "left": now_stock[0],
                                             "sold": sold}))
        reached = ert.reached
        for n, reward in ev.milestones:
            if n in reached and (n, reward) not in ch.milestones:
                ch.milestones[(n, reward)] = reached[n][0]
                out.append(_event(b"milestone", {"sold": n, "reward": reward,
                                                 "reached_ms": reached[n][0]}))
        now_ms = gw.path.now_ms()
        state = state_of(ert, ledger, now_ms)
        ch.server_time_ms = now_ms
        ch.snapshot = None  # (its server_time_ms: at most a tick old)
        if (state, ev.starts_at_ms, ev.ends_at_ms) != (ch.state, ch.starts_at_ms,
                                                       ch.ends_at_ms):
            ch.state, ch.starts_at_ms, ch.ends_at_ms = state, ev.starts_at_ms, ev.ends_at_ms
            out.append(_event(b"state", ch.state_data()))
        if not out:
            return None
        self.seq += 1
        ch.seq = self.seq
        frame = _frame(out, self.boot + b".%d" % ch.seq, self.tick_ms)
        ch.ring.append((ch.seq, frame))
        if len(ch.ring) > self.ring_size:
            ch.floor = ch.ring.popleft()[0]
        return frame
