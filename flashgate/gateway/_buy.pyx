# cython: freethreading_compatible=False
"""The purchase, in C: one implementation for every configuration a worker runs.

Theory of operation
===================

Every request reaches ``BuyPath.handle``. One dict lookup finds its path's
``Target`` (routing.py compiles the route table into them); a ``POST`` to an
event's buy path stays here, everything else goes to the router's Python
(``router.dispatch``), the one Python entry.

A buy request is decided in this order, each step counted in its event's counters
(``EventCore``) and answered with pre-encoded bytes when it refuses:

1. identity: a signed buyer token (``Authorization: Bearer``, HMAC-SHA256 checked in
   C by ``_token.TokenKey``), or, in dev mode only, ``X-User-Id`` -> 401;
2. rate limits: the client IP's and the user's GCRA buckets (``limiter/_gcra.pxd``,
   cimported), the client IP being the connection's peer or, behind a trusted
   proxy, the right-most untrusted ``X-Forwarded-For`` hop (``_net.pyx``) -> 429;
3. the body: ``{"sku", "qty"}`` (parsed once per distinct small body, then cached)
   -> 400 / 404; a malformed ``Idempotency-Key`` -> 400;
4. the global admission rate -> 429; this host's clock out of step with Redis
   TIME -> 503;
5. the ledger (``core/_stock.pyx``) decides from memory: a refusal it *knows*
   (409), ``WAIT`` (the request is parked on the SKU until a batch of this worker
   settles, bounded in number and time: 503 beyond), or admitted: a ``Purchase``
   joins its SKU's batch and the answer is a ``Pending`` that the commit reply
   resolves (gateway/committer.py and _commit.pyx). The first purchase of a loop
   turn schedules the group commit (``flush``).

A request with an ``Idempotency-Key`` takes one Redis round trip before the ledger
admits it: the key is claimed event-wide with the request's fingerprint (``SET NX``,
then ``GET``), or, when the ledger would refuse, only looked up (a key never used
cannot have an order, so a refusal writes nothing). The same key with another body
is 422; a key whose order exists goes to Redis as a ``PROBE`` (holding no units),
and the commit script replays the order.

No step of a common answer (sold out, over the limit, rate limited, not started,
ended, paused, a committed sale) calls a Python function; Redis replies come back
through the connection's callbacks (committer.py, ``_KeyCheck`` below).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject_Hash
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from flashgate.core._hll cimport HyperLogLog
from flashgate.core._stock cimport Ledger
from flashgate.core.outcomes cimport (
    N_OUTCOMES, O_BAD_REQUEST, O_IDEMPOTENCY_MISMATCH, O_LIMIT_EXCEEDED, O_NOT_FOUND, O_PROBE,
    O_RATE_LIMITED, O_SOLD, O_UNAUTHENTICATED, O_UNAVAILABLE, O_WAIT,
)
from flashgate.gateway._http cimport Request
from flashgate.gateway._net cimport ClientIP, Peer
from flashgate.gateway._protocol cimport Pending
from flashgate.gateway._token cimport TokenKey
from flashgate.limiter._gcra cimport Gcra, Limiter

import collections
import logging
import os

import hiredis
import orjson

from flashgate.auth import ID_CHARS
from flashgate.core import keys
from flashgate.gateway import answers

log = logging.getLogger("flashgate.buy")

cdef object _loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _pack_command = hiredis.pack_command
cdef object _deque = collections.deque
cdef object _event_idem = keys.event_idem
cdef object _IDEM_TTL_S = keys.IDEM_TTL_S

# pre-encoded answers (gateway/answers.py)
cdef tuple BY_CODE = answers.BY_CODE
cdef tuple RATE_LIMITED = answers.RATE_LIMITED
cdef bytes R_UNAUTH = answers.UNAUTHENTICATED
cdef bytes R_NOT_FOUND = answers.NOT_FOUND
cdef bytes R_UNAVAILABLE = answers.UNAVAILABLE
cdef bytes R_BAD_JSON = answers.BAD_JSON
cdef bytes R_BAD_SKU = answers.BAD_SKU
cdef bytes R_BAD_QTY = answers.BAD_QTY
cdef bytes R_BAD_IDEM = answers.BAD_IDEM
cdef bytes R_IDEM_MISMATCH = answers.BY_CODE[O_IDEMPOTENCY_MISMATCH]

# Committed buys' latency: the upper bound of each bucket, in microseconds; a buy
# slower than the last goes to the bucket beyond (counters.py names them).
LATENCY_BOUNDS_US = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000,
                     20000, 50000, 100000, 250000, 1000000)
cdef long long _LAT[N_LATENCY - 1]
for _i, _b in enumerate(LATENCY_BOUNDS_US):
    _LAT[_i] = _b
assert len(LATENCY_BOUNDS_US) == N_LATENCY - 1



# ------------------------------------------------------------------- clocks


cdef inline long long _clock_ms(int clock) noexcept:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <long long>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline long long _mono_us() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


def mono_us():
    """The monotonic clock the purchase path stamps requests with, in µs."""
    return _mono_us()


# ------------------------------------------------------------------- runtimes


cdef class EventCore:
    """An event as the purchase path sees it (gateway/runtime.py builds them)."""

    def __cinit__(self):
        self.by_id = {}
        self.visitors = HyperLogLog()
        self.participants = HyperLogLog()
        self.buyers = HyperLogLog()

    cdef void count(self, int code) noexcept:
        self.answered[code] += 1

    cdef void sold(self, long long qty, long long amount, long long elapsed_us) noexcept:
        cdef int k = 0
        self.orders += 1
        self.units += qty
        self.revenue += amount
        self.latency_us += elapsed_us
        while k < N_LATENCY - 1 and _LAT[k] < elapsed_us:
            k += 1
        self.latency[k] += 1

    def answers(self):
        """Requests answered with each outcome code, as a list indexed by code."""
        return [self.answered[i] for i in range(N_OUTCOMES)]

    def add(self, int code, long long n=1):
        """Count ``n`` answers of ``code`` (for the handlers in Python)."""
        if not 0 <= code < N_OUTCOMES:
            raise ValueError(f"no outcome {code}")
        self.answered[code] += n

    def take_latency(self):
        """The latency buckets counted since the last take (then zeroed)."""
        out = [self.latency[i] for i in range(N_LATENCY)]
        for i in range(N_LATENCY):
            self.latency[i] = 0
        return out


cdef class SkuCore:
    """A SKU as the purchase path sees it (gateway/runtime.py builds them)."""

    def __cinit__(self):
        self.waiters = _deque()


cdef class Purchase:
    """One admitted (or parked) buy request, until Redis answers it."""

    def __init__(self, SkuCore srt, str user, int qty, str fp="", str idem_key=None,
                 Pending fut=None, long long t0=0):
        self.srt = srt
        self.user = user
        self.qty = qty
        self.held = qty
        self.fp = fp
        self.idem_key = idem_key
        self.order_id = b""
        self.fut = Pending.__new__(Pending) if fut is None else fut
        self.deadline = 0
        self.t0 = t0


cdef class Target:
    """What the router knows of one exact path (routing.py builds them)."""

    def __init__(self, dict routes, bytes not_allowed, EventCore ert=None, bint buy=False):
        self.routes = routes
        self.not_allowed = not_allowed
        self.ert = ert
        self.buy = buy


# ------------------------------------------------------------------- identity


# 1 for the bytes a user id may hold (auth.ID_CHARS)
cdef unsigned char _ID_BYTE[256]
_ID_BYTE[:] = [1 if c in ID_CHARS else 0 for c in range(256)]


cpdef str user_of_header(object raw):
    """The user id of an ``X-User-Id`` value if it matches ``[A-Za-z0-9_-]{1,64}``, else
    None. One pass over at most 64 bytes costs less than the dict lookup a cache of
    validated values would (every request of a rush may bring a user not seen before)."""
    if type(raw) is not bytes:
        return None
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i
    cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(raw)
    if n == 0 or n > 64:
        return None
    for i in range(n):
        if not _ID_BYTE[b[i]]:
            return None
    return PyUnicode_DecodeASCII(<char *>b, n, NULL)


cdef inline bint _valid_key(object raw) noexcept:
    # an Idempotency-Key: 1-255 visible ASCII characters
    if type(raw) is not bytes:
        return False
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i
    cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(raw)
    if n == 0 or n > 255:
        return False
    for i in range(n):
        if b[i] < 0x21 or b[i] > 0x7e:
            return False
    return True


# ------------------------------------------------------------------- bodies and ids


cdef object _parse_buy_body(bytes body):
    """``(sku, qty)`` of a buy body, or its 400 answer."""
    try:
        data = _loads(body)
    except _JSONDecodeError:
        return R_BAD_JSON
    if type(data) is not dict:
        return R_BAD_JSON
    sku_id = (<dict>data).get("sku")
    if type(sku_id) is not str:
        return R_BAD_SKU
    qty = (<dict>data).get("qty", 1)
    if type(qty) is not int or qty < 1:
        return R_BAD_QTY
    return sku_id, qty


# Order ids: "<event>.<sku>.<worker boot id><16 hex digits>", the digits a permutation
# of the worker's sequence number under a key of the worker's own: unique (a permutation
# of a counter never repeats, and the boot id is random per worker start), and not
# guessable (64 bits no client can predict: nobody counts the orders or walks them).
# The permutation is a 4-round Feistel network on 32-bit halves whose round function is
# SipHash-2-4 (Aumasson and Bernstein) of (round, half) under a random 128-bit key.

cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint64_t _siphash24(uint64_t k0, uint64_t k1, uint64_t m) noexcept nogil:
    # SipHash-2-4 of one 8-byte little-endian word (the message), then the length block
    cdef uint64_t v0 = k0 ^ 0x736f6d6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646f72616e646f6dULL
    cdef uint64_t v2 = k0 ^ 0x6c7967656e657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef uint64_t b = (<uint64_t>8) << 56
    cdef int i, r
    cdef uint64_t w
    for i in range(2):
        w = m if i == 0 else b
        v3 ^= w
        for r in range(2):
            v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
            v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
            v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
            v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
        v0 ^= w
    v2 ^= 0xff
    for r in range(4):
        v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
    return v0 ^ v1 ^ v2 ^ v3


cdef inline uint64_t _permute(uint64_t k0, uint64_t k1, uint64_t x) noexcept nogil:
    cdef uint32_t left = <uint32_t>(x >> 32), right = <uint32_t>x, t
    cdef uint64_t rnd
    for rnd in range(4):
        t = right
        right = left ^ <uint32_t>_siphash24(k0, k1, (rnd << 32) | right)
        left = t
    return (<uint64_t>left << 32) | right


cdef bytes _order_id(bytes prefix, uint64_t k0, uint64_t k1, unsigned long long seq):
    # prefix + the permuted sequence number as 16 lower-case hex digits
    cdef uint64_t v = _permute(k0, k1, seq)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix), d = 16
    out = PyBytes_FromStringAndSize(NULL, n + 16)
    cdef char *w = PyBytes_AS_STRING(out)
    memcpy(w, PyBytes_AS_STRING(prefix), n)
    while d:
        d -= 1
        w[n + d] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return out


def order_id(bytes prefix not None, bytes key not None, unsigned long long seq):
    """The order id the path makes for sequence number ``seq`` under a 16-byte key."""
    if len(key) != 16:
        raise ValueError("the order id key is 16 bytes")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    return _order_id(prefix, k0, k1, seq)


def siphash24(bytes key not None, unsigned long long word):
    """SipHash-2-4 of one 8-byte little-endian word under a 16-byte key (for tests)."""
    if len(key) != 16:
        raise ValueError("a SipHash key is 16 bytes")
    return _siphash24(int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"),
                      word)


def rate_limited(long long wait_us):
    """The 429 of a refusal that may be retried in ``wait_us`` microseconds."""
    return _rate_limited(wait_us)


cdef inline bytes _rate_limited(long long wait_us):
    cdef long long s = (wait_us + 999999) // 1000000
    if s < 1:
        s = 1
    elif s > 60:
        s = 60
    return <bytes>RATE_LIMITED[s - 1]


# ------------------------------------------------------------------- the path


@cython.final
cdef class BuyPath:
    """The purchase path of one worker, and the batch state it shares with the
    committer. ``handle`` is the worker's HTTP entry."""

    def __init__(self, cfg, Ledger ledger not None, conn):
        self.ledger = ledger
        self.limiter = Limiter(
            ip_rate=cfg.ip_rate, ip_burst=cfg.ip_burst,
            user_rate=cfg.user_rate, user_burst=cfg.user_burst,
            global_rate=cfg.global_rate, global_burst=cfg.global_burst,
            capacity=cfg.limiter_capacity,
        )
        self.ip_limited = cfg.ip_rate > 0
        self.user_limited = cfg.user_rate > 0
        self.global_limited = cfg.global_rate > 0
        # buyers are who a signed token says, or (dev identity, only when asked for)
        # whoever X-User-Id names; with neither, nobody is a buyer
        self.tokens = None
        self.dev = bool(cfg.dev) and not cfg.user_secret
        if cfg.user_secret:
            self.tokens = TokenKey(cfg.user_secret.encode(), int(cfg.max_token_ttl) * 1000)
        self.client_ip = ClientIP(cfg.trusted_proxies, cfg.proxy_protocol_from)
        self.conn = conn
        self.call_soon = None
        self.commit_queue = cfg.commit_queue
        self.wait_queue = cfg.wait_queue
        self.wait_timeout_us = <long long>(cfg.wait_timeout * 1e6)
        self.bodies = {}
        self.targets = {}
        self.router = None
        self.flush = None
        self.skus = []
        self.queued = 0
        self.waiting = 0
        self.seq = 0
        key = os.urandom(16)  # the order ids' permutation (see _order_id)
        self.oid_k0 = int.from_bytes(key[:8], "little")
        self.oid_k1 = int.from_bytes(key[8:], "little")
        self.flush_scheduled = False
        self.clock_ok = True
        self.clock_offset_ms = 0

    def bind(self, loop, router, flush):
        """Start on ``loop``: other requests go to ``router.dispatch(req, target)``, and
        ``flush()`` is called once per loop turn in which purchases joined a batch."""
        self.call_soon = loop.call_soon
        self.router = router
        self.flush = flush

    cpdef long long now_ms(self):
        """Wall-clock ms corrected to Redis TIME (the clock that decides windows)."""
        return _clock_ms(CLOCK_REALTIME) + self.clock_offset_ms

    # -- the entry ---------------------------------------------------------------

    def handle(self, Request req not None):
        """The HTTP entry: a buy request here, every other to the router."""
        target = self.targets.get(req.path)
        if target is not None and (<Target>target).buy and req.method == b"POST":
            return self._buy(req, (<Target>target).ert)
        return self.router.dispatch(req, target)

    cdef object _buy(self, Request req, EventCore ert):
        ert.attempts += 1
        cdef dict headers = req.headers
        cdef Py_hash_t ip_key = 0, user_key = 0
        # the clocks, read once: the wall clock decides tokens and the window, the
        # monotonic one rate limits and latency
        cdef long long wall_ms = _clock_ms(CLOCK_REALTIME), now_us = _mono_us()
        if self.ip_limited:
            # the client's limiter bucket is fetched into the CPU cache while the
            # identity is checked (a table lookup is one cache miss)
            ip_key = self._client_hash(req)
            self.limiter.ip.prefetch(ip_key)
        cdef str user = self._user_at(req, wall_ms)
        if user is None:
            ert.count(O_UNAUTHENTICATED)
            return R_UNAUTH
        ert.participants.add(user)
        cdef long long wait
        if self.ip_limited or self.user_limited:
            if self.user_limited:
                user_key = PyObject_Hash(user)
                self.limiter.user.prefetch(user_key)
            wait = 0
            if self.ip_limited:
                wait = self.limiter.ip.c_hit(ip_key, now_us)
            if not wait and self.user_limited:
                wait = self.limiter.user.c_hit(user_key, now_us)
            if wait:
                ert.count(O_RATE_LIMITED)
                return _rate_limited(wait)
        got = self.sku_of(req.body, ert)
        if type(got) is bytes:  # its 400 or 404
            return got
        srt = <SkuCore>(<tuple>got)[0]
        qty = (<tuple>got)[1]  # (a Python int: it may be beyond any C int)
        key = headers.get(b"idempotency-key")
        if key is not None and not _valid_key(key):
            ert.count(O_BAD_REQUEST)
            return R_BAD_IDEM
        if self.global_limited:
            wait = self.limiter.glob.c_hit_global(now_us)
            if wait:
                ert.count(O_RATE_LIMITED)
                return _rate_limited(wait)
        if not self.clock_ok:
            ert.count(O_UNAVAILABLE)
            return R_UNAVAILABLE
        if key is not None:
            return self._buy_with_key(srt, user, qty, (<bytes>key).decode("ascii"))
        return self._admit(srt, user, qty, "", None, None, wall_ms + self.clock_offset_ms,
                           now_us)

    # -- identity and client -------------------------------------------------------

    cpdef str user_of(self, Request req):
        """The buyer of a request: its token's user, or (dev mode) its X-User-Id;
        None when it has no valid identity."""
        return self._user_at(req, _clock_ms(CLOCK_REALTIME))

    cpdef str visitor_of(self, Request req):
        """Who a page view counts as a visitor: its buyer identity when it carries a
        valid one, else ``ip:<client IP>`` (the client the rate limits see)."""
        user = self._user_at(req, _clock_ms(CLOCK_REALTIME))
        if user is not None:
            return user
        peer = req.peer
        if peer is None:
            peer = self.client_ip.peer(req.peer_ip)
        return "ip:" + self.client_ip.client_text(<Peer>peer, req.headers.get(b"x-forwarded-for"))

    cdef str _user_at(self, Request req, long long wall_ms):
        if self.tokens is not None:
            return self.tokens.c_user(req.headers.get(b"authorization"), wall_ms)
        if self.dev:
            return user_of_header(req.headers.get(b"x-user-id"))
        return None

    cdef Py_hash_t _client_hash(self, Request req) except? -1:
        # the limiter key of the request's client: the connection's peer, or the
        # X-Forwarded-For hop a trusted proxy vouches for
        peer = req.peer
        if peer is None:  # (a request made without a connection: resolved now)
            peer = self.client_ip.peer(req.peer_ip)
        return self.client_ip.client_hash(<Peer>peer, req.headers.get(b"x-forwarded-for"))

    def peer_of(self, str text not None):
        """A connection's client, resolved once when it opens (the connection hands it
        to every request as ``req.peer``)."""
        return self.client_ip.peer(text)

    def limit_ip(self, Request req not None):
        """Count a request against its client IP's limit: 0, or the µs to wait."""
        if not self.ip_limited:
            return 0
        return self.limiter.ip.c_hit(self._client_hash(req), _mono_us())

    def limit_user(self, str user not None):
        """Count a request against its user's limit: 0, or the µs to wait."""
        if not self.user_limited:
            return 0
        return self.limiter.user.c_hit(PyObject_Hash(user), _mono_us())

    # -- the body ------------------------------------------------------------------

    cpdef object sku_of(self, bytes body, EventCore ert):
        """``(SKU runtime, qty)`` of a buy body for this event, or its answer, counted:
        400 for a body that is not a buy, 404 for a SKU the event does not have."""
        parsed = self.bodies.get(body)
        if parsed is None:
            parsed = _parse_buy_body(body)
            if PyBytes_GET_SIZE(body) <= 128:  # small bodies only: bounded memory
                if len(self.bodies) >= 4096:
                    self.bodies.clear()
                self.bodies[body] = parsed
        if type(parsed) is bytes:  # the body's 400 answer
            ert.count(O_BAD_REQUEST)
            return parsed
        srt = ert.by_id.get((<tuple>parsed)[0])
        if srt is None:
            ert.count(O_NOT_FOUND)
            return R_NOT_FOUND
        return srt, (<tuple>parsed)[1]

    # -- the ledger ----------------------------------------------------------------

    cpdef object admit(self, SkuCore srt, str user, object qty, str fp, str idem_key,
                       Pending fut):
        """The ledger decides: a refusal's answer, or the Pending the commit resolves
        (``fut`` if given). ``fp``/``idem_key``: the request's Idempotency-Key's
        fingerprint and order key ("" / None without one)."""
        return self._admit(srt, user, qty, fp, idem_key, fut, self.now_ms(), _mono_us())

    cdef object _admit(self, SkuCore srt, str user, object qty, str fp, str idem_key,
                       Pending fut, long long now_ms, long long now_us):
        # admit at these times (Redis's wall clock, in ms; the monotonic clock, in µs)
        cdef int code, n = 0
        cdef Purchase p
        if qty > srt.limit:  # never possible, whatever was bought before
            code = O_LIMIT_EXCEEDED
        else:
            n = qty
            code = self.ledger.reserve(srt.idx, user, n, now_ms, idem_key is not None)
        if code == O_SOLD or code == O_PROBE:
            p = Purchase.__new__(Purchase)
            p.srt = srt
            p.user = user
            p.qty = n
            p.held = n if code == O_SOLD else 0
            p.fp = fp
            p.idem_key = idem_key
            p.order_id = b""
            p.fut = Pending.__new__(Pending) if fut is None else fut
            p.t0 = now_us
            return self.enqueue(p)
        if code == O_WAIT:
            return self._park(srt, user, n, fp, idem_key, fut)
        srt.ert.count(code)
        answer = BY_CODE[code]
        if fut is not None:
            fut.set_result(answer)
            return fut
        return answer

    cdef object _park(self, SkuCore srt, str user, int qty, str fp, str idem_key, Pending fut):
        # The ledger said WAIT: the request waits (bounded) for the units in flight and
        # tries again when a batch of its SKU settles (retry_waiters).
        if self.waiting >= self.wait_queue:
            srt.ert.count(O_UNAVAILABLE)
            if fut is not None:
                fut.set_result(R_UNAVAILABLE)
                return fut
            return R_UNAVAILABLE
        cdef Purchase p = Purchase(srt, user, qty, fp, idem_key, fut, _mono_us())
        p.deadline = p.t0 + self.wait_timeout_us
        srt.waiters.append(p)
        self.waiting += 1
        return p.fut

    cpdef retry_waiters(self, SkuCore srt):
        """Requests parked on this SKU's units in flight try again, in arrival order."""
        waiters = srt.waiters
        if not waiters:
            return
        cdef Purchase p
        cdef int code
        cdef long long now = self.now_ms()
        for _ in range(len(waiters)):
            p = <Purchase>waiters.popleft()
            # (a request with a key is never parked: the ledger answers it PROBE)
            code = self.ledger.reserve(srt.idx, p.user, p.qty, now, False)
            if code == O_WAIT:
                waiters.append(p)
                continue
            self.waiting -= 1
            if code == O_SOLD:
                self.enqueue(p)
            else:
                srt.ert.count(code)
                p.fut.set_result(BY_CODE[code])

    def expire_waiters(self):
        """Parked requests past their deadline are answered 503 (a timer calls this)."""
        cdef long long now_us = _mono_us()
        cdef SkuCore srt
        cdef Purchase p
        for srt in self.skus:
            if not srt.waiters:
                continue
            keep = _deque()
            for p in srt.waiters:
                if p.deadline > now_us:
                    keep.append(p)
                    continue
                self.waiting -= 1
                srt.ert.count(O_UNAVAILABLE)
                if not p.fut.done():
                    p.fut.set_result(R_UNAVAILABLE)
            srt.waiters = keep

    cdef inline bint _connected(self):
        # RedisConnection.connected, without a Python call
        proto = self.conn._proto
        return proto is not None and proto.transport is not None

    cpdef object enqueue(self, Purchase p):
        """An admitted reservation joins its SKU's batch (the ledger holds its units):
        its answer (a Pending), or 503 at once when Redis is down or the queue full."""
        cdef SkuCore srt = p.srt
        if self.queued >= self.commit_queue or not self._connected():
            self.ledger.settle(srt.idx, p.user, p.held, 0)
            srt.ert.count(O_UNAVAILABLE)
            p.fut.set_result(R_UNAVAILABLE)
            return p.fut
        self.seq += 1
        p.order_id = _order_id(srt.oid_prefix, self.oid_k0, self.oid_k1, self.seq)
        self.ledger.push(srt.idx, p)
        self.queued += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.call_soon(self.flush)
        return p.fut

    # -- Idempotency-Keys ------------------------------------------------------------

    cdef object _buy_with_key(self, SkuCore srt, str user, object qty, str key):
        cdef int code
        if qty > srt.limit:
            code = O_LIMIT_EXCEEDED
        else:
            code = self.ledger.check(srt.idx, user, <int>qty, self.now_ms())
        fp = f"{srt.sku.id}:{qty}"
        event_key = _event_idem(srt.ert.event.id, user, key)
        check = _KeyCheck(self, srt, user, qty, fp, srt.idem_prefix + user + ":" + key,
                          code if code != O_SOLD and code != O_WAIT else -1)
        if check.refusal < 0:
            # the ledger would admit it: claim the key for this request, then read it
            data = (_pack_command(("SET", event_key, fp, "NX", "EX", _IDEM_TTL_S))
                    + _pack_command(("GET", event_key)))
            self.conn.send_packed(data, (_ignore, check))
        else:
            self.conn.send_packed(_pack_command(("GET", event_key)), (check,))
        return check.fut


cdef class _Ignore:
    # the reply of a command whose outcome the next command's reply tells
    def __call__(self, reply):
        pass


cdef _Ignore _ignore = _Ignore()


@cython.final
cdef class _KeyCheck:
    """The reply of an Idempotency-Key's claim (or look-up) decides the request."""

    cdef BuyPath path
    cdef SkuCore srt
    cdef str user, fp, idem_key
    cdef object qty
    cdef readonly int refusal  # the ledger's refusal (-1: it would admit the request)
    cdef readonly Pending fut

    def __init__(self, BuyPath path, SkuCore srt, str user, qty, str fp, str idem_key,
                 int refusal):
        self.path = path
        self.srt = srt
        self.user = user
        self.qty = qty
        self.fp = fp
        self.idem_key = idem_key
        self.refusal = refusal
        self.fut = Pending.__new__(Pending)

    def __call__(self, reply):
        cdef EventCore ert = self.srt.ert
        if isinstance(reply, Exception) or (reply is None and self.refusal < 0):
            ert.count(O_UNAVAILABLE)
            self.fut.set_result(R_UNAVAILABLE)
            return
        if reply is None:
            # never used: a key cannot have an order, the refusal stands (nothing written)
            ert.count(self.refusal)
            self.fut.set_result(BY_CODE[self.refusal])
            return
        if type(reply) is not bytes or (<bytes>reply).decode("utf-8", "replace") != self.fp:
            ert.count(O_IDEMPOTENCY_MISMATCH)
            self.fut.set_result(R_IDEM_MISMATCH)
            return
        self.path.admit(self.srt, self.user, self.qty, self.fp, self.idem_key, self.fut)
