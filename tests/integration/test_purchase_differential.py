"""The C purchase path against its slow reference (tests/reference/purchase.py), side by
side on random request sequences.

The real ``Gateway`` (built from a ``Config`` as a worker builds it, fed ``Request``s
through ``gateway.handle``) and ``ReferencePurchase`` run on one uvloop loop, each on
its own database of the session's redis-server, with the same events. Hypothesis
draws the SKUs (tiny stock, a price ladder, limits 1-3) and a sequence of steps:

* one buy request at a time, or a group of them in the same loop turn (every
  request handled, then the loop runs until all are answered: batches, parked
  requests and their retries), or such a group whose parked requests meet their
  deadline before the first reply;
* buyers from a small pool, qty 1-4, invalid identities and bodies, unknown SKUs and
  events, Idempotency-Keys from a small pool (repeated, or with another body) and
  malformed ones;
* the operator's pause and resume (the admin API on the gateway, the same writes on
  the reference), a host clock out of step with Redis, the event's public view.

After every step the two must agree on: every answer (status, Retry-After, the error
body; for a 200, the order but for its id and times, which must be consistent
instead: the same order id on one side where the other repeats one, the times of the
order it replays, a pay-by time ``payment_timeout_s`` after its creation), the event
counters, each SKU's ledger state and what each user bought through it, the parked
and queued counts, and the whole of each Redis database but for order ids, times and
the gateway's own statistics. Every test ends with ``check_invariants`` on the
gateway's Redis.

Determinism. Each side decides when a request or one of its Redis replies arrives,
in wire order; which replies the loop happens to read together may group the next
batch otherwise, and that must not change an answer. It cannot for requests without
an Idempotency-Key: a SKU's next batch leaves only once the reply of its last one is
read, so its decisions follow its replies one by one. A request with a key is
admitted when its key's reply is read, while the first batch of its SKU is in
flight: it starts a second one, which requests retried meanwhile join or not
depending on what was read together, and a parked request retried between the two
replies may be decided otherwise than after both (a later, smaller request passes an
earlier one, which then finds the SKU sold out). So within a group the SKUs named by
requests with a key are not named by requests without one, but in groups whose
parked requests all expire before the first reply; between groups anything goes. The
commit queue bound counts every SKU's reservations: in its test only expiring groups
carry keys.

The loop's timers are kept out of the steps: the gateway's refresh tick (it would
reset the clock state a step sets; the gateway is the only writer of its database,
so the tick would learn nothing) and its parked-request expiry run far apart, and a
step expires parked requests on both sides when it means to, with a deadline of 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import pytest
import redis
import uvloop
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from flashgate import auth
from flashgate.config import Config
from flashgate.core import keys, orders
from flashgate.gateway import app as gateway_app
from flashgate.gateway._http import Request
from flashgate.gateway.app import Gateway
from flashgate.gateway.counters import snapshot
from tests.reference.purchase import Answer, ReferencePurchase
from tests.support import ADMIN, check_invariants

SOAK = os.environ.get("FLASHGATE_SOAK") == "1"
C_DB, REF_DB = 12, 13  # (the request-path fuzz harness has 9 and 10)

USERS = ("u0", "u1", "u2", "u3", "u4")
REGISTERED = ("u0", "u1")  # for the event that requires registration
PEERS = ("198.51.100.1", "198.51.100.2", "198.51.100.3")
KEYS = (b"k1", b"k2", b"k3")
BAD_KEYS = (b"", b"two words", b"tab\there", b"x" * 256, b"caf\xc3\xa9", b"del\x7f")
SECRET = "differential-secret"
PAY_S = 600

MAIN, REG, EARLY, LATE, NOPE = "m", "r", "e", "x", "nope"
OTHER_TARGETS = ((REG, "r0"), (EARLY, "e0"), (LATE, "x0"), (NOPE, "s0"))

BAD_BODIES = (
    b"", b"{", b"[1]", b"null", b'"s0"', b'{"qty":1}', b'{"sku":5}', b'{"sku":null}',
    b'{"sku":"s0","qty":0}', b'{"sku":"s0","qty":-2}', b'{"sku":"s0","qty":"2"}',
    b'{"sku":"s0","qty":1.0}', b'{"sku":"s0","qty":true}', b'{"sku":"s0","qty":null}',
    b'{"sku":"s0","qty":100000000000000000000}',  # (orjson reads it as a float)
    b'{"sku":"s0","qty":18446744073709551615}',  # an int far above every limit
    b'\xff{"sku":"s0"}', b'{"sku":"s0","qty":1} x',
)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Buy:
    """One buy request, as data: hypothesis draws it, tokens are signed when it runs."""

    event: str
    who: tuple  # ("user", id) or ("raw", bytes): X-User-Id; ("none",); a token:
    #             ("token", id), ("expired", id), ("forged", id), ("bearer", bytes),
    #             ("lower", id) "bearer ...", ("spaced", id) with blanks around it
    body: bytes
    key: bytes | None = None
    peer: str = PEERS[0]

    def names(self) -> tuple[str, str] | None:
        """The (event, SKU) a valid body names, else None."""
        m = re.fullmatch(rb'\{"sku":"([a-z0-9]+)"(?:,"qty":[0-9]+)?\}', self.body)
        return (self.event, m.group(1).decode()) if m else None


def sku_specs():
    """(stock, per-user limit, price, ladder) per SKU of the main event."""
    ladder = st.lists(st.tuples(st.integers(1, 2), st.integers(5, 90)), max_size=2)
    stock = st.sampled_from([0, 1, 2, 2, 3, 3, 4, 5, 6, 8])
    return st.lists(st.tuples(stock, st.integers(1, 3), st.sampled_from([100, 250]),
                              ladder), min_size=2, max_size=4)


def identities(tokens: bool):
    if not tokens:
        good = [("user", u) for u in USERS]
        bad = [("none",), ("raw", b""), ("raw", b"bad user"), ("raw", b"x" * 65),
               ("raw", b"caf\xc3\xa9"), ("token", "u1")]
    else:
        good = [("token", u) for u in USERS]
        bad = [("none",), ("user", "u1"), ("expired", "u1"), ("forged", "u2"),
               ("bearer", b"abc"), ("bearer", b"u1.9999999999999.00"), ("lower", "u1"),
               ("spaced", "u3")]
    return st.sampled_from(good * 8 + bad)


@st.composite
def buys(draw, main: list, tokens: bool, keyed: set | None):
    """A buy request, mostly on ``main`` (SKUs of the main event). ``keyed``: within a
    group, the (event, SKU) pairs whose valid requests carry an Idempotency-Key, and
    only theirs; None: one request alone."""
    event, sku = draw(st.sampled_from(main * (12 // len(main)) + list(OTHER_TARGETS)))
    kind = draw(st.sampled_from(["qty"] * 6 + ["no_qty", "unknown_sku", "bad"]))
    if kind == "qty":
        qty = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4]))
        body = b'{"sku":"%s","qty":%d}' % (sku.encode(), qty)
    elif kind == "no_qty":
        body = b'{"sku":"%s"}' % sku.encode()
    elif kind == "unknown_sku":
        body = b'{"sku":"zz","qty":1}'
    else:
        body = draw(st.sampled_from(BAD_BODIES))
    b = Buy(event, draw(identities(tokens)), body, None, draw(st.sampled_from(PEERS)))
    named = b.names() if kind in ("qty", "no_qty") else None
    if keyed is not None and named is not None:
        with_key = named in keyed
    else:
        with_key = draw(st.integers(0, 2)) == 0
    if with_key:
        key = draw(st.sampled_from(KEYS * 4 + BAD_KEYS))
        b = Buy(b.event, b.who, b.body, key, b.peer)
    return b


STEP_KINDS = ("one",) * 5 + ("group",) * 4 + ("expire",) * 2 + ("pause", "skew", "view")


@st.composite
def scenarios(draw, *, tokens: bool = False, keyed_groups: bool = True, max_steps: int = 24):
    skus = draw(sku_specs())
    main = [(MAIN, f"s{i}") for i in range(len(skus))]
    steps = []
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(STEP_KINDS))
        if kind == "one":
            steps.append(("one", draw(buys(main, tokens, None))))
        elif kind in ("group", "expire"):
            # a group mostly rushes one or two SKUs: it parks requests on units in flight
            focus = draw(st.lists(st.sampled_from(main), min_size=1, max_size=2, unique=True))
            if kind == "expire":
                keyed = None  # no parked request outlives the first turn: keys anywhere
            elif keyed_groups:
                keyed = draw(st.sets(st.sampled_from(main + list(OTHER_TARGETS))))
            else:
                keyed = set()
            group = draw(st.lists(buys(focus, tokens, keyed), min_size=2, max_size=10))
            steps.append((kind, tuple(group)))
        elif kind in ("pause", "skew"):  # (mostly back to normal: a sale to go on)
            steps.append((kind, draw(st.sampled_from([True, False, False]))))
        else:
            steps.append(("view", draw(st.sampled_from([MAIN, REG, EARLY, NOPE]))))
    return skus, steps


def event_definitions(skus, now: int) -> dict[str, dict]:
    return {
        MAIN: {
            "name": "differential sale", "starts_at_ms": now - 60_000,
            "ends_at_ms": now + 3_600_000, "payment_timeout_s": PAY_S,
            "skus": [{"id": f"s{i}", "name": f"sku {i}", "price": price, "stock": stock,
                      "per_user_limit": limit,
                      "tiers": [{"units": u, "price": p} for u, p in ladder]}
                     for i, (stock, limit, price, ladder) in enumerate(skus)],
            "milestones": [{"sold": 2, "reward": "a tote bag"}],
        },
        REG: {"name": "members", "starts_at_ms": now - 60_000, "ends_at_ms": now + 3_600_000,
              "registration_required": True, "payment_timeout_s": PAY_S,
              "skus": [{"id": "r0", "price": 70, "stock": 2, "per_user_limit": 2}]},
        EARLY: {"name": "later", "starts_at_ms": now + 3_600_000, "ends_at_ms": now + 7_200_000,
                "preheat_at_ms": now - 1000, "payment_timeout_s": PAY_S,
                "skus": [{"id": "e0", "price": 10, "stock": 2, "per_user_limit": 1}]},
        LATE: {"name": "over", "starts_at_ms": now - 7_200_000, "ends_at_ms": now - 3_600_000,
               "payment_timeout_s": PAY_S,
               "skus": [{"id": "x0", "price": 10, "stock": 2, "per_user_limit": 1}]},
    }


# --------------------------------------------------------------------------- answers


def read_answer(raw: bytes) -> tuple[int, dict[str, str], object]:
    """(status, header fields by lower-case name, JSON body) of an HTTP answer."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"not an HTTP answer: {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    assert int(fields["content-length"]) == len(body), raw[:300]
    return status, fields, json.loads(body)


class _Errors(logging.Handler):
    """ERROR records of flashgate.* while a scenario runs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


class Mismatch(AssertionError):
    pass


# --------------------------------------------------------------------------- the pair


class SideBySide:
    """The gateway and the reference, on one loop, each on its own Redis database."""

    def __init__(self, loop, redis_url: str, skus, **cfg):
        base = redis_url.rsplit("/", 1)[0]
        self.loop = loop
        self.c_url, self.r_url = f"{base}/{C_DB}", f"{base}/{REF_DB}"
        self.rc = redis.Redis.from_url(self.c_url)
        self.rr = redis.Redis.from_url(self.r_url)
        self.cfg = dict(admin_token=ADMIN, demo=False, ip_rate=0.0, user_rate=0.0,
                        global_rate=0.0, refresh_interval=3600.0, wait_timeout=0.0,
                        wait_queue=3)
        self.cfg.update(cfg)
        self.cfg["dev"] = not self.cfg.get("user_secret")  # X-User-Id only in dev mode
        self.t0 = int(time.time() * 1000)
        self.events = event_definitions(skus, self.t0)
        self.gw: Gateway | None = None
        self.ref: ReferencePurchase | None = None
        self.c2r: dict[str, str] = {}  # the gateway's order id -> the reference's
        self.r2c: dict[str, str] = {}
        self.times: dict[str, tuple[int, int]] = {}  # order id (either side) -> its times
        self.acked: dict[str, dict] = {}  # the gateway's orders, as first answered
        self.history: list[str] = []
        self.errors = _Errors()
        self.loop_errors: list[str] = []

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> SideBySide:
        self.rc.flushdb()
        self.rr.flushdb()
        self._tick = gateway_app.PARKED_TICK_S
        gateway_app.PARKED_TICK_S = 3600.0  # parked requests expire when a step says so
        logging.getLogger("flashgate").addHandler(self.errors)
        self.loop.set_exception_handler(lambda _, ctx: self.loop_errors.append(str(ctx)))
        self.loop.run_until_complete(self._start())
        return self

    async def _start(self) -> None:
        self.gw = Gateway(Config(redis=self.c_url, **self.cfg), 0)
        await self.gw.start()
        self.ref = ReferencePurchase(Config(redis=self.r_url, **self.cfg))
        await self.ref.start()
        for event_id, body in self.events.items():
            raw = await self._c_answer(self.gw.handle(Request(
                b"PUT", f"/api/v1/admin/events/{event_id}", b"",
                {b"authorization": b"Bearer " + ADMIN.encode()}, json.dumps(body).encode(),
                True, PEERS[0])))
            assert read_answer(raw)[0] == 201, raw
            await self.ref.define(event_id, body)
        for r in (self.rc, self.rr):
            r.sadd(keys.SkuKeys(REG, "r0").reg, *REGISTERED)

    def close(self) -> None:
        try:
            if self.gw is not None:
                self.loop.run_until_complete(self.gw.stop())
            if self.ref is not None:
                self.ref.close()
            self.loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            gateway_app.PARKED_TICK_S = self._tick
            logging.getLogger("flashgate").removeHandler(self.errors)
            self.loop.set_exception_handler(None)
            self.rc.close()
            self.rr.close()

    # -- running steps ------------------------------------------------------------------

    def run(self, steps) -> None:
        for i, step in enumerate(steps):
            self.history.append(f"step {i}: {step!r}")
            try:
                self.loop.run_until_complete(self._step(step))
                self.compare_state()
            except AssertionError as e:
                raise Mismatch("\n".join([*self.history[-12:], str(e)])) from e
            if self.errors.records or self.loop_errors:
                raise Mismatch(f"errors logged at step {i}: {self.errors.records + self.loop_errors}")

    async def _step(self, step) -> None:
        kind, arg = step
        if kind == "one":
            await self._buys((arg,), expire=False)
        elif kind in ("group", "expire"):
            await self._buys(arg, expire=kind == "expire")
        elif kind == "pause":
            raw = await self._c_answer(self.gw.handle(self._admin_request(
                f"/api/v1/admin/events/{MAIN}/{'pause' if arg else 'resume'}")))
            assert read_answer(raw)[0] == 200, raw
            await self.ref.set_paused(MAIN, arg)
        elif kind == "skew":  # this host's clock out of step with Redis TIME, or back
            self.gw.path.clock_ok = not arg
            self.ref.clock_ok = not arg
        elif kind == "view":
            raw = await self._c_answer(self.gw.handle(Request(
                b"GET", f"/api/v1/events/{arg}", b"", {}, b"", True, PEERS[0])))
            self._compare_answer(f"view {arg}", raw, self.ref.view(arg).to_bytes())

    def _admin_request(self, path: str) -> Request:
        return Request(b"POST", path, b"", {b"authorization": b"Bearer " + ADMIN.encode()},
                       b"", True, PEERS[0])

    def request(self, b: Buy) -> Request:
        headers = {}
        kind = b.who[0]
        expires = self.t0 + 3_600_000
        if kind == "user":
            headers[b"x-user-id"] = b.who[1].encode()
        elif kind == "raw":
            headers[b"x-user-id"] = b.who[1]
        elif kind == "token":
            headers[b"authorization"] = b"Bearer " + auth.sign(
                SECRET.encode(), b.who[1], expires).encode()
        elif kind == "expired":
            headers[b"authorization"] = b"Bearer " + auth.sign(
                SECRET.encode(), b.who[1], self.t0 - 1).encode()
        elif kind == "forged":
            headers[b"authorization"] = b"Bearer " + auth.sign(
                b"another secret", b.who[1], expires).encode()
        elif kind == "bearer":
            headers[b"authorization"] = b"Bearer " + b.who[1]
        elif kind == "lower":
            headers[b"authorization"] = b"bearer " + auth.sign(
                SECRET.encode(), b.who[1], expires).encode()
        elif kind == "spaced":
            headers[b"authorization"] = b"Bearer  " + auth.sign(
                SECRET.encode(), b.who[1], expires).encode() + b" \t"
        if b.key is not None:
            headers[b"idempotency-key"] = b.key
        return Request(b"POST", f"/api/v1/events/{b.event}/buy", b"", headers, b.body, True,
                       b.peer)

    async def _c_answer(self, answer) -> bytes:
        return answer if type(answer) is bytes else await answer

    async def _buys(self, group, expire: bool) -> None:
        c_reqs = [self.request(b) for b in group]
        r_reqs = [Request(q.method, q.path, q.query, dict(q.headers), q.body, True, q.peer_ip)
                  for q in c_reqs]
        # the same loop turn: every request is handled before any reply is read
        c_out = [self.gw.handle(q) for q in c_reqs]
        r_out = [self.ref.handle(q) for q in r_reqs]
        if expire:  # the deadline (0) passes before the first reply
            self.gw.path.expire_waiters()
            self.ref.expire_waiters()
        await self._settled(c_out, r_out)
        for b, c, r in zip(group, c_out, r_out, strict=True):
            c_raw = c if type(c) is bytes else c.result()
            r_raw = (r if isinstance(r, Answer) else r.result()).to_bytes()
            self._compare_answer(repr(b), c_raw, r_raw)

    async def _settled(self, c_out, r_out, timeout: float = 10.0) -> None:
        gw, ref = self.gw, self.ref
        deadline = self.loop.time() + timeout
        spins = 0

        def done() -> bool:
            return (all(type(a) is bytes or a.done() for a in c_out)
                    and all(isinstance(a, Answer) or a.done() for a in r_out)
                    and gw.path.queued == gw.path.waiting == gw.committer.flights == 0
                    and ref.queued == ref.waiting == ref.flights == 0)

        while not done():
            if self.loop.time() > deadline:
                raise AssertionError(f"not answered within {timeout} s: gateway queued "
                                     f"{gw.path.queued} waiting {gw.path.waiting}; reference queued "
                                     f"{ref.queued} waiting {ref.waiting}")
            spins += 1
            await asyncio.sleep(0 if spins < 100 else 0.001)

    # -- comparing ----------------------------------------------------------------------

    def _compare_answer(self, what: str, c_raw: bytes, r_raw: bytes) -> None:
        cs, cf, cb = read_answer(c_raw)
        rs, rf, rb = read_answer(r_raw)
        self.history.append(f"  {what}: {cs} {cb}")
        context = f"{what}:\n  gateway   {cs} {cb}\n  reference {rs} {rb}"
        assert (cs, cf.get("content-type"), cf.get("retry-after")) == (
            rs, rf.get("content-type"), rf.get("retry-after")), context
        if cs == 200 and "order_id" in cb:
            self._pair_orders(cb, rb, context)
            times = ("order_id", "created_ms", "pay_by_ms", "updated_ms")
            assert ({k: v for k, v in cb.items() if k not in times}
                    == {k: v for k, v in rb.items() if k not in times}), context
        elif cs == 200 and "server_time_ms" in cb:
            cb.pop("server_time_ms")
            rb.pop("server_time_ms")
            assert cb == rb, context
        else:
            assert cb == rb, context

    def _pair_orders(self, c: dict, r: dict, context: str) -> None:
        co, ro = c["order_id"], r["order_id"]
        for o in (c, r):
            assert o["order_id"].startswith(f"{o['event_id']}.{o['sku']}."), context
        if co in self.c2r or ro in self.r2c:
            # an order made before, on both sides: the same one, with its times
            assert self.c2r.get(co) == ro and self.r2c.get(ro) == co, (
                "one side answers an earlier order, the other another one\n" + context)
            assert (c["created_ms"], c["pay_by_ms"]) == self.times[co], context
            assert (r["created_ms"], r["pay_by_ms"]) == self.times[ro], context
            return
        now = int(time.time() * 1000)
        for o in (c, r):
            assert self.t0 - 2000 <= o["created_ms"] <= now + 2000, context
            assert o["pay_by_ms"] - o["created_ms"] == PAY_S * 1000, context
            self.times[o["order_id"]] = (o["created_ms"], o["pay_by_ms"])
        assert c["updated_ms"] == c["created_ms"], context  # (the reference has none)
        self.c2r[co] = ro
        self.r2c[ro] = co
        self.acked[co] = c

    def compare_state(self) -> None:
        gw, ref = self.gw, self.ref
        assert (gw.path.queued, gw.path.waiting) == (ref.queued, ref.waiting)
        for event_id, body in self.events.items():
            assert snapshot(gw.runtimes.known[event_id]) == ref.events[event_id].counters, (
                f"counters of {event_id}:\n  gateway   {snapshot(gw.runtimes.known[event_id])}"
                f"\n  reference {ref.events[event_id].counters}")
            for s in body["skus"]:
                ci = gw.runtimes.events[event_id].by_id[s["id"]].idx
                ri = ref.events[event_id].skus[s["id"]].idx
                assert gw.ledger.state(ci) == ref.ledger.state(ri), (
                    f"ledger of {event_id}/{s['id']}: gateway {gw.ledger.state(ci)}, "
                    f"reference {ref.ledger.state(ri)}")
                for u in USERS:
                    assert gw.ledger.bought(ci, u) == ref.ledger.bought(ri, u), (
                        f"{u} bought of {event_id}/{s['id']}: gateway {gw.ledger.bought(ci, u)}"
                        f", reference {ref.ledger.bought(ri, u)}")
                assert gw.ledger.pending_count(ci) == 0
        c_state = self._redis_state(self.rc, self.c2r)
        r_state = self._redis_state(self.rr, None)
        if c_state != r_state:
            diff = [f"  {k}:\n    gateway   {c_state.get(k)}\n    reference {r_state.get(k)}"
                    for k in sorted(set(c_state) | set(r_state)) if c_state.get(k) != r_state.get(k)]
            raise AssertionError("Redis differs:\n" + "\n".join(diff[:10]))

    def _redis_state(self, r: redis.Redis, rename: dict[str, str] | None) -> dict:
        """Every key but the gateway's statistics (its counters, HyperLogLogs and
        series), with order ids renamed to the reference's (``rename``) and times
        checked against the orders' and dropped."""
        names = sorted(k for k in r.scan_iter(count=1000)
                       if not k.startswith((b"fg:stats:", b"{fg:stats:"))
                       and not re.match(rb"fg:\{[^}:]+\}:(hll|series):", k))
        pipe = r.pipeline(transaction=False)
        for k in names:
            pipe.type(k)
        types = pipe.execute()
        readers = {b"string": pipe.get, b"hash": pipe.hgetall, b"set": pipe.smembers,
                   b"stream": pipe.xrange}
        for k, t in zip(names, types, strict=True):
            readers[t](k)
        values = pipe.execute()

        def oid(raw: bytes) -> str:
            o = raw.decode()
            if rename is None:
                return o
            assert o in rename, f"order {o} in Redis was never answered"
            return rename[o]

        out = {}
        for name, value in zip(names, values, strict=True):
            k = name.decode()
            if k.endswith(":order_by_id"):
                records = {}
                for o, rec in value.items():
                    status, user, qty, price, created, pay_by, *later = rec.decode().split("|")
                    assert (int(created), int(pay_by)) == self.times[o.decode()], (k, o, rec)
                    records[oid(o)] = (status, user, qty, price, *later)
                value = records
            elif k.endswith("}:milestones"):
                # threshold -> "<reached_ms>|<order id>": the batch's time, its order's.
                # Which order crossed it may differ: the event's units are counted over
                # its SKUs, whose batches in flight together Redis runs in either order.
                reached = {}
                for t, v in value.items():
                    ms, _, o = v.decode().partition("|")
                    assert int(ms) == self.times[o][0], (k, t, v)
                    oid(o.encode())  # an order that was answered
                    reached[t] = True
                value = reached
            elif k.endswith("}:orders"):
                # the orders of every entry, in order (how they are grouped in entries
                # follows the batches, which may differ)
                entries = []
                for _, f in value:
                    kind, ts, found = orders.stream_orders(f)
                    for o, user, qty, price in found:
                        assert ts == self.times[o][0], (k, f)
                        entries.append((kind, oid(o.encode()), user, qty, price))
                value = entries
            elif re.match(r"fg:\{[^}:]+:[^}]+\}:idem:", k):  # a key's order on a SKU
                o, _, fp = value.partition(b"|")
                value = (oid(o), fp)
            elif k.endswith(":sold_out_ms"):
                assert self.t0 - 2000 <= int(value) <= time.time() * 1000 + 2000, (k, value)
                value = "a time"
            elif isinstance(value, set):
                value = sorted(value)
            out[k] = value
        return out

    def check_invariants(self) -> None:
        for event_id, body in self.events.items():
            acked = [o for o in self.acked.values() if o["event_id"] == event_id]
            check_invariants(self.rc, None, event_id, body, acked, exact=True)


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


def _settings(examples: int):
    return settings(max_examples=examples * (20 if SOAK else 1), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def run_scenario(loop, redis_server, scenario, **cfg) -> None:
    skus, steps = scenario
    note(f"skus = {skus!r}\nsteps = [\n" + "".join(f"    {s!r},\n" for s in steps) + "]")
    pair = SideBySide(loop, redis_server.url, skus, **cfg).start()
    try:
        pair.run(steps)
        pair.check_invariants()
    finally:
        pair.close()


def _buy(sku="s0", qty=1, user="u1", key=None, event=MAIN):
    return Buy(event, ("user", user), b'{"sku":"%s","qty":%d}' % (sku.encode(), qty), key)


@_settings(50)
@given(scenario=scenarios())
@example(scenario=(  # parked on units in flight, retried; the queue of parked requests full
    [(2, 2, 100, [(1, 50)]), (5, 3, 250, [])],
    [("group", (_buy(qty=2, user="u0"), _buy(user="u1"), _buy(user="u2"), _buy(user="u3"),
                _buy(user="u4"), _buy("s1", 3, "u0")))]))
@example(scenario=(  # a key replayed in one batch, and across batches; another body: 422
    [(3, 2, 100, []), (3, 2, 100, [])],
    [("group", (_buy(key=b"k1"), _buy(key=b"k1"), _buy("s1", key=b"k1"))),
     ("one", _buy(key=b"k1")), ("one", _buy(qty=2, key=b"k1")), ("pause", True),
     ("one", _buy(key=b"k1")), ("one", _buy(key=b"k2"))]))
@example(scenario=(  # orders across price tiers: alone, in a batch, replayed by their key
    [(8, 3, 250, [(1, 50), (2, 90)]), (4, 3, 100, [(1, 5), (1, 5)])],
    [("one", _buy(qty=2, user="u0", key=b"k1")), ("one", _buy(qty=2, user="u0", key=b"k1")),
     ("group", (_buy(qty=2, user="u1"), _buy(qty=3, user="u2"), _buy("s1", 3, "u3"))),
     ("view", MAIN)]))
def test_differential(loop, redis_server, scenario):
    """Dev identity (X-User-Id), no rate limits."""
    run_scenario(loop, redis_server, scenario)


@_settings(12)
@given(scenario=scenarios(tokens=True, max_steps=16))
def test_differential_buyer_tokens(loop, redis_server, scenario):
    """Buyer tokens (signed with auth.sign; the reference checks them with its own hmac)."""
    run_scenario(loop, redis_server, scenario, user_secret=SECRET)


@_settings(12)
@given(scenario=scenarios(keyed_groups=False, max_steps=16))
def test_differential_commit_queue(loop, redis_server, scenario):
    """At most 3 reservations queued for Redis: beyond, 503 at once."""
    run_scenario(loop, redis_server, scenario, commit_queue=3)


@_settings(12)
@given(scenario=scenarios(max_steps=24))
def test_differential_rate_limits(loop, redis_server, scenario):
    """Per-IP, per-user and global limits with tiny bursts and a rate of one request per
    1000 s. Whether a request passes depends only on how many requests of its IP, user
    or the whole worker came before it, never on when: no bucket earns a request back
    within 1000 s, and a test lasts seconds. The refusal's Retry-After is the wait
    (over 900 s) capped at 60, so it is 60 on both sides too."""
    run_scenario(loop, redis_server, scenario, ip_rate=0.001, ip_burst=5.0,
                 user_rate=0.001, user_burst=3.0, global_rate=0.001, global_burst=8.0)
