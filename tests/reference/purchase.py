"""The purchase, in plain Python: a slow reference of the C path, kept as a test oracle.

The gateway has one implementation of a buy request, in C (gateway/_buy.pyx, with
gateway/committer.py, gateway/_commit.pyx and core/_stock.pyx). This module says the
same things slowly, one rule at a time, with parts of its own where the C path has
fast ones:

* identity: ``X-User-Id`` matched against ``[A-Za-z0-9_-]{1,64}`` (dev mode), or a
  buyer token ``<user>.<expires_ms>.<hex HMAC-SHA256>`` (auth.py's format) checked
  here with ``hmac``;
* rate limits: a dict-based GCRA (``Gcra``), one theoretical arrival time per key;
* the ledger: a dict-based ``Ledger`` that follows the theory of operation of
  core/_stock.pyx rule by rule. It is written again rather than reused so that a
  differential test compares the C ledger too: its state after every step, not only
  the answers it leads to;
* answers: dicts rendered with ``json``, not the C path's pre-encoded bytes and
  templates; a new order's prices from the SKU's ladder, unit by unit (``ladder``),
  not from the script's reply;
* counters: a dict per event, by outcome name.

What it shares with the product is what a second implementation could not change
without breaking the contract: the commit script (core/lua/commit.lua, through
core/scripts.py: Redis decides every sale, and the script's reply is the contract),
the outcome codes the script answers with (core/outcomes.py), the key names
(core/keys.py), the pipelined Redis connection (core/redisconn.py), the client-IP
rule (gateway/clientip.py), and, to define and pause events, core/store.py (the
operator's writes, which the admin API makes the same way).

Order of events
---------------
What the ledger answers depends on what it knows when it decides, so this follows
the C path's order of events exactly:

1. ``handle(req)`` decides at once: a refusal; a reservation that joins its SKU's
   batch (the first of a loop turn schedules ``flush``); a request parked on units
   in flight (WAIT); or, for a request with an Idempotency-Key, the key's claim sent
   to Redis.
2. The claim's reply (a callback, in wire order with everything else this worker
   sent) admits the request or refuses it.
3. ``flush`` sends every pending batch, one commit script call per SKU batch, all in
   one write, with at most ``commit_flights`` flushes in flight.
4. A commit reply (a callback, in wire order) settles and answers each reservation,
   reports the SKU's sold and stock to the ledger, then the SKU's parked requests
   try again, in arrival order.

A parked request past its deadline is answered 503 by ``expire_waiters``, which the
caller runs (the gateway runs it on a timer).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field

import orjson

from flashgate.config import Config
from flashgate.core import events, keys, scripts, store
from flashgate.core.outcomes import OUTCOMES
from flashgate.core.redisconn import RedisConnection
from tests.reference.clientip import ClientIP

_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([^ \t]+)[ \t]*")

IDEM_TTL_S = 86400  # an Idempotency-Key's life (API.md: 24 h)
MAX_BATCH = 256  # reservations per commit script call

# What the gateway counts per event: the views, the buy requests, the sales, and the
# answers of each refusal by its error code.
COUNTERS = (
    "pv", "attempts", "orders", "units_sold", "revenue",
    "sold_out", "limit_exceeded", "not_started", "ended", "paused", "not_registered",
    "idempotency_mismatch", "not_found", "rate_limited", "unavailable", "bad_request",
    "unauthenticated",
)

# The commit script answers with the numbers of core/outcomes.py.
OUTCOME_BY_CODE = {o.code: o for o in OUTCOMES}
OUTCOME_BY_NAME = {o.name: o for o in OUTCOMES}

_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_BUY_PATH = re.compile(r"/api/v1/events/([^/]+)/buy")


def mono_us() -> int:
    return time.monotonic_ns() // 1000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------- answers


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            409: "Conflict", 422: "Unprocessable Content", 429: "Too Many Requests",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: a status, a JSON body, extra header fields."""

    status: int
    body: dict
    headers: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        body = json.dumps(self.body, separators=(",", ":")).encode()
        head = [f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
                "Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def error(status: int, code: str, message: str, headers=()) -> Answer:
    return Answer(status, {"error": code, "message": message}, tuple(headers))


def refusal(name: str) -> Answer:
    """The answer of an outcome of core/outcomes.py that is a refusal."""
    o = OUTCOME_BY_NAME[name]
    return error(o.status, o.name, o.message, (("Retry-After", "1"),) if o.status == 503 else ())


def reservation_args(order_id, user, qty, fp) -> list:
    """One reservation's values in a commit call (lua/commit.lua's ARGV): order id,
    user, and the qty, or "<qty>|<fingerprint>" when it has an Idempotency-Key (whose
    key then goes into KEYS)."""
    if fp:
        return [order_id, user, f"{qty}|{fp}"]
    return [order_id, user, qty]


def rate_limited(wait_us: int) -> Answer:
    seconds = min(60, max(1, -(-wait_us // 1_000_000)))
    return error(429, "rate_limited", "too many requests; slow down",
                 (("Retry-After", str(seconds)),))


NOT_FOUND = refusal("not_found")
UNAUTHENTICATED = refusal("unauthenticated")
UNAVAILABLE = refusal("unavailable")
BAD_JSON = error(400, "bad_request", "the body must be a JSON object")
BAD_SKU = error(400, "bad_request", "sku is required and must be a string")
BAD_QTY = error(400, "bad_request", "qty must be an integer >= 1")
BAD_KEY = error(400, "bad_request", "Idempotency-Key must be 1-255 visible ASCII characters")


def breakdown_of(raw) -> list[dict] | None:
    """The ``price_breakdown`` of a commit reply's breakdown (``b"1x100,1x990"``; empty:
    an order of one price, None)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if not text:
        return None
    out = []
    for part in text.split(","):
        qty, price = part.split("x")
        out.append({"qty": int(qty), "unit_price": int(price)})
    return out


def ladder(definition: events.Sku, before: int, qty: int) -> tuple[int, list[dict] | None]:
    """``(first unit's price, price_breakdown or None)`` of ``qty`` units sold after
    ``before`` units, unit by unit: a unit goes at the price of the tier it falls in
    (tiers cover the first units in turn), else at the SKU's price; runs of one price
    are merged, and an order of one price has no breakdown."""
    prices = []
    for unit in range(before, before + qty):
        edge, price = 0, definition.price
        for units, tier_price in definition.tiers:
            edge += units
            if unit < edge:
                price = tier_price
                break
        prices.append(price)
    runs: list[list[int]] = []
    for price in prices:
        if runs and runs[-1][1] == price:
            runs[-1][0] += 1
        else:
            runs.append([1, price])
    if len(runs) == 1:
        return prices[0], None
    return prices[0], [{"qty": q, "unit_price": price} for q, price in runs]


def order_answer(order_id: str, event_id: str, sku_id: str, user: str, qty: int,
                 unit_price: int, created_ms: int, pay_by_ms: int,
                 breakdown: list[dict] | None = None) -> Answer:
    """A sale's 200. An order whose units straddle price tiers has its breakdown, and
    its amount is the breakdown's sum (``unit_price`` is its first unit's price)."""
    body = {
        "order_id": order_id, "event_id": event_id, "sku": sku_id, "user_id": user,
        "qty": qty, "unit_price": unit_price, "amount": unit_price * qty,
        "status": "reserved", "created_ms": created_ms, "pay_by_ms": pay_by_ms,
    }
    if breakdown:
        assert sum(p["qty"] for p in breakdown) == qty, breakdown
        body["amount"] = sum(p["qty"] * p["unit_price"] for p in breakdown)
        body["price_breakdown"] = breakdown
    return Answer(200, body)


# ------------------------------------------------------------------- identity


def user_of_header(raw) -> str | None:
    """The user of an ``X-User-Id`` value, or None."""
    if not isinstance(raw, bytes) or not _ID.fullmatch(raw):
        return None
    return raw.decode("ascii")


class Tokens:
    """Buyer tokens: ``<user>.<expires_ms>.<hex HMAC-SHA256(secret, "<user>.<expires_ms>")>``
    (expires_ms: 1-15 digits; the signature in lower-case hex), living at most
    ``max_ttl_ms`` (0: no cap)."""

    def __init__(self, secret: bytes, max_ttl_ms: int = 0):
        self.secret = secret
        self.max_ttl_ms = max_ttl_ms

    def user(self, token: bytes, now_ms: int) -> str | None:
        parts = token.split(b".")
        if len(token) > 200 or len(parts) != 3:
            return None
        user, expires, signature = parts
        if not (_ID.fullmatch(user) and re.fullmatch(rb"[0-9]{1,15}", expires)
                and re.fullmatch(rb"[0-9a-f]{64}", signature)):
            return None
        if int(expires) <= now_ms or (self.max_ttl_ms and int(expires) > now_ms + self.max_ttl_ms):
            return None
        want = hmac.new(self.secret, user + b"." + expires, "sha256").hexdigest().encode()
        return user.decode("ascii") if hmac.compare_digest(want, signature) else None


def valid_key(raw: bytes) -> bool:
    """An Idempotency-Key: 1-255 visible ASCII characters."""
    return 1 <= len(raw) <= 255 and all(0x21 <= b <= 0x7E for b in raw)


def parse_body(body: bytes) -> tuple[str, int] | Answer:
    """``(sku, qty)`` of a buy body, or its 400 answer. (The JSON is read by orjson, as
    the gateway reads it: which documents are JSON is orjson's call, e.g. an integer
    beyond 64 bits is a float.)"""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return BAD_JSON
    if type(data) is not dict:
        return BAD_JSON
    sku = data.get("sku")
    if type(sku) is not str:
        return BAD_SKU
    qty = data.get("qty", 1)
    if type(qty) is not int or qty < 1:  # (a bool is not an int here)
        return BAD_QTY
    return sku, qty


# ------------------------------------------------------------------- rate limits


class Gcra:
    """GCRA: each key has a theoretical arrival time (TAT). T = 1/rate, tau =
    T * (burst - 1). A request at ``now`` uses tat = max(TAT, now): if tat - now > tau
    it is refused (retry after tat - tau - now), else allowed and TAT = tat + T.
    Times in integer ns; rate <= 0: no limit."""

    def __init__(self, rate: float, burst: float):
        self.period = round(1e9 / rate) if rate > 0 else 0
        self.tau = round(self.period * (burst - 1))
        self.tat: dict[object, int] = {}

    @property
    def on(self) -> bool:
        return self.period > 0

    def hit(self, key, now_us: int) -> int:
        """0 if allowed (and counted), else the µs until it would be."""
        if not self.on:
            return 0
        now = now_us * 1000
        tat = max(self.tat.get(key, now), now)
        if tat - now > self.tau:
            return -(-(tat - self.tau - now) // 1000)
        self.tat[key] = tat + self.period
        return 0


# ------------------------------------------------------------------- the ledger


OK, WAIT, PROBE = "ok", "wait", "probe"  # the ledger's instructions; the rest are refusals


@dataclass(eq=False)
class SkuLedger:
    stock: int
    sold: int  # as Redis last reported
    limit: int
    starts_ms: int
    ends_ms: int
    paused: bool
    inflight: int = 0  # units of reservations Redis has not answered yet
    buyers: dict[str, int] = field(default_factory=dict)  # units bought through this worker
    holding: dict[str, int] = field(default_factory=dict)  # units in flight, per user


class Ledger:
    """What one worker knows of each SKU, and what it decides from memory alone
    (core/_stock.pyx, "Theory of operation")."""

    def __init__(self):
        self.skus: list[SkuLedger] = []

    def add_sku(self, stock, sold, limit, starts_ms, ends_ms, paused) -> int:
        self.skus.append(SkuLedger(stock, sold, limit, starts_ms, ends_ms, paused))
        return len(self.skus) - 1

    def configure(self, idx, stock, limit, starts_ms, ends_ms, paused) -> None:
        s = self.skus[idx]
        s.stock, s.limit, s.starts_ms, s.ends_ms, s.paused = stock, limit, starts_ms, ends_ms, paused

    def set_paused(self, idx: int, paused: bool) -> None:
        self.skus[idx].paused = paused

    def check(self, idx: int, user: str, qty: int, now_ms: int) -> str:
        """What ``reserve`` would answer without an Idempotency-Key; changes nothing."""
        s = self.skus[idx]
        if now_ms < s.starts_ms:
            return "not_started"
        if now_ms >= s.ends_ms:
            return "ended"
        if s.paused:
            return "paused"
        left = s.stock - s.sold
        if left <= 0:
            return "sold_out"  # Redis said no unit is left
        bought = s.buyers.get(user, 0)
        if bought + qty > s.limit:
            return "limit_exceeded"  # whatever happens to the units in flight
        if user in s.holding and bought + s.holding[user] + qty > s.limit:
            return WAIT  # the user's own units in flight may make it limit_exceeded
        if qty <= left - s.inflight:
            return OK
        if s.inflight > 0:
            return WAIT  # units in flight may come back
        return "sold_out"  # nothing in flight, and fewer than qty are left

    def reserve(self, idx: int, user: str, qty: int, now_ms: int, idem: bool) -> str:
        """OK: the units are in flight until ``settle``. With an Idempotency-Key every
        refusal or wait is PROBE: Redis may hold the key's order, which is the answer
        whatever the ledger knows."""
        code = self.check(idx, user, qty, now_ms)
        if code == OK:
            s = self.skus[idx]
            s.inflight += qty
            s.holding[user] = s.holding.get(user, 0) + qty
            return OK
        return PROBE if idem else code

    def settle(self, idx: int, user: str, held: int, sold_qty: int) -> None:
        """Redis answered a reservation: its ``held`` units leave the in-flight count;
        ``sold_qty`` units were sold to ``user`` as a new sale."""
        s = self.skus[idx]
        if held:
            s.inflight -= held
            rest = s.holding.get(user, 0) - held
            if rest > 0:
                s.holding[user] = rest
            else:
                s.holding.pop(user, None)
        if sold_qty:
            s.buyers[user] = s.buyers.get(user, 0) + sold_qty

    def observe(self, idx: int, sold: int, stock: int) -> None:
        s = self.skus[idx]
        s.sold, s.stock = sold, stock

    def left(self, idx: int) -> int:
        s = self.skus[idx]
        return max(0, s.stock - s.sold)

    def state(self, idx: int) -> tuple[int, int, int, bool]:
        """``(stock, sold, inflight, paused)``, as the C ledger's ``state``."""
        s = self.skus[idx]
        return s.stock, s.sold, s.inflight, s.paused

    def bought(self, idx: int, user: str) -> int:
        return self.skus[idx].buyers.get(user, 0)


# ------------------------------------------------------------------- runtimes


@dataclass(eq=False)
class Sku:
    idx: int  # in the ledger
    event: EventState
    definition: events.Sku
    keys: keys.SkuKeys
    waiters: deque = field(default_factory=deque)  # parked requests, in arrival order

    @property
    def id(self) -> str:
        return self.definition.id


@dataclass(eq=False)
class EventState:
    definition: events.Event
    skus: dict[str, Sku] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    reached: dict[int, int] = field(default_factory=dict)  # milestone -> reached_ms, as read

    @property
    def id(self) -> str:
        return self.definition.id

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n


@dataclass(eq=False)
class Purchase:
    """One admitted or parked buy request, until it is answered."""

    sku: Sku
    user: str
    qty: int
    held: int  # units the ledger counts in flight for it (0: a probe)
    fp: str  # its Idempotency-Key's fingerprint ("" without a key)
    idem_key: str | None  # where the key's order is kept (a KEYS entry of the commit)
    fut: asyncio.Future
    order_id: str = ""
    deadline_us: int = 0  # when a parked request gives up (monotonic µs)


class _Flight:
    """The calls of one flush not answered yet."""

    def __init__(self, calls: int):
        self.calls = calls


# ------------------------------------------------------------------- the path


class ReferencePurchase:
    """One worker's purchase path, slowly. ``handle(req)`` takes a buy request and
    returns an ``Answer`` or a Future of one."""

    def __init__(self, cfg: Config, boot: str = "ref000000000"):
        self.cfg = cfg
        self.boot = boot  # this worker's part of its order ids
        self.conn = RedisConnection(cfg.redis, on_connect=scripts.load)
        self.ledger = Ledger()
        self.events: dict[str, EventState] = {}
        self.skus: list[Sku] = []  # by ledger index
        self.tokens = (Tokens(cfg.user_secret.encode(), int(cfg.max_token_ttl) * 1000)
                       if cfg.user_secret else None)
        self.client_ip = ClientIP(cfg.trusted_proxies, cfg.proxy_protocol_from)
        self.ip_limit = Gcra(cfg.ip_rate, cfg.ip_burst)
        self.user_limit = Gcra(cfg.user_rate, cfg.user_burst)
        self.global_limit = Gcra(cfg.global_rate, cfg.global_burst)
        self.clock_ok = True  # this host's clock is in step with Redis TIME
        self.clock_offset_ms = 0
        self.queued = 0  # reservations sent or about to be sent to Redis
        self.waiting = 0  # parked requests
        self.flights = 0  # flushes sent and not fully answered
        self.seq = 0  # order ids made
        self.pending: dict[int, list[Purchase]] = {}  # ledger index -> its next batch
        self.flush_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.conn.connect()

    def close(self) -> None:
        self.conn.close()

    def now_ms(self) -> int:
        """The clock that decides the sale windows: this host's, corrected to Redis TIME."""
        return wall_ms() + self.clock_offset_ms

    # -- events (the operator's) ----------------------------------------------------

    async def define(self, event_id: str, body: dict) -> None:
        """Create or replace an event, as the admin API's PUT does."""
        event = events.parse_event(event_id, body)
        await store.save_event(self.conn, event)  # (reads the pause flag into event.paused)
        ev = self.events.get(event_id)
        if ev is None:
            ev = self.events[event_id] = EventState(event)
        ev.definition = event
        for s in event.skus:
            stock, sold = await self.conn.pipeline([["GET", keys.SkuKeys(event_id, s.id).stock],
                                                    ["GET", keys.SkuKeys(event_id, s.id).sold]])
            sku = ev.skus.get(s.id)
            if sku is None:
                idx = self.ledger.add_sku(int(stock or 0), int(sold or 0), s.per_user_limit,
                                          event.starts_at_ms, event.ends_at_ms, event.paused)
                sku = ev.skus[s.id] = Sku(idx, ev, s, keys.SkuKeys(event_id, s.id))
                self.skus.append(sku)
            else:
                self.ledger.configure(sku.idx, int(stock or 0), s.per_user_limit,
                                      event.starts_at_ms, event.ends_at_ms, event.paused)
                self.ledger.observe(sku.idx, int(sold or 0), int(stock or 0))
                sku.definition = s

    async def set_paused(self, event_id: str, paused: bool) -> None:
        """The kill switch, as the admin API's pause and resume throw it."""
        ev = self.events[event_id]
        await store.set_paused(self.conn, ev.definition, paused)
        for sku in ev.skus.values():
            self.ledger.set_paused(sku.idx, paused)

    def view(self, event_id: str) -> Answer:
        """The public view of an event (counted as a page view)."""
        ev = self.events.get(event_id)
        if ev is None:
            return NOT_FOUND
        ev.count("pv")
        d = ev.definition
        now = self.now_ms()
        skus = []
        for s in d.skus:
            stock, sold, _, _ = self.ledger.state(ev.skus[s.id].idx)
            skus.append({"id": s.id, "name": s.name, "price": s.price,
                         "original_price": s.original_price, "stock": stock,
                         "left": max(0, stock - sold), "sold": sold,
                         "per_user_limit": s.per_user_limit,
                         "tiers": [{"units": u, "price": p} for u, p in s.tiers],
                         "price_now": ladder(s, sold, 1)[0]})
        if now >= d.ends_at_ms:
            state = "ended"
        elif now < d.starts_at_ms:
            preheat = d.preheat_at_ms is not None and now >= d.preheat_at_ms
            state = "preheat" if preheat else "scheduled"
        elif d.paused:
            state = "paused"
        elif all(s["left"] == 0 for s in skus):
            state = "sold_out"
        else:
            state = "live"
        return Answer(200, {
            "id": d.id, "name": d.name, "state": state, "server_time_ms": now,
            "starts_at_ms": d.starts_at_ms, "ends_at_ms": d.ends_at_ms,
            "preheat_at_ms": d.preheat_at_ms, "registration_required": d.registration_required,
            "skus": skus,
            # what this worker last read of the event's reached milestones (the gateway
            # reads them on its refresh tick, which the differential test keeps out)
            "milestones": [{"sold": n, "reward": r, "reached": n in ev.reached,
                            "reached_ms": ev.reached.get(n)} for n, r in d.milestones],
        })

    # -- the buy request ---------------------------------------------------------------

    def user_of(self, req) -> str | None:
        """A token's user; X-User-Id only in dev mode; with neither, nobody."""
        if self.tokens is None:
            return user_of_header(req.headers.get(b"x-user-id")) if self.cfg.dev else None
        auth = req.headers.get(b"authorization")
        # "Bearer" (any case), spaces, the token, then only spaces or tabs
        m = _BEARER.fullmatch(auth) if isinstance(auth, bytes) else None
        if m is None:
            return None
        return self.tokens.user(m.group(1), wall_ms())

    def handle(self, req):
        """``POST /api/v1/events/<id>/buy``: an Answer, or a Future of one."""
        m = _BUY_PATH.fullmatch(req.path)
        if req.method != b"POST" or m is None:
            raise ValueError(f"not a buy request: {req.method!r} {req.path!r}")
        ev = self.events.get(m.group(1))
        if ev is None:  # the router's: a buyer's route (401 first), then 404; not counted
            return UNAUTHENTICATED if self.user_of(req) is None else NOT_FOUND
        ev.count("attempts")
        user = self.user_of(req)
        if user is None:
            ev.count("unauthenticated")
            return UNAUTHENTICATED
        now_us = mono_us()
        wait = self.ip_limit.hit(self.client_ip.of(req.peer_ip, req.headers.get(b"x-forwarded-for")),
                                 now_us)
        if not wait:
            wait = self.user_limit.hit(user, now_us)
        if wait:
            ev.count("rate_limited")
            return rate_limited(wait)
        parsed = parse_body(req.body)
        if isinstance(parsed, Answer):
            ev.count("bad_request")
            return parsed
        sku_id, qty = parsed
        sku = ev.skus.get(sku_id)
        if sku is None:
            ev.count("not_found")
            return NOT_FOUND
        key = req.headers.get(b"idempotency-key")
        if key is not None and not valid_key(key):
            ev.count("bad_request")
            return BAD_KEY
        wait = self.global_limit.hit(None, now_us)
        if wait:
            ev.count("rate_limited")
            return rate_limited(wait)
        if not self.clock_ok:
            ev.count("unavailable")
            return UNAVAILABLE
        if key is not None:
            return self._buy_with_key(sku, user, qty, key.decode("ascii"))
        return self._admit(sku, user, qty, "", None, None)

    def _buy_with_key(self, sku: Sku, user: str, qty: int, key: str) -> asyncio.Future:
        """The key is claimed for the whole event with the request's fingerprint, so the
        same key with another body (even on another SKU) is 422 and a repeat reaches
        Redis, which replays its order. Where the ledger would refuse, the key is only
        looked up: a key never used cannot have an order, and a refusal writes nothing."""
        ev = sku.event
        if qty > sku.definition.per_user_limit:
            code = "limit_exceeded"
        else:
            code = self.ledger.check(sku.idx, user, qty, self.now_ms())
        would_admit = code in (OK, WAIT)
        fp = f"{sku.id}:{qty}"
        claim = keys.event_idem(ev.id, user, key)
        fut = self.loop.create_future()

        def on_reply(reply) -> None:
            if isinstance(reply, Exception) or (reply is None and would_admit):
                ev.count("unavailable")
                fut.set_result(UNAVAILABLE)
            elif reply is None:  # never used: the ledger's refusal stands
                ev.count(code)
                fut.set_result(refusal(code))
            elif not isinstance(reply, bytes) or reply.decode("utf-8", "replace") != fp:
                ev.count("idempotency_mismatch")
                fut.set_result(refusal("idempotency_mismatch"))
            else:
                self._admit(sku, user, qty, fp, sku.keys.idem(user, key), fut)

        if would_admit:
            self.conn.send_many([["SET", claim, fp, "NX", "EX", IDEM_TTL_S], ["GET", claim]],
                                [lambda reply: None, on_reply])
        else:
            self.conn.send(["GET", claim], on_reply)
        return fut

    def _admit(self, sku: Sku, user: str, qty: int, fp: str, idem_key: str | None, fut):
        """The ledger decides: a refusal, a reservation for the next group commit, or
        a parked request."""
        if qty > sku.definition.per_user_limit:  # never possible, whatever was bought
            code = "limit_exceeded"
        else:
            code = self.ledger.reserve(sku.idx, user, qty, self.now_ms(), idem_key is not None)
        if code in (OK, PROBE):
            p = Purchase(sku, user, qty, qty if code == OK else 0, fp, idem_key,
                         fut if fut is not None else self.loop.create_future())
            return self._enqueue(p)
        if code == WAIT:
            return self._park(sku, user, qty, fp, idem_key, fut)
        sku.event.count(code)
        return self._answer(fut, refusal(code))

    def _answer(self, fut, answer: Answer):
        if fut is None:
            return answer
        fut.set_result(answer)
        return fut

    def _park(self, sku: Sku, user: str, qty: int, fp: str, idem_key, fut):
        """Wait (bounded in number and time) for the units in flight."""
        if self.waiting >= self.cfg.wait_queue:
            sku.event.count("unavailable")
            return self._answer(fut, UNAVAILABLE)
        p = Purchase(sku, user, qty, qty, fp, idem_key,
                     fut if fut is not None else self.loop.create_future())
        p.deadline_us = mono_us() + int(self.cfg.wait_timeout * 1e6)
        sku.waiters.append(p)
        self.waiting += 1
        return p.fut

    def retry_waiters(self, sku: Sku) -> None:
        """The SKU's parked requests try again, in arrival order."""
        now = self.now_ms()
        for _ in range(len(sku.waiters)):
            p = sku.waiters.popleft()
            code = self.ledger.reserve(sku.idx, p.user, p.qty, now, False)
            if code == WAIT:
                sku.waiters.append(p)
                continue
            self.waiting -= 1
            if code == OK:
                p.held = p.qty
                self._enqueue(p)
            else:
                sku.event.count(code)
                p.fut.set_result(refusal(code))

    def expire_waiters(self) -> None:
        """Parked requests past their deadline are answered 503."""
        now_us = mono_us()
        for sku in self.skus:
            keep = deque()
            for p in sku.waiters:
                if p.deadline_us > now_us:
                    keep.append(p)
                    continue
                self.waiting -= 1
                sku.event.count("unavailable")
                if not p.fut.done():
                    p.fut.set_result(UNAVAILABLE)
            sku.waiters = keep

    # -- group commit -------------------------------------------------------------------

    def _enqueue(self, p: Purchase) -> asyncio.Future:
        """A reservation joins its SKU's next batch, or is 503 at once when the commit
        queue is full or Redis is away."""
        sku = p.sku
        if self.queued >= self.cfg.commit_queue or not self.conn.connected:
            self.ledger.settle(sku.idx, p.user, p.held, 0)
            sku.event.count("unavailable")
            p.fut.set_result(UNAVAILABLE)
            return p.fut
        self.seq += 1
        p.order_id = f"{sku.event.id}.{sku.id}.{self.boot}{self.seq:x}"
        self.pending.setdefault(sku.idx, []).append(p)
        self.queued += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        return p.fut

    def flush(self) -> None:
        """Send every pending batch: one commit script call per SKU batch, one write."""
        self.flush_scheduled = False
        if self.flights >= self.cfg.commit_flights:
            return  # the end of a flight flushes again
        batches, self.pending = self.pending, {}
        if not batches:
            return
        commands, callbacks = [], []
        flight = _Flight(0)
        for idx, items in batches.items():
            sku = self.skus[idx]
            for i in range(0, len(items), MAX_BATCH):
                chunk = items[i:i + MAX_BATCH]
                commands.append(self._commit_call(sku, chunk))
                callbacks.append(self._on_reply(sku, chunk, flight))
        flight.calls = len(commands)
        self.flights += 1
        self.conn.send_many(commands, callbacks)

    def _commit_call(self, sku: Sku, items: list[Purchase]) -> list:
        # lua/commit.lua: KEYS are the SKU's, then the key of each reservation that has
        # an Idempotency-Key; ARGV: n, then per reservation its
        # order id, user and qty (or "<qty>|<fingerprint>")
        call_keys = sku.keys.commit() + [p.idem_key for p in items if p.idem_key is not None]
        argv: list = [len(items)]
        for p in items:
            argv += reservation_args(p.order_id, p.user, p.qty, p.fp)
        return scripts.COMMIT.args(call_keys, argv)

    def _on_reply(self, sku: Sku, items: list[Purchase], flight: _Flight):
        def on_reply(reply) -> None:
            try:
                self._settle(sku, items, reply)
            finally:
                flight.calls -= 1
                if flight.calls == 0:
                    self.flights -= 1
                    if not self.flush_scheduled:
                        self.flush_scheduled = True
                        self.loop.call_soon(self.flush)
        return on_reply

    def _settle(self, sku: Sku, items: list[Purchase], reply) -> None:
        """Redis answered a batch: settle and answer each reservation, then let the
        SKU's parked requests try again."""
        self.queued -= len(items)
        ev = sku.event
        read = read_commit_reply(reply, len(items))
        if read is None:  # a lost connection, an error, a reply of another shape
            for p in items:
                self.ledger.settle(sku.idx, p.user, p.held, 0)
                if not p.fut.done():
                    p.fut.set_result(UNAVAILABLE)
            ev.count("unavailable", len(items))
        else:
            sold, stock, created, pay_by, parts = read
            # The batch's new orders were sold one after the other from `before` units:
            # the reference prices them itself from the ladder (ladder()), so a 200
            # differs from the gateway's if the script priced a unit otherwise.
            before = sold - sum(p.qty for p, (name, _) in zip(items, parts, strict=True)
                                if name in ("sold", "sold_tiers"))
            for p, (name, values) in zip(items, parts, strict=True):
                if name in ("sold", "sold_tiers"):  # a new order, made now
                    price, breakdown = ladder(sku.definition, before, p.qty)
                    before += p.qty
                    self.ledger.settle(sku.idx, p.user, p.held, p.qty)
                    answer = order_answer(p.order_id, ev.id, sku.id, p.user, p.qty, price,
                                          created, pay_by, breakdown)
                    self._count_sale(ev, p.qty, answer.body["amount"])
                elif name in ("exists", "replay"):  # an order that exists
                    oid, price, qty, o_created, o_pay_by, bd = values
                    answer = order_answer(oid.decode(), ev.id, sku.id, p.user, qty, price,
                                          o_created, o_pay_by, breakdown_of(bd))
                    if name == "exists":  # this very order, from a re-sent batch
                        self.ledger.settle(sku.idx, p.user, p.held, p.qty)
                        self._count_sale(ev, qty, answer.body["amount"])
                    else:  # the key's order, counted when it was made
                        self.ledger.settle(sku.idx, p.user, p.held, 0)
                else:
                    self.ledger.settle(sku.idx, p.user, p.held, 0)
                    if name is not None and OUTCOME_BY_NAME[name].status >= 400:
                        ev.count(name)
                        answer = refusal(name)
                    else:  # (never: a code that is not an answer)
                        answer = UNAVAILABLE
                if not p.fut.done():
                    p.fut.set_result(answer)
            try:
                self.ledger.observe(sku.idx, int(sold), int(stock))
            except (TypeError, ValueError):  # (never: the script's first two figures)
                pass
        self.retry_waiters(sku)

    @staticmethod
    def _count_sale(ev: EventState, qty: int, amount: int) -> None:
        ev.count("orders")
        ev.count("units_sold", qty)
        ev.count("revenue", amount)


def read_commit_reply(reply, n: int):
    """``(sold, stock, created_ms, pay_by_ms, [(outcome name, values)] * n)`` of a commit
    script's reply (lua/commit.lua: four figures, then per reservation its code and,
    for SOLD, the unit price, for SOLD_TIERS, the first unit's price, the amount and the
    breakdown, for EXISTS and REPLAY, the order's id, unit price, qty, created and
    pay-by times and breakdown), or None if the reply has not that shape."""
    if not isinstance(reply, list) or len(reply) < 4:
        return None
    parts = []
    at = 4
    for _ in range(n):
        if at >= len(reply) or type(reply[at]) is not int:
            return None
        outcome = OUTCOME_BY_CODE.get(reply[at])
        name = outcome.name if outcome is not None else None
        width = {"sold": 1, "sold_tiers": 3, "exists": 6, "replay": 6}.get(name, 0)
        parts.append((name, reply[at + 1:at + 1 + width]))
        at += 1 + width
    if at != len(reply):
        return None
    return reply[0], reply[1], reply[2], reply[3], parts
