"""The whole request path as one checkable function: bytes in -> responses out.

``RequestPath`` owns one uvloop event loop, one real ``Gateway`` (configured as
``worker.py`` configures it, from a ``Config``) connected to a real Redis, and the
``ConnectionRegistry`` / ``HttpLimits`` a worker uses. ``check(plan)`` feeds the
chunks of one ``Plan`` to a NEW ``HttpProtocol`` on an in-memory transport, ends
the connection the way the plan says, runs the loop until every piece of work the
input started is over, and raises ``PathFailure`` when one of these does not hold:

1. nothing escapes: no exception out of the protocol's callbacks, none from
   ``Gateway.handle`` (the protocol would turn it into a 500), nothing reported to
   the loop's exception handler, no ERROR logged by ``flashgate.*`` (failed
   handlers and callbacks are logged there);
2. everything written to the transport is a sequence of well-formed HTTP/1.1
   responses: status line, header fields (token names, no CR/LF in values),
   exactly one ``Content-Length`` and no ``Transfer-Encoding``, a body of that
   length (none for a HEAD request); ``100 Continue`` only as an interim answer;
3. the answers pair with the requests the app received, in order (one answer per
   dispatched request, plus at most one final protocol error after them, which
   carries ``Connection: close``); ``Connection: close`` exactly on an answer to a
   request that does not keep the connection alive and on that final error, and
   nothing after it; nothing written after ``write_eof`` or ``close``;
4. statuses: an app answer is one of the documented ones (docs/API.md) - no 5xx
   other than 503; a protocol error is 400/408/411/413/414/431 or 505 (the
   documented answer to an HTTP version other than 1.0/1.1) - never a 500;
5. JSON bodies parse; every error body is ``{"error": str, "message": str}``; no
   body or head contains a traceback, a source file location or the package's
   directory; a 200 answer matches its request (a buy's order names the path's
   event, the sku and qty of the body and the ``X-User-Id`` user, and amount is
   unit_price * qty, or the sum of its price_breakdown; an event view or order or definition names the id of its
   path); two 200 answers for the same Idempotency-Key (event, user, key) carry
   the same order;
6. no hang: the owed answers are all written within ``timeout`` seconds (an event
   stream, which never ends by itself, is closed first, as a drain would; reading
   is resumed, the connection closes after a client EOF); after the connection
   is lost, every task and future the input started is done, the gateway has no
   reservation queued or parked and no commit in flight, and the registry has
   forgotten the connection - within the same bound.

Placeholders in the input: ``{order}`` becomes the id of the last order this
harness saw acknowledged (or a well-formed unknown one), since order ids carry a
per-process random part no input could guess.

The state is shared across inputs (that is the point: the Redis data, the
ledger, the limiter, the caches), so a failure may depend on what ran before;
``reset()`` (FLUSHDB, a refresh tick, the base event again) bounds that history, and
``check_store()`` verifies the stock invariants of every event in Redis.

Used by ``tests/fuzz/fuzz_request_path.py`` (atheris) and
``tests/integration/test_request_path_fuzz.py`` (hypothesis).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace

import orjson
import uvloop

import flashgate
from flashgate.auth import admin_ok
from flashgate.config import Config
from flashgate.embedded import EmbeddedRedis
from flashgate.gateway._net import NetSet
from flashgate.gateway.app import Gateway
from flashgate.gateway.handlers.pages import ASSET_TYPES
from flashgate.gateway.protocol import ConnectionRegistry, HttpLimits, HttpProtocol, Stream

ADMIN = "fuzz-admin-token"
EVENT = "fz"
AUTH = b"Authorization: Bearer " + ADMIN.encode()
PEER = "203.0.113.9"  # a direct client
BALANCER = "10.1.2.3"  # a load balancer: sends a PROXY header first, trusted for X-Forwarded-For
BALANCERS = "10.0.0.0/8"

# What the app may answer (docs/API.md), and what the protocol may refuse with.
APP_STATUSES = {200, 201, 400, 401, 404, 405, 409, 422, 429, 503}
PROTOCOL_STATUSES = {400, 408, 411, 413, 414, 431, 505}
ENDINGS = ("eof", "wait", "reset")

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-9][0-9][0-9]) ([\t \x21-\x7e\x80-\xff]*)")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?([\t \x21-\x7e\x80-\xff]*)")
_SOURCE_LOCATION = re.compile(rb'\.pyx?", line [0-9]')
_PACKAGE_DIR = os.path.dirname(os.path.abspath(flashgate.__file__)).encode()
_LEAKS = (b"Traceback (most recent call last)", b"<flashgate.", b" object at 0x", _PACKAGE_DIR)


# The base event's window: started long ago, ends in 2096 (fixed, so that an input
# can replace the definition without moving the start, which is a 409).
STARTS_MS = 1_700_000_000_000
ENDS_MS = 4_000_000_000_000


def event_definition() -> dict:
    """The base event: live, a small SKU (sells out) and a large one with a price
    ladder; milestones, a preheat time."""
    return {
        "name": "fuzz sale",
        "starts_at_ms": STARTS_MS,
        "ends_at_ms": ENDS_MS,
        "preheat_at_ms": STARTS_MS - 3_600_000,
        "skus": [
            {"id": "s0", "name": "rare", "price": 990, "original_price": 2990, "stock": 3,
             "per_user_limit": 1},
            {"id": "s1", "name": "common", "price": 100, "stock": 100_000, "per_user_limit": 5,
             "tiers": [{"units": 2, "price": 1}]},
        ],
        "milestones": [{"sold": 2, "reward": "a tote bag"}, {"sold": 50, "reward": "a cup"}],
    }


class PathFailure(AssertionError):
    """A property of the request path does not hold for this input."""


@dataclass
class Plan:
    """One connection: the byte chunks as they arrive, and how the client behaves."""

    chunks: list[bytes]
    ending: str = "eof"  # eof: half-close after the last chunk; wait: read every answer,
    #                       then reset; reset: reset right after the last chunk
    yield_between: bool = False  # one loop turn between chunks
    patient: bool = False  # wait for every owed answer before the next chunk
    behind_proxy: bool = False  # the peer is a load balancer: a PROXY header comes first

    def data(self) -> bytes:
        return b"".join(self.chunks)


_STEPS = (0, 1, 2, 3, 5, 8, 17, 64)  # 0: one chunk


def plan_from_bytes(data: bytes) -> Plan:
    """A fuzzer's input as a plan: the first byte chooses, the rest is the stream.

    bits 0-2: chunk size (whole, 1, 2, 3, 5, 8, 17, 64 bytes); bit 3: one loop
    turn between chunks; bits 4-5: ending (eof, wait, reset, eof); bit 6: from a
    load balancer (PROXY header first); bit 7: patient client."""
    if not data:
        return Plan([])
    ctl, payload = data[0], data[1:]
    step = _STEPS[ctl & 7]
    if step and payload:
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)]
    else:
        chunks = [payload] if payload else []
    return Plan(
        chunks,
        ending=("eof", "wait", "reset", "eof")[(ctl >> 4) & 3],
        yield_between=bool(ctl & 8),
        behind_proxy=bool(ctl & 64),
        patient=bool(ctl & 128),
    )


def control_byte(step: int = 0, *, ending: str = "eof", yield_between: bool = False,
                 behind_proxy: bool = False, patient: bool = False) -> int:
    """The first byte of a fuzzer input that ``plan_from_bytes`` reads as these options."""
    return (_STEPS.index(step) | (8 if yield_between else 0) | (ENDINGS.index(ending) << 4)
            | (64 if behind_proxy else 0) | (128 if patient else 0))


# --------------------------------------------------------------------------- transport


class FakeTransport:
    """An in-memory ``asyncio.Transport``: records writes, tracks reading and closing,
    and delivers ``connection_lost`` once, on the next loop turn, like uvloop."""

    def __init__(self, loop, peer: str) -> None:
        self.loop = loop
        self.peer = peer
        self.proto = None
        self.writes: list[bytes] = []
        self.reading = True
        self.eof = False  # write_eof() called
        self.closed = False  # close() / abort() called, or the peer reset
        self.lost = False  # connection_lost delivered
        self.violations: list[str] = []

    def get_extra_info(self, name, default=None):
        return (self.peer, 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data) -> None:
        if self.closed or self.eof:
            self.violations.append(f"write after {'close' if self.closed else 'write_eof'}: "
                                   f"{bytes(data)[:80]!r}")
            return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            self.violations.append(f"write of {type(data).__name__}")
            return
        self.writes.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.closed or self.eof:
            self.violations.append("write_eof after close or write_eof")
        self.eof = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._deliver_lost, None)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._deliver_lost, None)

    def peer_reset(self) -> None:
        """The client went away (RST): connection_lost now."""
        self.closed = True
        self._deliver_lost(ConnectionResetError("connection reset by peer"))

    def _deliver_lost(self, exc) -> None:
        if not self.lost:
            self.lost = True
            self.proto.connection_lost(exc)

    def pause_reading(self) -> None:
        if not self.closed:
            self.reading = False

    def resume_reading(self) -> None:
        if not self.closed:
            self.reading = True


class Recorder:
    """The app the protocol sees: the real Gateway, with its requests and futures noted."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.requests: list = []
        self.futures: list = []
        self.errors: list[str] = []

    def handle(self, req):
        self.requests.append(req)
        try:
            answer = self.gateway.handle(req)
        except Exception as exc:
            self.errors.append(f"Gateway.handle({req!r}) raised {exc!r}")
            raise
        if type(answer) is not bytes and callable(getattr(answer, "done", None)):
            self.futures.append(answer)  # a Future, or the protocol's lighter Pending
        return answer


class _ErrorLog(logging.Handler):
    """ERROR records logged while ``loop`` runs (other harnesses' loops are not ours)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.loop = None
        self.records: list[str] = []
        self.stalls = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if asyncio.get_running_loop() is not self.loop:
                return
        except RuntimeError:
            return
        msg = record.getMessage()
        if record.name == "flashgate.redis" and msg.startswith("Redis has not answered"):
            self.stalls += 1  # the loop did not run for a while (between inputs): not ours
            return
        text = f"{record.name}: {msg}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({record.exc_info[1]!r})"
        self.records.append(text)


# --------------------------------------------------------------------------- responses


@dataclass
class Response:
    status: int
    headers: dict[bytes, list[bytes]]  # lower-case name -> values
    body: bytes
    request: object = None  # the Request it answers; None for a protocol error

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[-1] if values else None


def parse_responses(data: bytes, requests: list) -> list[Response]:
    """The responses in ``data``, paired with ``requests`` in order (interim 100
    Continue answers are checked and skipped). Every write holds whole answers, so
    a stream cut by a reset still parses to the end."""
    out: list[Response] = []
    pos = 0
    n = len(data)
    while pos < n:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise PathFailure(f"a response head is cut short at byte {pos}: {data[pos:pos + 200]!r}")
        lines = data[pos:end].split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise PathFailure(f"malformed status line {lines[0][:200]!r} at byte {pos}")
        status = int(m.group(1))
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            f = _FIELD.fullmatch(line)
            if f is None:
                raise PathFailure(f"malformed header field {line[:200]!r} (status {status})")
            headers.setdefault(f.group(1).lower(), []).append(f.group(2))
        pos = end + 4
        if status < 200:
            if status != 100 or headers:
                raise PathFailure(f"unexpected interim response {data[:end][-200:]!r}")
            continue
        req = requests[len(out)] if len(out) < len(requests) else None
        if b"transfer-encoding" in headers:
            # only an event stream is chunked: a 200 without Content-Length, its chunks
            # up to the last one (a HEAD request's: the head alone)
            if (status != 200 or headers[b"transfer-encoding"] != [b"chunked"]
                    or b"content-length" in headers
                    or headers.get(b"content-type") != [b"text/event-stream"]):
                raise PathFailure(f"Transfer-Encoding in a response (status {status})")
            body = b""
            while req is None or req.method != b"HEAD":
                if pos == n:
                    break  # cut by the connection's end while open (at a chunk's end)
                eol = data.find(b"\r\n", pos)
                if eol < 0 or not re.fullmatch(rb"[0-9a-f]+", data[pos:eol]):
                    raise PathFailure(f"a malformed chunk at byte {pos}: {data[pos:pos + 80]!r}")
                size = int(data[pos:eol], 16)
                chunk = data[eol + 2: eol + 2 + size]
                if len(chunk) < size or data[eol + 2 + size: eol + 4 + size] != b"\r\n":
                    raise PathFailure(f"a chunk cut short at byte {pos}")
                pos = eol + 4 + size
                if size == 0:
                    break
                body += chunk
            out.append(Response(status, headers, body, req))
            continue
        lengths = headers.get(b"content-length", [])
        if (not lengths and status == 200 and headers.get(b"connection") == [b"close"]
                and headers.get(b"content-type") == [b"text/event-stream"]):
            # an event stream to an HTTP/1.0 client: the body ends with the connection
            size = 0 if req is not None and req.method == b"HEAD" else n - pos
            out.append(Response(status, headers, data[pos:pos + size], req))
            pos += size
            continue
        if len(lengths) != 1 or not lengths[0].isdigit():
            raise PathFailure(f"status {status}: Content-Length must appear once, got {lengths!r}")
        if len(headers.get(b"connection", [])) > 1:
            raise PathFailure(f"status {status}: several Connection fields")
        size = 0 if req is not None and req.method == b"HEAD" else int(lengths[0])
        body = data[pos : pos + size]
        if len(body) < size:
            raise PathFailure(f"status {status}: body of {len(body)} bytes, Content-Length {size}")
        pos += size
        out.append(Response(status, headers, body, req))
    return out


def _json(resp: Response):
    try:
        return orjson.loads(resp.body)
    except orjson.JSONDecodeError as exc:
        raise PathFailure(f"status {resp.status}: body is not JSON ({exc}): {resp.body[:200]!r}") from None


def _path_parts(req) -> list[str]:
    return req.path.split("/")


# --------------------------------------------------------------------------- harness


@dataclass
class Outcome:
    """What one input did (for statistics and the tests' own assertions)."""

    responses: list[Response] = field(default_factory=list)
    dispatched: int = 0
    closed_by_server: bool = False


def _end_streams(proto) -> None:
    """Close the streams a connection answers with (the event stream's never ends by
    itself): what is owed after them is then written."""
    for entry in list(proto._queue or ()):
        if type(entry) is Stream:
            entry.close()


class RequestPath:
    """One loop, one Gateway, one Redis; ``check(plan)`` per input (see the module doc)."""

    def __init__(self, redis_url: str | None = None, *, timeout: float = 5.0,
                 reset_every: int = 0, max_events: int = 0, data_dir: str | None = None):
        self.redis_url = redis_url
        self.timeout = timeout
        self.reset_every = reset_every  # reset() after this many inputs (0: never)
        self.max_events = max_events  # reset() when more events than this exist (0: never)
        self.data_dir = data_dir
        self.redis_server = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gateway: Gateway | None = None
        self.registry: ConnectionRegistry | None = None
        self.loop_errors: list[str] = []
        self.errors = _ErrorLog()
        self.acked: dict[str, dict] = {}  # order id -> order, of every 200 buy answer seen
        self.idem: dict[tuple, str] = {}  # (event, user, key) -> order id
        self.last_order = f"{EVENT}.s1.0"
        self.inputs = 0
        self.since_reset = 0
        self.resets = 0
        self.statuses: dict[int, int] = {}

    # ---------------------------------------------------------------- life cycle

    def start(self) -> RequestPath:
        if self.redis_url is None:
            where = self.data_dir
            if where is None:  # a directory of its own, removed when it closes
                where = self._tmp = tempfile.mkdtemp(prefix="flashgate-fuzz-redis-")
            self.redis_server = EmbeddedRedis(where, persist=False, die_with_parent=True).start()
            self.redis_url = self.redis_server.url
        self.cfg = Config(
            redis=self.redis_url, admin_token=ADMIN, demo=False, dev=True,
            ip_rate=0.0, user_rate=0.0,  # as the tests run it: every buy reaches the ledger
            trusted_proxies=BALANCERS, proxy_protocol_from=BALANCERS,
        )
        self.loop = uvloop.new_event_loop()  # run by run_until_complete: never made current
        self.loop.set_exception_handler(self._on_loop_error)
        self.errors.loop = self.loop
        logger = logging.getLogger("flashgate")
        logger.addHandler(self.errors)
        self.loop.run_until_complete(self._start())
        return self

    async def _start(self) -> None:
        cfg = self.cfg
        # as worker._serve does
        self.gateway = Gateway(cfg, 0)
        await self.gateway.start()
        self.limits = HttpLimits(
            max_body=cfg.max_body, keepalive_timeout=cfg.keepalive_timeout,
            head_timeout=cfg.head_timeout, max_connections=cfg.max_connections,
            proxy_protocol_from=NetSet(cfg.proxy_protocol_from),
        )
        self.registry = ConnectionRegistry()
        self.registry.start(self.loop)
        await self.gateway.conn.execute("FLUSHDB")
        await self._load_event()

    async def _load_event(self) -> None:
        body = orjson.dumps(event_definition())
        raw = (b"PUT /api/v1/admin/events/" + EVENT.encode() + b" HTTP/1.1\r\nHost: t\r\n" + AUTH
               + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        outcome = await self._run(Plan([raw], ending="wait"))
        if [r.status for r in outcome.responses] not in ([201], [200]):
            raise RuntimeError(f"cannot load the base event: {outcome.responses!r}")

    def reset(self) -> None:
        """Check the store, then start over: FLUSHDB, a refresh tick, the base event."""
        self.check_store()
        self.loop.run_until_complete(self._reset())

    async def _reset(self) -> None:
        await self.gateway.conn.execute("FLUSHDB")
        # As in life, the gateway notices that Redis lost its data (a refresh tick)
        # before anyone re-creates the event. (Re-creating it at once with a lower
        # per-user limit once answered 500: now a regression test of its own,
        # test_recreating_an_event_with_a_lower_limit_after_redis_lost_its_data.)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0 + 20 * self.cfg.refresh_interval
        while EVENT in self.gateway.runtimes.events:
            if loop.time() > deadline:
                raise AssertionError("the gateway never noticed that Redis lost the event")
            await asyncio.sleep(self.cfg.refresh_interval / 4)
        await self._load_event()
        self.acked.clear()
        self.idem.clear()
        self.last_order = f"{EVENT}.s1.0"
        self.since_reset = 0
        self.resets += 1

    def close(self) -> None:
        if self.loop is None:
            return
        try:
            self.registry.stop()
            self.loop.run_until_complete(self.gateway.stop())
            self.loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            logging.getLogger("flashgate").removeHandler(self.errors)
            self.loop.close()
            self.loop = None
            if self.redis_server is not None:
                self.redis_server.stop()
            if getattr(self, "_tmp", None):
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _on_loop_error(self, loop, context) -> None:
        exc = context.get("exception")
        self.loop_errors.append(f"{context.get('message')}: {exc!r}")

    # ---------------------------------------------------------------- store

    def check_store(self) -> dict:
        """The stock invariants (tests/support.py ``check_invariants``) of every event in
        Redis, with every order this harness saw acknowledged; figures per event."""
        import redis

        from tests.support import check_invariants

        client = redis.Redis.from_url(self.redis_url)
        try:
            figures = {}
            for raw_id in sorted(client.smembers("fg:events")):
                event_id = raw_id.decode()
                definition = orjson.loads(client.get("fg:event:" + event_id))
                acked = [o for o in self.acked.values() if o["event_id"] == event_id]
                figures[event_id] = check_invariants(client, None, event_id, definition, acked,
                                                     exact=False)
            return figures
        finally:
            client.close()

    # ---------------------------------------------------------------- one input

    def check_bytes(self, data: bytes) -> Outcome:
        """``check(plan_from_bytes(data))``."""
        return self.check(plan_from_bytes(data))

    def check(self, plan: Plan) -> Outcome:
        if (self.reset_every and self.since_reset >= self.reset_every) or (
            self.max_events and len(self.gateway.runtimes.events) > self.max_events
        ):
            self.reset()
        self.inputs += 1
        self.since_reset += 1
        order = self.last_order.encode()
        if any(b"{order}" in c for c in plan.chunks):
            data = plan.data().replace(b"{order}", order)
            # keep the chunking (sizes may change where a placeholder was)
            cuts, at = [], 0
            for c in plan.chunks[:-1]:
                at += len(c) + c.count(b"{order}") * (len(order) - len(b"{order}"))
                cuts.append(at)
            bounds = [0, *cuts, len(data)]
            plan = replace(plan, chunks=[data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        return self.loop.run_until_complete(self._run(plan))

    async def _until(self, ready, deadline: float, what: str, plan: Plan) -> None:
        spins = 0
        loop = self.loop
        while not ready():
            if loop.time() > deadline:
                raise PathFailure(f"hang: {what} after {self.timeout} s")
            spins += 1
            await asyncio.sleep(0 if spins < 200 else 0.001)

    async def _run(self, plan: Plan) -> Outcome:
        self._raise_pending("before the input")
        rec = Recorder(self.gateway)
        tr = FakeTransport(self.loop, BALANCER if plan.behind_proxy else PEER)
        proto = HttpProtocol(rec, self.limits, self.registry)
        tr.proto = proto
        try:
            return await self._connection(plan, rec, tr, proto)
        finally:
            if not tr.lost:  # a failure: do not leave the connection to the next input
                try:
                    tr.peer_reset()
                except Exception:
                    pass

    async def _connection(self, plan: Plan, rec: Recorder, tr: FakeTransport, proto) -> Outcome:
        loop = self.loop
        proto.connection_made(tr)
        deadline = loop.time() + self.timeout

        def owed_written() -> bool:
            # every owed answer written; a closing connection has finished too (an
            # event stream never ends by itself: it is ended as a drain would)
            _end_streams(proto)
            return tr.closed or (not proto._queue and not (proto._closing and not tr.eof))

        for chunk in plan.chunks:
            if tr.closed:
                break
            if not tr.reading:
                await self._until(lambda: _end_streams(proto) or tr.reading or tr.closed,
                                  deadline, "reading never resumed", plan)
                if tr.closed:
                    break
            proto.data_received(chunk)
            if plan.patient:
                await self._until(owed_written, deadline, "answers not written", plan)
            elif plan.yield_between:
                await asyncio.sleep(0)

        if plan.ending == "eof":
            if not tr.closed:
                await self._until(lambda: _end_streams(proto) or tr.reading or tr.closed,
                                  deadline, "reading never resumed to see the EOF", plan)
            _end_streams(proto)
            if not tr.closed and not proto.eof_received():
                tr.close()
            await self._until(lambda: tr.lost, deadline,
                              "the connection never closed after the client's EOF", plan)
        elif plan.ending == "wait":
            await self._until(owed_written, deadline, "answers not written", plan)
            if not tr.lost:
                tr.peer_reset()
        else:
            if not tr.lost:
                tr.peer_reset()

        # after the connection is lost: everything the input started must end
        gw = self.gateway
        conn = gw.conn
        me = asyncio.current_task()

        def quiet() -> bool:
            if (gw.path.queued or gw.path.waiting or gw.committer.flights
                    or gw.path.flush_scheduled):
                return False
            if not all(f.done() for f in rec.futures):
                return False
            background = set(gw._tasks)
            background.add(getattr(conn, "_reconnect_task", None))
            background.add(me)
            return all(t in background or t.done() for t in asyncio.all_tasks(loop))

        await self._until(quiet, deadline, "work still running after the connection was lost",
                          plan)
        if len(self.registry):
            raise PathFailure("the registry still holds a lost connection")
        await asyncio.sleep(0)  # done callbacks of the last futures
        self._raise_pending("during the input", rec)
        if tr.violations:
            raise PathFailure("transport misuse: " + "; ".join(tr.violations))
        return self._check_output(plan, tr, rec)

    def _raise_pending(self, when: str, rec: Recorder | None = None) -> None:
        problems = []
        if rec is not None:
            problems += rec.errors
        problems += self.loop_errors + self.errors.records
        if problems:
            self.loop_errors.clear()
            self.errors.records.clear()
            raise PathFailure(f"errors {when}: " + " | ".join(problems))

    # ---------------------------------------------------------------- output

    def _check_output(self, plan: Plan, tr: FakeTransport, rec: Recorder) -> Outcome:
        data = b"".join(tr.writes)
        for leak in _LEAKS:
            if leak in data:
                raise PathFailure(f"internals leak in the output: {leak!r}")
        if _SOURCE_LOCATION.search(data):
            raise PathFailure("a source file location in the output")
        complete = plan.ending != "reset"
        responses = parse_responses(data, rec.requests)
        n_req = len(rec.requests)
        answers = responses[:n_req]
        extra = responses[n_req:]
        if len(extra) > 1:
            raise PathFailure(f"{len(extra)} responses beyond the {n_req} requests dispatched")
        if complete and len(answers) < n_req:
            # the client stayed until every answer was written (or half-closed, which
            # must not drop owed answers either)
            raise PathFailure(f"{n_req} requests dispatched, only {len(answers)} answered")
        for i, resp in enumerate(responses):
            last = i == len(responses) - 1
            conn = resp.header(b"connection")
            if conn is not None and conn.lower() not in (b"close", b"keep-alive"):
                raise PathFailure(f"Connection: {conn!r}")
            closes = conn is not None and conn.lower() == b"close"
            if closes and not last:
                raise PathFailure(f"response {i} says Connection: close, and more follow")
            self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
            if resp.request is None:
                if resp.status not in PROTOCOL_STATUSES:
                    raise PathFailure(f"protocol error status {resp.status}: {resp.body[:300]!r}")
                if not closes:
                    raise PathFailure(f"protocol error {resp.status} without Connection: close")
                self._check_body(resp)
                continue
            req = resp.request
            if resp.status not in APP_STATUSES:
                raise PathFailure(f"status {resp.status} for {req!r}: {resp.body[:300]!r}")
            # (an event stream to an HTTP/1.0 client is close-delimited: it closes even
            # when asked to keep alive)
            close_delimited = (resp.header(b"content-type") == b"text/event-stream"
                               and resp.header(b"content-length") is None
                               and resp.header(b"transfer-encoding") is None)
            if closes != (not req.keep_alive) and not (closes and close_delimited):
                raise PathFailure(f"{req!r} keep_alive={req.keep_alive}, answer Connection: {conn!r}")
            if req.method != b"HEAD":
                self._check_body(resp)
                if resp.status in (200, 201):
                    self._check_pairing(resp)
        if responses and complete:
            final = responses[-1].header(b"connection")
            if final is not None and final.lower() == b"close" and not (tr.eof or tr.closed):
                raise PathFailure("Connection: close answered, but the connection stays open")
        return Outcome(responses, n_req, tr.eof)

    def _check_body(self, resp: Response) -> None:
        ctype = resp.header(b"content-type")
        if ctype == b"application/x-ndjson":
            for line in resp.body.splitlines():
                orjson.loads(line)
            return
        if ctype == b"text/plain; version=0.0.4; charset=utf-8":  # GET /metrics
            if resp.status != 200 or not resp.body.startswith(b"# HELP flashgate_"):
                raise PathFailure(f"status {resp.status}: metrics body {resp.body[:300]!r}")
            return
        if ctype == b"text/event-stream":  # whole events, each with a known name
            if resp.body and not resp.body.endswith(b"\n\n"):
                raise PathFailure(f"an event stream cut inside an event: {resp.body[-200:]!r}")
            for block in filter(None, resp.body.split(b"\n\n")):
                for line in block.split(b"\n"):
                    name, _, value = line.partition(b": ")
                    if name == b"event" and value not in (b"state", b"stock", b"order",
                                                          b"milestone"):
                        raise PathFailure(f"unknown stream event {value!r}")
                    if name == b"data":
                        orjson.loads(value)
            return
        if ctype == b"text/html; charset=utf-8":  # a page, the report's, or a 404 page
            body = resp.body
            if resp.header(b"content-encoding") == b"gzip":
                body = gzip.decompress(body)
            if resp.status not in (200, 404) or not body.startswith(b"<!doctype html>"):
                raise PathFailure(f"status {resp.status}: html body {body[:200]!r}")
            return
        if ctype in ASSET_TYPES.values():  # GET /assets/{name}
            if resp.status != 200:
                raise PathFailure(f"status {resp.status}: an asset's {ctype!r}")
            return
        if ctype != b"application/json":
            raise PathFailure(f"status {resp.status}: Content-Type {ctype!r}")
        doc = _json(resp)
        if resp.status >= 400:
            if (type(doc) is not dict or set(doc) != {"error", "message"}
                    or type(doc["error"]) is not str or type(doc["message"]) is not str):
                raise PathFailure(f"status {resp.status}: error body {resp.body[:300]!r}")

    def _check_pairing(self, resp: Response) -> None:
        req = resp.request
        parts = _path_parts(req)
        if resp.header(b"content-type") != b"application/json":
            return
        doc = _json(resp)
        path = req.path
        if path.startswith("/api/v1/events/") and len(parts) == 6 and parts[5] == "buy":
            self._check_order(req, parts[4], doc)
        elif path.startswith("/api/v1/events/") and len(parts) == 5:
            if doc.get("id") != parts[4]:
                raise PathFailure(f"view of {parts[4]!r} answered with event {doc.get('id')!r}")
            for sku in doc["skus"]:
                if sku["left"] != max(0, sku["stock"] - sku["sold"]) or sku["left"] < 0:
                    raise PathFailure(f"inconsistent sku in the view: {sku}")
        elif path.startswith("/api/v1/orders/"):
            if doc.get("order_id") != parts[4]:
                raise PathFailure(f"order {parts[4]!r} answered with {doc.get('order_id')!r}")
            if not admin_ok(req.headers.get(b"authorization"), ADMIN.encode()):
                uid = req.headers.get(b"x-user-id", b"").decode("ascii", "replace")
                if doc.get("user_id") != uid:
                    raise PathFailure(f"order of {doc.get('user_id')!r} shown to {uid!r}")
        elif path.startswith("/api/v1/admin/events/") and len(parts) == 6:
            if doc.get("id") != parts[5]:
                raise PathFailure(f"definition of {parts[5]!r} answered with {doc.get('id')!r}")

    def _check_order(self, req, event_id: str, doc) -> None:
        try:
            body = orjson.loads(req.body)
            sku, qty = body["sku"], body.get("qty", 1)
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise PathFailure(f"200 for a buy the app should refuse: {req.body[:200]!r}") from exc
        uid = req.headers.get(b"x-user-id", b"").decode("ascii", "replace")
        want = {"event_id": event_id, "sku": sku, "user_id": uid, "qty": qty,
                "status": "reserved"}
        got = {k: doc.get(k) for k in want}
        parts = doc.get("price_breakdown")  # an order across price tiers: the exact sum
        amount = (sum(p["qty"] * p["unit_price"] for p in parts) if parts
                  else doc.get("unit_price", 0) * qty)
        if got != want or doc.get("amount") != amount or (
                parts and sum(p["qty"] for p in parts) != qty):
            raise PathFailure(f"order {doc} does not match the buy {want}")
        oid = doc["order_id"]
        self.acked[oid] = doc
        self.last_order = oid
        key = req.headers.get(b"idempotency-key")
        if key is not None:
            seen = self.idem.setdefault((event_id, uid, key), oid)
            if seen != oid:
                raise PathFailure(f"Idempotency-Key {key!r} of {uid!r}: orders {seen} and {oid}")
