"""The API of one worker: routing, identity, the purchase path, operator endpoints.

The purchase path (DESIGN.md):

    identify -> rate limits -> body -> ledger.reserve()
        rejected -> pre-encoded 409 / 429 bytes, answered now
        WAIT     -> parked on the SKU until a batch of this worker settles (bounded)
        OK       -> a Purchase joins the SKU's pending batch; the first one in a loop
                    turn schedules a flush (call_soon), which sends one commit script
                    per SKU batch, pipelined in one write. The answer (a Future the
                    HTTP layer awaits) is resolved from the script's reply: 200 only
                    once Redis holds the order.

A reply lost with the connection is indeterminate: its reservations are answered
503 and leave the ledger; the refresh tick re-reads what Redis really sold.
Everything this module knows of other workers comes from Redis: the commit
replies and a refresh tick that re-reads every SKU's sold and stock and notices
changed definitions (``fg:events:version``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from bisect import bisect_left as _bisect_left
from collections import deque
from math import ceil

import orjson

from flashgate.auth import ID_CHARS, IDEM_RE, TokenVerifier, admin_ok
from flashgate.config import Config
from flashgate.core import store
from flashgate.core._hll import HyperLogLog
from flashgate.core._stock import (
    ENDED,
    LIMIT_EXCEEDED,
    NOT_STARTED,
    OK,
    PAUSED,
    PROBE,
    SOLD_OUT,
    WAIT,
    Ledger,
)
from flashgate.core.events import EventError, parse_event
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.gateway._commit import (
    BuyPath,
    EventCore,
    Purchase,
    SkuCore,
    answer_commit,
    pack_commit,
)
from flashgate.gateway._protocol import Pending
from flashgate.gateway.clientip import ClientIP
from flashgate.gateway.protocol import build_response, error_response
from flashgate.limiter import Limiter

log = logging.getLogger("flashgate.app")

MAX_BATCH = 256  # reservations per commit script call

_now_ns = time.time_ns
_mono_ns = time.monotonic_ns
_loads = orjson.loads
_dumps = orjson.dumps


def _err(status: int, code: str, message: str, headers=()) -> bytes:
    return error_response(status, code, message, headers=headers)


# Pre-encoded answers: the hot rejections cost one dict lookup and one write.
R_NOT_FOUND = _err(404, "not_found", "no such event, sku or order")
R_UNAUTH = _err(401, "unauthenticated", "missing or invalid identity")
R_UNAVAILABLE = _err(503, "unavailable", "the store is unreachable or overloaded; retry",
                     headers=[(b"Retry-After", b"1")])
R_BAD_JSON = _err(400, "bad_request", "the body must be a JSON object")
R_BAD_SKU = _err(400, "bad_request", "sku is required and must be a string")
R_BAD_QTY = _err(400, "bad_request", "qty must be an integer >= 1")
R_BAD_IDEM = _err(400, "bad_request", "Idempotency-Key must be 1-255 visible ASCII characters")
R_METHOD = _err(405, "method_not_allowed", "method not allowed on this path")
R_IDEM_MISMATCH = _err(422, "idempotency_mismatch",
                       "this Idempotency-Key was used with a different request")
R_NOT_REGISTERED = _err(409, "not_registered", "registration is required for this sale")
R_REGISTRATION_NOT_OPEN = _err(409, "not_started", "registration opens at preheat_at_ms")
R_READY = build_response(200, b'{"ready":true}')
# the head build_response(200, body) writes, as a template: for the commit answers
_OK_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
R_NOT_READY = _err(503, "unavailable", "not ready", headers=[(b"Retry-After", b"1")])
R_LIVE = build_response(200, b'{"live":true}')

# ledger / commit-script outcome -> (counter name, answer)
REJECT = {
    SOLD_OUT: ("sold_out", _err(409, "sold_out", "no unit left for this sku")),
    LIMIT_EXCEEDED: ("limit_exceeded",
                     _err(409, "limit_exceeded", "this would exceed the per-user limit")),
    NOT_STARTED: ("not_started", _err(409, "not_started", "the sale has not started")),
    ENDED: ("ended", _err(409, "ended", "the sale has ended")),
    PAUSED: ("paused", _err(409, "paused", "the sale is paused")),
}
_REJECT_BY_SCRIPT = {
    1: REJECT[SOLD_OUT],
    2: REJECT[LIMIT_EXCEEDED],
    3: REJECT[NOT_STARTED],
    4: REJECT[ENDED],
    5: REJECT[PAUSED],
    7: ("not_registered", R_NOT_REGISTERED),
    8: ("idempotency_mismatch", R_IDEM_MISMATCH),
    11: ("not_found", R_NOT_FOUND),
}
_RATE_LIMITED = {
    s: _err(429, "rate_limited", "too many requests; slow down",
            headers=[(b"Retry-After", str(s).encode())])
    for s in range(1, 61)
}

COUNTERS = ("pv", "attempts", "orders", "units_sold", "revenue", "sold_out", "limit_exceeded",
            "not_started", "ended", "paused", "not_registered", "idempotency_mismatch",
            "rate_limited", "unavailable", "bad_request", "not_found", "unauthenticated")
REJECTION_COUNTERS = COUNTERS[5:]
# latency of committed buys: bucket upper bounds in microseconds
LAT_BOUNDS = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000,
              50000, 100000, 250000, 1000000)


_BUY, _VIEW, _REGISTER = 0, 1, 2  # kinds of the routes table


def _parse_buy_body(body: bytes) -> tuple[str, int] | bytes:
    """``(sku, qty)`` of a buy body, or its 400 answer. Buy bodies are tiny and
    repeat (most clients send the same few), so the caller caches the result."""
    try:
        data = _loads(body)
    except orjson.JSONDecodeError:
        return R_BAD_JSON
    if type(data) is not dict:
        return R_BAD_JSON
    sku_id = data.get("sku")
    if type(sku_id) is not str:
        return R_BAD_SKU
    qty = data.get("qty", 1)
    if type(qty) is not int or qty < 1:
        return R_BAD_QTY
    return sku_id, qty


def _rate_limited(wait_us: int) -> bytes:
    return _RATE_LIMITED[min(60, max(1, ceil(wait_us / 1e6)))]


_ORDER_ID_CHARS = ID_CHARS + b"."


class SkuRuntime(SkuCore):
    # (idx, sku, ert, oid_prefix: SkuCore's, read by the C path)
    __slots__ = ("event_id", "prefix", "keys", "waiters", "order_json", "commit_head")

    def __init__(self, idx, sku, event_id, ert, boot: str = ""):
        self.idx = idx
        self.sku = sku
        self.event_id = event_id
        # order ids: "<event>.<sku>.<worker boot id><sequence in hex>", as bytes
        self.oid_prefix = f"{event_id}.{sku.id}.{boot}".encode()
        self.prefix = store.sku_prefix(event_id, sku.id)
        self.keys = store.commit_keys(self.prefix)
        # the commit call up to its first argument, packed (see _commit.pack_commit)
        self.commit_head = store.COMMIT.packed_head(self.keys, [self.prefix])
        self.waiters: deque = deque()
        self.ert = ert
        # a committed order's JSON, as orjson writes it, with the ids that need no
        # escaping (checked per answer) formatted in: order id, user, then the numbers
        self.order_json = (
            b'{"order_id":"%s","event_id":"' + event_id.encode() + b'","sku":"'
            + sku.id.encode() + b'","user_id":"%s","qty":%d,"unit_price":%d,"amount":%d,'
            b'"status":"reserved","created_ms":%d,"pay_by_ms":%d}'
        )


class EventStats:
    """One event's counters in this worker; they outlive reloads of its definition."""

    __slots__ = ("counts", "flushed", "uv", "lat")

    def __init__(self):
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.flushed = dict.fromkeys(COUNTERS, 0)  # what Redis has of ``counts``
        self.uv = HyperLogLog()  # every user seen (merged into Redis's, never reset)
        self.lat = [0] * (len(LAT_BOUNDS) + 1)  # committed-buy latency, since the last flush


class EventRuntime(EventCore):
    # (by_id, counts, uv: EventCore's, read by the C path)
    __slots__ = ("event", "skus", "stats")

    def __init__(self, event, stats: EventStats):
        self.event = event
        self.skus: list[SkuRuntime] = []
        self.by_id: dict[str, SkuRuntime] = {}
        self.stats = stats
        self.counts = stats.counts  # the hot path's shortcuts
        self.uv = stats.uv


def _sale_answer(srt: SkuRuntime, qty: int, price: int, created: int, pay_by: int):
    """The 200 answer of a sale with everything but ``%d`` (Content-Length), ``%s``
    (order id) and ``%s`` (user) formatted in, and the length of its body without
    those two. (Event and SKU ids hold no ``%``: they match ID_CHARS.)"""
    body = srt.order_json % (b"%s", b"%s", qty, price, price * qty, created, pay_by)
    return _OK_JSON_HEAD + body, len(body) - 4


class _CommitReply:
    """The callback of one batch's commit call. An object, not a closure: a closure
    that re-sends itself (on NOSCRIPT) is a reference cycle, which kept every batch's
    purchases alive until the cyclic GC found them (a 2-3 ms collection some 13 times
    a second under load); this one is freed with its last reference."""

    __slots__ = ("gw", "srt", "items", "flight")

    def __init__(self, gw, srt, items, flight):
        self.gw = gw
        self.srt = srt
        self.items = items
        self.flight = flight

    def __call__(self, reply) -> None:
        gw = self.gw
        if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT"):
            # the script did not run: send it whole (after a Redis restart)
            srt = self.srt
            head, count = store.COMMIT.packed_head(srt.keys, [srt.prefix], whole=True)
            gw.conn.send_packed(pack_commit(head, count, self.items), (self,))
            return
        try:
            gw._on_commit(self.srt, self.items, reply)
        finally:
            gw._flight_done(self.flight)


def _on_path(name: str, doc: str) -> property:
    """A Gateway attribute kept in its C path (``self.path``)."""
    return property(lambda self: getattr(self.path, name),
                    lambda self, value: setattr(self.path, name, value), doc=doc)


class Gateway:
    """Everything one worker process knows and does; ``handle`` is the HTTP entry."""

    def __init__(self, cfg: Config, worker_id: int = 0):
        self.cfg = cfg
        self.worker_id = worker_id
        self.ledger = Ledger()
        self.limiter = Limiter(
            ip_rate=cfg.ip_rate, ip_burst=cfg.ip_burst,
            user_rate=cfg.user_rate, user_burst=cfg.user_burst,
            global_rate=cfg.global_rate, global_burst=cfg.global_burst,
            capacity=cfg.limiter_capacity,
        )
        self.admin_token = cfg.admin_token.encode()
        self.tokens = TokenVerifier(cfg.user_secret.encode()) if cfg.user_secret else None
        self.conn = RedisConnection(cfg.redis, on_connect=self._on_connect, on_lost=self._on_lost)
        self.events: dict[str, EventRuntime] = {}
        self.stats: dict[str, EventStats] = {}  # by event id
        self.sku_rt: list[SkuRuntime] = []  # by ledger index
        self.client_ip = ClientIP(cfg.trusted_proxies, cfg.proxy_protocol_from)
        self._ip_limited = cfg.ip_rate > 0
        self._user_limited = cfg.user_rate > 0
        self._global_limited = cfg.global_rate > 0
        # The common buy request, in C (gateway/_commit.pyx); it also holds the batch's
        # counters, the routes table, the clock state (the properties below) and the
        # caches of validated X-User-Id values and parsed buy bodies.
        self.path = BuyPath(
            self, self.ledger,
            not (self._ip_limited or self._user_limited or self._global_limited),
            self.tokens is None, cfg.commit_queue, self.conn, self._handle, self._park,
            _parse_buy_body, REJECT, R_UNAUTH, R_NOT_FOUND, R_UNAVAILABLE, self._flush,
        )
        self.handle = self.path.handle  # the HTTP entry (the rest goes to _handle)
        self.version = -1
        self.loaded = False
        self.draining = False
        self.waiting = 0  # parked requests
        self._flights = 0  # flushes sent and not fully answered
        self._boot = os.urandom(6).hex()
        self._tasks: list[asyncio.Task] = []
        self._expiry: asyncio.TimerHandle | None = None  # the parked requests' timer
        self._loop: asyncio.AbstractEventLoop | None = None

    # State the C path (self.path) reads per request lives there.
    queued = _on_path("queued", "Reservations sent or about to be sent to Redis.")
    _seq = _on_path("seq", "Order ids made by this worker (their last part, in hex).")
    _flush_scheduled = _on_path("flush_scheduled", "A group commit is due this loop turn.")
    clock_ok = _on_path("clock_ok", "This host's clock is within --max-clock-skew-ms of Redis TIME.")
    clock_offset_ms = _on_path("clock_offset_ms", "Redis TIME minus this host's clock, as last measured.")
    routes = _on_path("routes", "Path -> (kind, event) of the public event paths.")

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.bind(self._loop)
        while True:
            try:
                await self.conn.connect()
                break
            except (RedisUnavailable, RedisError, OSError, TimeoutError) as e:
                log.warning("waiting for Redis: %s", e)
                await asyncio.sleep(0.5)
        await self._reload_events()
        self._tasks.append(self._loop.create_task(self._refresher()))
        self._tasks.append(self._loop.create_task(self._stats_flusher()))
        self._expiry = self._loop.call_later(0.05, self._expire_tick)

    async def _on_connect(self, execute) -> None:
        await store.load_scripts(execute)
        if self.loaded:
            # whatever happened while we were away: re-read every definition and SKU
            # (the next refresh tick does, since the version is forgotten)
            self.version = -1

    def _on_lost(self) -> None:
        log.warning("Redis connection lost: purchases answer 503 until it is back")

    def now_ms(self) -> int:
        """Wall-clock ms corrected to Redis TIME (the clock that decides windows)."""
        return _now_ns() // 1_000_000 + self.clock_offset_ms

    def ready(self) -> bool:
        return self.loaded and self.conn.connected and self.clock_ok and not self.draining

    @property
    def busy(self) -> bool:
        """Commits or parked requests not answered yet."""
        return self.queued > 0 or self.waiting > 0

    async def stop(self) -> None:
        try:  # the last counts, if Redis answers quickly: never hold the exit up
            await asyncio.wait_for(self._flush_stats(), 0.5)
        except Exception:
            pass
        for t in self._tasks:
            t.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.conn.close()

    # -- HTTP entry ------------------------------------------------------------

    def _handle(self, req):
        """The HTTP entry of every request ``self.handle`` (the C path) does not take."""
        path = req.path
        method = req.method
        route = self.routes.get(path)
        if route is not None:  # the public event paths: one dict lookup
            kind, ert = route
            if kind == _BUY:
                return self.buy(req, ert) if method == b"POST" else R_METHOD
            if kind == _VIEW:
                return self.event_view(ert) if method == b"GET" else R_METHOD
            return self.register(req, ert) if method == b"POST" else R_METHOD
        if path.startswith("/api/v1/events/"):
            parts = path.split("/")
            ert = self.events.get(parts[4])
            if len(parts) == 6:
                if ert is None:
                    return R_NOT_FOUND
                if parts[5] == "buy":
                    return self.buy(req, ert) if method == b"POST" else R_METHOD
                if parts[5] == "register":
                    return self.register(req, ert) if method == b"POST" else R_METHOD
                return R_NOT_FOUND
            if len(parts) == 5:
                if ert is None:
                    return R_NOT_FOUND
                return self.event_view(ert) if method == b"GET" else R_METHOD
            return R_NOT_FOUND
        if path.startswith("/api/v1/admin/"):
            if not admin_ok(req.headers.get(b"authorization"), self.admin_token):
                return R_UNAUTH
            return self.admin(req, method, path.split("/"))
        if path.startswith("/api/v1/orders/"):
            parts = path.split("/")
            if len(parts) != 5:
                return R_NOT_FOUND
            return self.get_order(req, parts[4]) if method == b"GET" else R_METHOD
        if path == "/readyz":
            return R_READY if self.ready() else R_NOT_READY
        if path == "/livez":
            return R_LIVE
        if path == "/openapi.json":
            from flashgate.gateway.openapi import document_bytes

            return build_response(200, document_bytes())
        return R_NOT_FOUND

    def ip_of(self, req) -> str:
        """The client IP: the peer, or the X-Forwarded-For hop a trusted proxy vouches for."""
        return self.client_ip.of(req.peer_ip, req.headers.get(b"x-forwarded-for"))

    # -- identity ------------------------------------------------------------------

    def user_of(self, req) -> str | None:
        if self.tokens is not None:
            auth = req.headers.get(b"authorization")
            if auth is None or not auth.startswith(b"Bearer "):
                return None
            return self.tokens.user(auth[7:].strip(), _now_ns() // 1_000_000)
        return self.path.dev_user(req.headers)

    # -- the purchase path ---------------------------------------------------------

    def buy(self, req, ert: EventRuntime):
        counts = ert.counts
        counts["attempts"] += 1
        user = self.user_of(req)
        if user is None:
            counts["unauthenticated"] += 1
            return R_UNAUTH
        limiter = self.limiter
        if self._ip_limited or self._user_limited:
            now_us = _mono_ns() // 1000
            wait = (self._ip_limited and limiter.check_ip(self.ip_of(req), now_us)) \
                or limiter.check_user(user, now_us)
            if wait:
                counts["rate_limited"] += 1
                return _rate_limited(wait)
        got = self.path.sku_of(req.body, ert)
        if type(got) is bytes:  # its 400 or 404
            return got
        srt, qty = got
        idem = req.headers.get(b"idempotency-key")
        if idem is not None:
            try:
                idem = idem.decode("ascii")
            except UnicodeDecodeError:
                idem = ""
            if not IDEM_RE.match(idem):
                counts["bad_request"] += 1
                return R_BAD_IDEM
        ert.uv.add(user)
        if self._global_limited:
            wait = limiter.check_global(_mono_ns() // 1000)
            if wait:
                counts["rate_limited"] += 1
                return _rate_limited(wait)
        if not self.clock_ok:
            counts["unavailable"] += 1
            return R_UNAVAILABLE
        if idem is not None:
            return self._buy_with_key(srt, user, qty, idem, f"{srt.sku.id}:{qty}")
        return self._admit(srt, user, qty, None, "")

    def _admit(self, srt: SkuRuntime, user: str, qty: int, idem, fp: str):
        """The ledger decides; an admitted purchase joins the batch (a Future answer)."""
        if qty > srt.sku.per_user_limit:  # never possible, whatever was bought before
            srt.ert.counts["limit_exceeded"] += 1
            return REJECT[LIMIT_EXCEEDED][1]
        code = self.ledger.reserve(srt.idx, user, qty, self.now_ms(), idem is not None)
        if code == OK or code == PROBE:
            p = Purchase(srt, user, qty, idem, fp, Pending(), _mono_ns() // 1000)
            if code == PROBE:
                p.held = 0
            return self.path.enqueue(p)
        if code == WAIT:
            return self._park(srt, user, qty, idem, fp)
        name, answer = REJECT[code]
        srt.ert.counts[name] += 1
        return answer

    def _park(self, srt: SkuRuntime, user: str, qty: int, idem, fp: str):
        """The ledger said WAIT: the request waits (bounded) for the units in flight,
        and tries again when they are settled (``_retry_waiters``)."""
        if self.waiting >= self.cfg.wait_queue:
            srt.ert.counts["unavailable"] += 1
            return R_UNAVAILABLE
        p = Purchase(srt, user, qty, idem, fp, Pending(), _mono_ns() // 1000)
        p.deadline = p.t0 + int(self.cfg.wait_timeout * 1e6)
        srt.waiters.append(p)
        self.waiting += 1
        return p.fut

    async def _buy_with_key(self, srt, user, qty, idem, fp) -> bytes:
        """A purchase with an Idempotency-Key. The key is claimed for the whole event
        with the request's fingerprint, so the same key with another body (even on
        another SKU) is 422, and a repeat reaches Redis, which replays its order.
        A key never seen before cannot have an order: if the ledger refuses such a
        request, it is refused like any other, and nothing is written."""
        counts = srt.ert.counts
        key = "fg:{" + srt.event_id + "}:idem:" + user + ":" + idem
        try:
            prior = await self.conn.execute("GET", key)
            if prior is None:
                code = (self.ledger.check(srt.idx, user, qty, self.now_ms())
                        if qty <= srt.sku.per_user_limit else LIMIT_EXCEEDED)
                if code != OK and code != WAIT:
                    name, answer = REJECT[code]
                    counts[name] += 1
                    return answer
                _, prior = await self.conn.pipeline([["SET", key, fp, "NX", "EX", 86400],
                                                     ["GET", key]])
        except (RedisUnavailable, RedisError):
            counts["unavailable"] += 1
            return R_UNAVAILABLE
        if isinstance(prior, Exception):
            counts["unavailable"] += 1
            return R_UNAVAILABLE
        if prior is not None and prior.decode() != fp:
            counts["idempotency_mismatch"] += 1
            return R_IDEM_MISMATCH
        answer = self._admit(srt, user, qty, idem, fp)
        return answer if type(answer) is bytes else await answer

    def _flush(self) -> None:
        """Group commit: one script call per SKU batch, all pipelined in one write.

        At most ``commit_flights`` flushes are in flight: under load the next batch
        leaves when one comes back, so batches grow with the load instead of the
        writes (a lone request on an idle worker still leaves at once)."""
        self._flush_scheduled = False
        if self._flights >= self.cfg.commit_flights:
            return  # _flight_done flushes again
        cmds = []
        cbs = []
        batches = self.ledger.take_batches()
        if not batches:
            return
        flight = [0]  # calls of this flush not answered yet
        for idx, items in batches:
            srt = self.sku_rt[idx]
            head, count = srt.commit_head
            for i in range(0, len(items), MAX_BATCH):
                chunk = items[i:i + MAX_BATCH]
                cmds.append(pack_commit(head, count, chunk))
                cbs.append(_CommitReply(self, srt, chunk, flight))
        flight[0] = len(cmds)
        self._flights += 1
        self.conn.send_packed(b"".join(cmds), cbs)

    def _flight_done(self, flight: list) -> None:
        flight[0] -= 1
        if flight[0] == 0:
            self._flights -= 1
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)

    def _on_commit(self, srt: SkuRuntime, items: list, reply) -> None:
        """Redis answered one batch: settle every reservation in the ledger exactly
        once and answer it, whatever the reply holds."""
        ledger = self.ledger
        idx = srt.idx
        counts = srt.ert.counts
        self.queued -= len(items)
        sales = answer_commit(self, srt, items, reply, ledger, idx, srt.ert.stats.lat, LAT_BOUNDS,
                              _mono_ns() // 1000, _sale_answer, R_UNAVAILABLE)
        if sales is None:
            # a lost connection (indeterminate: 503), an error, or a reply we cannot read
            if not isinstance(reply, RedisUnavailable):
                log.error("commit of %d reservations failed: %.200r", len(items), reply)
            for p in items:
                ledger.settle(idx, p.user, p.held, 0)
                counts["unavailable"] += 1
                if not p.fut.done():
                    p.fut.set_result(R_UNAVAILABLE)
            self._retry_waiters(srt)
            return
        orders, units, revenue = sales
        if orders:
            counts["orders"] += orders
            counts["units_sold"] += units
            counts["revenue"] += revenue
        try:
            ledger.observe(idx, int(reply[0]), int(reply[1]))
        except (TypeError, ValueError):
            log.error("commit reply without sold/stock: %.200r", reply[:2])
        self._retry_waiters(srt)

    def _answer(self, srt: SkuRuntime, p: Purchase, code: int, reply: list, at: int,
                now_us: int) -> bytes:
        """The HTTP answer to a reservation that did not make a new order
        (``_commit.answer_commit`` answers those) from its part of a commit reply (at ``reply[at]``, see
        commit.lua): an order that exists (9, 10) or a refusal."""
        counts = srt.ert.counts
        if code != 9 and code != 10:
            name, answer = _REJECT_BY_SCRIPT.get(code, ("unavailable", R_UNAVAILABLE))
            counts[name] += 1
            return answer
        oid, unit_price, qty, created, pay_by = reply[at + 1:at + 6]
        if code == 9:  # this very order, from a re-sent batch (10 was counted when made)
            counts["orders"] += 1
            counts["units_sold"] += qty
            counts["revenue"] += unit_price * qty
            srt.ert.stats.lat[_bisect_left(LAT_BOUNDS, now_us - p.t0)] += 1
        if type(oid) is bytes and not oid.translate(None, _ORDER_ID_CHARS):
            # ids and users are [A-Za-z0-9_.-]: checked where they enter
            tmpl, fixed = _sale_answer(srt, qty, unit_price, created, pay_by)
            user = p.user.encode()
            return tmpl % (fixed + len(oid) + len(user), oid, user)
        # (never: order ids are ours) an id the template cannot take
        return build_response(200, _dumps({
            "order_id": oid.decode() if type(oid) is bytes else oid,
            "event_id": srt.event_id, "sku": srt.sku.id, "user_id": p.user,
            "qty": qty, "unit_price": unit_price, "amount": unit_price * qty,
            "status": "reserved", "created_ms": created, "pay_by_ms": pay_by,
        }))

    def _retry_waiters(self, srt: SkuRuntime) -> None:
        """Requests parked on this SKU's units in flight try again, in arrival order."""
        waiters = srt.waiters
        if not waiters:
            return
        ledger = self.ledger
        now = self.now_ms()
        for _ in range(len(waiters)):
            p = waiters.popleft()
            code = ledger.reserve(srt.idx, p.user, p.qty, now, p.idem is not None)
            if code == WAIT:
                waiters.append(p)
                continue
            self.waiting -= 1
            if code == OK:
                self.path.enqueue(p)
            else:
                name, answer = REJECT[code]
                srt.ert.counts[name] += 1
                p.fut.set_result(answer)

    def _expire_tick(self) -> None:
        """Parked requests are expired on a timer of their own: never behind Redis."""
        try:
            self._expire_waiters()
        except Exception:
            log.exception("expiring parked requests failed")
        self._expiry = self._loop.call_later(0.05, self._expire_tick)

    def _expire_waiters(self) -> None:
        """Parked requests past their deadline are answered 503."""
        now_us = _mono_ns() // 1000
        for srt in self.sku_rt:
            if not srt.waiters:
                continue
            keep = deque()
            for p in srt.waiters:
                if p.deadline > now_us:
                    keep.append(p)
                    continue
                self.waiting -= 1
                srt.ert.counts["unavailable"] += 1
                if not p.fut.done():
                    p.fut.set_result(R_UNAVAILABLE)
            srt.waiters = keep

    # -- learning from Redis -------------------------------------------------------------

    async def _reload_events(self) -> None:
        version, events = await store.load_events(self.conn)
        known = {(srt.event_id, srt.sku.id): srt for srt in self.sku_rt}
        new: dict[str, EventRuntime] = {}
        for ev in events:
            stats = self.stats.get(ev.id)
            if stats is None:
                stats = self.stats[ev.id] = EventStats()
            ert = EventRuntime(ev, stats)
            for s in ev.skus:
                srt = known.get((ev.id, s.id))
                if srt is None:
                    idx = self.ledger.add_sku(s.stock, 0, s.per_user_limit, ev.starts_at_ms,
                                              ev.ends_at_ms, ev.paused)
                    srt = SkuRuntime(idx, s, ev.id, ert, self._boot)
                    self.sku_rt.append(srt)
                else:
                    stock, _, _, _ = self.ledger.state(srt.idx)
                    self.ledger.configure(srt.idx, stock, s.per_user_limit, ev.starts_at_ms,
                                          ev.ends_at_ms, ev.paused)
                    srt.sku = s
                    srt.ert = ert
                ert.skus.append(srt)
                ert.by_id[s.id] = srt
            new[ev.id] = ert
        # SKUs of removed events stay in the ledger (indexes are stable) but unreachable
        await self._refresh_counts([srt for ert in new.values() for srt in ert.skus])
        self.events = new
        routes = {}
        for ev_id, ert in new.items():
            base = "/api/v1/events/" + ev_id
            routes[base] = (_VIEW, ert)
            routes[base + "/buy"] = (_BUY, ert)
            routes[base + "/register"] = (_REGISTER, ert)
        self.routes = routes
        self.version = version
        self.loaded = True

    def _refresh_counts(self, skus) -> asyncio.Future:
        """Read the SKUs' stock and sold. The replies are applied by callbacks, so in
        wire order with the commit replies on the same connection: a refresh never
        overwrites what a later commit reported. The Future resolves when all are in."""
        done = self._loop.create_future()
        if not skus:
            done.set_result(None)
            return done
        left = [len(skus)]

        def applier(srt):
            def apply(reply):
                try:
                    if isinstance(reply, list):
                        self._observe(srt, int(reply[0] or 0), int(reply[1] or 0))
                finally:
                    left[0] -= 1
                    if not left[0] and not done.done():
                        done.set_result(None)
            return apply

        self.conn.send_many([["MGET", s.prefix + "stock", s.prefix + "sold"] for s in skus],
                            [applier(s) for s in skus])
        return done

    def _observe(self, srt: SkuRuntime, stock: int, sold: int) -> None:
        old_stock, old_sold, _, _ = self.ledger.state(srt.idx)
        if sold < old_sold:
            # units came back (cancel / expire): the local buyer table may be too strict
            self.ledger.forget_buyers(srt.idx)
        self.ledger.observe(srt.idx, sold, stock)
        if (sold != old_sold or stock != old_stock) and srt.waiters:
            self._retry_waiters(srt)

    async def _refresher(self) -> None:
        """Every tick: read every SKU's sold/stock and the definitions' version, and
        check the clock against Redis TIME."""
        interval = self.cfg.refresh_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._refresh_once()
            except Exception:  # a bug here must not stop learning what Redis knows
                log.exception("refresh failed")

    async def _refresh_once(self) -> None:
        if not self.conn.connected:
            return
        t0 = _now_ns()
        try:
            now, version = await self.conn.pipeline([["TIME"], ["GET", store.VERSION_KEY]])
        except (RedisUnavailable, RedisError):
            return
        t1 = _now_ns()
        if isinstance(now, list) and t1 - t0 < 100_000_000:
            # a sample that took long says nothing of the clocks: skip it
            redis_ms = int(now[0]) * 1000 + int(now[1]) // 1000
            self.clock_offset_ms = redis_ms - (t0 + t1) // 2_000_000
            ok = abs(self.clock_offset_ms) <= self.cfg.max_clock_skew_ms
            if ok != self.clock_ok:
                if ok:
                    log.warning("clock back within %d ms of Redis", self.cfg.max_clock_skew_ms)
                else:
                    log.error("clock differs from Redis TIME by %d ms: refusing to sell",
                              self.clock_offset_ms)
            self.clock_ok = ok
        await self._refresh_counts([srt for ert in self.events.values() for srt in ert.skus])
        if not isinstance(version, Exception) and int(version or 0) != self.version:
            try:
                await self._reload_events()
            except (RedisUnavailable, RedisError) as e:
                log.warning("cannot reload events: %s", e)

    # -- counters ------------------------------------------------------------------

    async def _stats_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.stats_interval)
            try:
                await self._flush_stats()
            except (RedisUnavailable, RedisError):
                pass
            except Exception:
                log.exception("flushing counters failed")

    async def _flush_stats(self) -> None:
        """Add this worker's counters since the last flush to the event's Redis hash.
        Counted as flushed before the write: a lost write loses a few counts, never
        doubles them."""
        cmds = []
        merged = []  # the visitor registers sent: dirty again if the write fails
        for event_id, st in self.stats.items():
            key = store.stats_key(event_id)
            counts, flushed = st.counts, st.flushed
            delta = {k: counts[k] - flushed[k] for k in COUNTERS if counts[k] != flushed[k]}
            for i, n in enumerate(st.lat):
                if n:
                    delta[f"lat:{i}"] = n
            if delta:
                cmds += [["HINCRBY", key, k, v] for k, v in delta.items()]
                st.flushed = dict(counts)
                st.lat = [0] * len(st.lat)
            if st.uv.dirty:
                # the registers go through a key of this worker's, merged then dropped
                tmp = f"{{{key}:uv}}:{self._boot}"  # hash tag: the merged key's slot
                cmds += [["SET", tmp, st.uv.dump(), "PX", 60000],
                         ["PFMERGE", key + ":uv", tmp], ["DEL", tmp]]
                merged.append(st.uv)
        if cmds:
            try:
                replies = await self.conn.pipeline(cmds)
            except BaseException:
                for uv in merged:
                    uv.dirty = True
                raise
            if any(isinstance(x, Exception) for x in replies):
                for uv in merged:
                    uv.dirty = True

    # -- public views -------------------------------------------------------------

    def event_state(self, ert: EventRuntime, now: int) -> str:
        ev = ert.event
        if now >= ev.ends_at_ms:
            return "ended"
        if now < ev.starts_at_ms:
            if ev.preheat_at_ms is not None and now >= ev.preheat_at_ms:
                return "preheat"
            return "scheduled"
        if ev.paused:
            return "paused"
        if all(self.ledger.left(s.idx) == 0 for s in ert.skus):
            return "sold_out"
        return "live"

    def event_view(self, ert: EventRuntime) -> bytes:
        ert.counts["pv"] += 1
        ev = ert.event
        now = self.now_ms()
        skus = []
        total_sold = 0
        for srt in ert.skus:
            s = srt.sku
            stock, sold, _, _ = self.ledger.state(srt.idx)
            total_sold += sold
            skus.append({"id": s.id, "name": s.name, "price": s.price,
                         "original_price": s.original_price, "stock": stock,
                         "left": max(0, stock - sold), "sold": sold,
                         "per_user_limit": s.per_user_limit})
        return build_response(200, _dumps({
            "id": ev.id, "name": ev.name, "state": self.event_state(ert, now),
            "server_time_ms": now, "starts_at_ms": ev.starts_at_ms, "ends_at_ms": ev.ends_at_ms,
            "preheat_at_ms": ev.preheat_at_ms,
            "registration_required": ev.registration_required, "skus": skus,
            "milestones": [{"sold": n, "reward": r, "reached": total_sold >= n}
                           for n, r in ev.milestones],
        }))

    async def _register(self, ert: EventRuntime, user: str) -> bytes:
        try:
            await store.register(self.conn, ert.event, user)
        except (RedisUnavailable, RedisError):
            return R_UNAVAILABLE
        return build_response(200, b'{"registered":true}')

    def register(self, req, ert: EventRuntime):
        user = self.user_of(req)
        if user is None:
            return R_UNAUTH
        wait = self.limiter.check_ip(self.ip_of(req), _mono_ns() // 1000)
        if wait:
            return _rate_limited(wait)
        now = self.now_ms()
        ev = ert.event
        if now >= ev.ends_at_ms:
            return REJECT[ENDED][1]
        if ev.preheat_at_ms is not None and now < ev.preheat_at_ms:
            return R_REGISTRATION_NOT_OPEN  # open from preheat (or creation) to the end
        return self._register(ert, user)

    async def _get_order(self, order_id: str, user: str | None) -> bytes:
        try:
            order = await store.get_order(self.conn, order_id)
        except (RedisUnavailable, RedisError):
            return R_UNAVAILABLE
        if order is None or (user is not None and order.get("user_id") != user):
            return R_NOT_FOUND
        return build_response(200, _dumps(order))

    def get_order(self, req, order_id: str):
        if admin_ok(req.headers.get(b"authorization"), self.admin_token):
            return self._get_order(order_id, None)
        user = self.user_of(req)
        if user is None:
            return R_UNAUTH
        return self._get_order(order_id, user)

    # -- operator endpoints -------------------------------------------------------------

    def admin(self, req, method: bytes, parts: list[str]):
        # ['', 'api', 'v1', 'admin', 'events', id, (action)]
        if len(parts) < 6 or parts[4] != "events":
            return R_NOT_FOUND
        event_id = parts[5]
        if len(parts) == 6:
            if method == b"PUT":
                return self._put_event(event_id, req.body)
            if method == b"GET":
                ert = self.events.get(event_id)
                if ert is None:
                    return R_NOT_FOUND
                return build_response(200, _dumps(ert.event.to_dict()))
            return R_METHOD
        ert = self.events.get(event_id)
        if ert is None or len(parts) != 7:
            return R_NOT_FOUND
        action = parts[6]
        if action in ("pause", "resume"):
            return self._pause(ert, action == "pause") if method == b"POST" else R_METHOD
        if action == "stats":
            return self._stats(ert) if method == b"GET" else R_METHOD
        if action == "orders":
            return self._orders(ert) if method == b"GET" else R_METHOD
        return R_NOT_FOUND

    async def _put_event(self, event_id: str, body: bytes) -> bytes:
        try:
            data = _loads(body)
        except orjson.JSONDecodeError:
            return R_BAD_JSON
        try:
            event = parse_event(event_id, data)
            created = await store.save_event(self.conn, event)
        except EventError as e:
            return _err(409 if e.code == "conflict" else 400, e.code, e.message)
        except (RedisUnavailable, RedisError) as e:
            log.warning("cannot save event %s: %s", event_id, e)
            return R_UNAVAILABLE
        try:
            await self._reload_events()  # this worker sees it now; the others on their tick
        except (RedisUnavailable, RedisError) as e:
            log.warning("saved event %s, but cannot reload it yet: %s", event_id, e)
        return build_response(201 if created else 200, _dumps(event.to_dict()))

    async def _pause(self, ert: EventRuntime, paused: bool) -> bytes:
        try:
            await store.set_paused(self.conn, ert.event, paused)
        except (RedisUnavailable, RedisError):
            return R_UNAVAILABLE
        for srt in ert.skus:
            self.ledger.set_paused(srt.idx, paused)
        now = self.now_ms()
        return build_response(200, _dumps({"id": ert.event.id, "paused": paused,
                                           "state": self.event_state(ert, now)}))

    async def _stats(self, ert: EventRuntime) -> bytes:
        key = store.stats_key(ert.event.id)
        try:
            await self._flush_stats()
            raw, uv = await self.conn.pipeline([["HGETALL", key], ["PFCOUNT", key + ":uv"]])
            skus = await store.sku_totals(self.conn, ert.event)
            so = await self.conn.pipeline(
                [["GET", s.prefix + "sold_out_ms"] for s in ert.skus])
        except (RedisUnavailable, RedisError):
            return R_UNAVAILABLE
        it = iter(raw)
        c = {k.decode(): int(v) for k, v in zip(it, it, strict=True)}
        lat = [c.get(f"lat:{i}", 0) for i in range(len(LAT_BOUNDS) + 1)]
        orders = sum(s["orders"] for s in skus)
        units = sum(s["sold"] for s in skus)
        uv = int(uv or 0)
        sold_out_ms = None
        if skus and all(s["sold"] >= s["stock"] for s in skus) and all(so):
            sold_out_ms = max(int(x) for x in so) - ert.event.starts_at_ms
        for s, t in zip(skus, so, strict=True):
            s["left"] = max(0, s["stock"] - s["sold"])
            s["sold_out_at_ms"] = int(t) if t else None
        return build_response(200, _dumps({
            "event_id": ert.event.id,
            "pv": c.get("pv", 0), "uv": uv, "attempts": c.get("attempts", 0),
            "orders": orders, "units_sold": units, "units_paid": 0,
            "revenue": sum(s["revenue"] for s in skus),
            "rejections": {k: c.get(k, 0) for k in REJECTION_COUNTERS},
            "conversion": round(orders / uv, 4) if uv else 0.0,
            "sold_out_ms": sold_out_ms,
            "latency_ms": _percentiles(lat),
            "skus": skus,
        }))

    async def _orders(self, ert: EventRuntime) -> bytes:
        try:
            orders = await store.export_orders(self.conn, ert.event)
        except (RedisUnavailable, RedisError):
            return R_UNAVAILABLE
        body = b"".join(_dumps(o) + b"\n" for o in orders)
        return build_response(200, body, content_type=b"application/x-ndjson")


def _percentiles(lat: list[int]) -> dict:
    total = sum(lat)
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        if not total:
            out[name] = None
            continue
        need = q * total
        acc = 0
        for i, n in enumerate(lat):
            acc += n
            if acc >= need:
                bound = LAT_BOUNDS[i] if i < len(LAT_BOUNDS) else LAT_BOUNDS[-1] * 2
                out[name] = bound / 1000
                break
    return out
