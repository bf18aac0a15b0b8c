# cython: freethreading_compatible=False
"""The purchase path's per-request work, in C: the common buy request (from its
route to the ledger's answer or a place in the batch), the reservation object,
the commit call's RESP bytes, and the answers of a batch's sales.

Under load every buy request passes through here, and every sale twice (packed
into a script call, then answered from its reply). The gateway (app.py) keeps
everything else, and every uncommon case: rate limits, Idempotency-Keys, a clock
out of step, parked requests, refusals and replays from Redis, failures. Each
function here does what app.py's Python did for the same case (app.py says where).
"""

import logging
from bisect import bisect_left

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from flashgate.core._stock cimport C_OK, C_WAIT, Ledger

from flashgate.auth import ID_CHARS
from flashgate.gateway._protocol import Pending

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

log = logging.getLogger("flashgate.app")


cdef class SkuCore:
    """The fields of a SKU's runtime (app.SkuRuntime) the C path reads."""

    cdef public int idx          # the SKU's index in the ledger
    cdef public object sku       # its definition (events.Sku)
    cdef public object ert       # its event's runtime
    cdef public bytes oid_prefix  # its order ids' start: "<event>.<sku>.<worker boot id>"


cdef class EventCore:
    """The fields of an event's runtime (app.EventRuntime) the C path reads."""

    cdef public dict by_id       # SKU id -> its runtime
    cdef public dict counts      # the event's counters in this worker
    cdef public object uv        # its unique visitors (HyperLogLog)


cdef class Purchase:
    """One admitted (or parked) buy request, until Redis answers it."""

    cdef public object srt       # its SkuRuntime
    cdef public str user
    cdef public int qty
    cdef public int held         # units the ledger counts in flight for it (0 for a probe)
    cdef public str idem         # the Idempotency-Key, or None
    cdef public str fp           # the key's fingerprint ("" without a key)
    cdef public bytes order_id   # made when it joins a batch
    cdef public object fut       # its answer: a Pending (or any object with set_result)
    cdef public long long deadline  # monotonic µs a parked request gives up at (0: none)
    cdef public long long t0     # monotonic µs it arrived at

    def __init__(self, srt, str user, int qty, idem, str fp, fut, long long t0):
        self.srt = srt
        self.user = user
        self.qty = qty
        self.held = qty
        self.idem = idem
        self.fp = fp
        self.order_id = b""
        self.fut = fut
        self.deadline = 0
        self.t0 = t0


# ------------------------------------------------------------------- packing

cdef inline Py_ssize_t _digits(unsigned long long v) noexcept:
    cdef Py_ssize_t d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


cdef inline char *_put_uint(char *w, unsigned long long v) noexcept:
    cdef Py_ssize_t d = _digits(v)
    cdef char *end = w + d
    while True:
        d -= 1
        w[d] = <char>(48 + v % 10)
        v //= 10
        if d == 0:
            break
    return end


cdef inline Py_ssize_t _bulk_size(Py_ssize_t n) noexcept:
    # "$<n>\r\n" <n bytes> "\r\n"
    return 1 + _digits(n) + 2 + n + 2


cdef inline char *_put_bulk(char *w, const char *s, Py_ssize_t n) noexcept:
    w[0] = b'$'
    w = _put_uint(w + 1, n)
    w[0] = b'\r'
    w[1] = b'\n'
    memcpy(w + 2, s, n)
    w += 2 + n
    w[0] = b'\r'
    w[1] = b'\n'
    return w + 2


cdef inline char *_put_bulk_uint(char *w, unsigned long long v) noexcept:
    w[0] = b'$'
    w = _put_uint(w + 1, _digits(v))
    w[0] = b'\r'
    w[1] = b'\n'
    w = _put_uint(w + 2, v)
    w[0] = b'\r'
    w[1] = b'\n'
    return w + 2


def pack_commit(bytes head not None, Py_ssize_t head_args, list items not None):
    """The RESP bytes of one commit script call for ``items`` (Purchases): ``head``
    is the call's first ``head_args`` arguments already packed (EVALSHA or EVAL, the
    script, the keys, the key prefix: see ``Script.packed_head``); then come the
    count, ``0`` (a first send, see commit.lua) and per reservation its order id,
    user, and qty, or "<qty>|<fingerprint>|<Idempotency-Key>" for one with a key
    (``store.reservation_args``)."""
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t size, i, count, ulen, ilen, flen, spec
    cdef Purchase p
    cdef const char *u
    cdef const char *k
    cdef const char *f
    cdef char *w
    count = head_args + 2 + 3 * n
    size = 1 + _digits(count) + 2 + PyBytes_GET_SIZE(head)
    size += _bulk_size(_digits(n)) + _bulk_size(1)
    for i in range(n):
        p = <Purchase?>items[i]
        if p.order_id is None:
            raise TypeError("a reservation without an order id")
        PyUnicode_AsUTF8AndSize(p.user, &ulen)
        size += _bulk_size(PyBytes_GET_SIZE(p.order_id)) + _bulk_size(ulen)
        spec = _digits(p.qty)
        if p.idem is not None and len(p.idem) > 0:
            PyUnicode_AsUTF8AndSize(p.idem, &ilen)
            PyUnicode_AsUTF8AndSize(p.fp, &flen)
            spec += 1 + flen + 1 + ilen
        size += _bulk_size(spec)
        if p.qty < 1:
            raise ValueError(f"qty {p.qty} in a commit batch")
    out = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(out)
    w[0] = b'*'
    w = _put_uint(w + 1, count)
    w[0] = b'\r'
    w[1] = b'\n'
    w += 2
    memcpy(w, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    w += PyBytes_GET_SIZE(head)
    w = _put_bulk_uint(w, n)
    w = _put_bulk(w, b"0", 1)
    for i in range(n):
        p = <Purchase>items[i]
        w = _put_bulk(w, PyBytes_AS_STRING(p.order_id), PyBytes_GET_SIZE(p.order_id))
        u = PyUnicode_AsUTF8AndSize(p.user, &ulen)
        w = _put_bulk(w, u, ulen)
        if p.idem is None or len(p.idem) == 0:
            w = _put_bulk_uint(w, p.qty)
            continue
        # "<qty>|<fingerprint>|<key>"
        k = PyUnicode_AsUTF8AndSize(p.idem, &ilen)
        f = PyUnicode_AsUTF8AndSize(p.fp, &flen)
        spec = _digits(p.qty) + 1 + flen + 1 + ilen
        w[0] = b'$'
        w = _put_uint(w + 1, spec)
        w[0] = b'\r'
        w[1] = b'\n'
        w = _put_uint(w + 2, p.qty)
        w[0] = b'|'
        memcpy(w + 1, f, flen)
        w += 1 + flen
        w[0] = b'|'
        memcpy(w + 1, k, ilen)
        w += 1 + ilen
        w[0] = b'\r'
        w[1] = b'\n'
        w += 2
    if w != PyBytes_AS_STRING(out) + size:  # (never: the sizes above are exact)
        raise AssertionError("commit packing size mismatch")
    return out


# ------------------------------------------------------------------- answers

cdef class _SaleTemplate:
    """A sale's 200 answer cut around its variable parts: head, Content-Length,
    middle, order id, between, user, tail (see app._sale_answer)."""

    cdef bytes a, b, c, d
    cdef Py_ssize_t fixed

    def __init__(self, bytes tmpl, Py_ssize_t fixed):
        parts = tmpl.split(b"%s")
        head = (<bytes>parts[0]).split(b"%d")
        if len(parts) != 3 or len(head) != 2:
            raise ValueError("a sale template holds %d, %s, %s")
        self.a, self.b = head
        self.c = parts[1]
        self.d = parts[2]
        self.fixed = fixed

    cdef bytes answer(self, bytes oid, str user):
        if oid is None or user is None:
            raise TypeError("a sale without its order id or user")
        cdef Py_ssize_t ulen, olen = PyBytes_GET_SIZE(oid)
        cdef const char *u = PyUnicode_AsUTF8AndSize(user, &ulen)
        cdef Py_ssize_t length = self.fixed + olen + ulen
        cdef Py_ssize_t size = (PyBytes_GET_SIZE(self.a) + _digits(length) + PyBytes_GET_SIZE(self.b)
                                + olen + PyBytes_GET_SIZE(self.c) + ulen
                                + PyBytes_GET_SIZE(self.d))
        out = PyBytes_FromStringAndSize(NULL, size)
        cdef char *w = PyBytes_AS_STRING(out)
        memcpy(w, PyBytes_AS_STRING(self.a), PyBytes_GET_SIZE(self.a))
        w = _put_uint(w + PyBytes_GET_SIZE(self.a), length)
        memcpy(w, PyBytes_AS_STRING(self.b), PyBytes_GET_SIZE(self.b))
        w += PyBytes_GET_SIZE(self.b)
        memcpy(w, PyBytes_AS_STRING(oid), olen)
        w += olen
        memcpy(w, PyBytes_AS_STRING(self.c), PyBytes_GET_SIZE(self.c))
        w += PyBytes_GET_SIZE(self.c)
        memcpy(w, u, ulen)
        w += ulen
        memcpy(w, PyBytes_AS_STRING(self.d), PyBytes_GET_SIZE(self.d))
        return out


def sale_template(bytes tmpl, Py_ssize_t fixed):
    """``(tmpl, fixed)`` of app._sale_answer as a template ``answer_sale`` takes."""
    return _SaleTemplate(tmpl, fixed)


def answer_sale(_SaleTemplate t not None, bytes oid, str user):
    """``tmpl % (fixed + len(oid) + len(user), oid, user)``, in one allocation."""
    return t.answer(oid, user)


cdef list _offsets(reply, Py_ssize_t n):
    # see app._reply_offsets
    if type(reply) is not list:
        return None
    cdef list r = <list>reply
    cdef Py_ssize_t size = len(r)
    if size < 4:
        return None
    cdef list offsets = []
    cdef Py_ssize_t at = 4
    for _ in range(n):
        if at >= size:
            return None
        code = r[at]
        if type(code) is not int:
            return None
        offsets.append(at)
        if code == 0:
            at += 2
        elif code == 9 or code == 10:
            at += 6
        else:
            at += 1
    return offsets if at == size else None


def reply_offsets(reply, Py_ssize_t n):
    """Where each of ``n`` reservations' part starts in a commit reply, or None if the
    reply has not the shape commit.lua gives: four figures, then per reservation 2
    values (sold), 6 (an existing order) or 1 (a refusal)."""
    return _offsets(reply, n)


def answer_commit(gw, srt, list items not None, reply, Ledger ledger not None, int idx,
                  list lat not None, tuple bounds not None, long long now_us, sale_answer,
                  failed):
    """Settle and answer every reservation of a batch from its commit reply:
    ``(orders, units, revenue)`` of the new sales, or None (nothing settled or
    answered) if the reply has not the commit script's shape. A sale is answered
    here from ``sale_answer(srt, qty, price, created, pay_by)``'s template; any
    other code by ``gw._answer``. An answer that fails to build is ``failed``."""
    cdef list offsets = _offsets(reply, len(items))
    if offsets is None:
        return None
    cdef list r = <list>reply
    cdef Purchase p
    cdef Py_ssize_t i, at
    cdef long long orders = 0, units = 0
    cdef int qty
    cdef _SaleTemplate t = None
    revenue = 0
    created, pay_by = r[2], r[3]
    t_qty = t_price = None
    for i in range(len(items)):
        p = <Purchase?>items[i]
        at = offsets[i]
        code = r[at]
        try:
            if code == 0:  # sold: this reservation's order, made now
                qty = p.qty
                ledger.settle(idx, p.user, p.held, qty)
                price = r[at + 1]
                if t is None or qty != t_qty or price != t_price:
                    t = _SaleTemplate(*sale_answer(srt, qty, price, created, pay_by))
                    t_qty, t_price = qty, price
                answer = t.answer(p.order_id, p.user)
                orders += 1
                units += qty
                revenue += price * qty
                k = bisect_left(bounds, now_us - p.t0)
                lat[k] += 1
            else:
                # 9: this very order, from a re-sent batch
                ledger.settle(idx, p.user, p.held, p.qty if code == 9 else 0)
                answer = gw._answer(srt, p, code, reply, at, now_us)
        except Exception:
            log.exception("cannot answer a committed reservation")
            answer = failed
        fut = p.fut
        if not fut.done():
            fut.set_result(answer)
    return orders, units, revenue


# ------------------------------------------------------------------- buy requests

cdef inline long long _clock_ms(int clock) noexcept:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <long long>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline long long _mono_us() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef bytes _hex_id(bytes prefix, unsigned long long seq):
    # prefix + seq in lower-case hex: b"%s%x" % (prefix, seq)
    cdef Py_ssize_t d = 1
    cdef unsigned long long v = seq
    while v >= 16:
        v >>= 4
        d += 1
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
    out = PyBytes_FromStringAndSize(NULL, n + d)
    cdef char *w = PyBytes_AS_STRING(out)
    memcpy(w, PyBytes_AS_STRING(prefix), n)
    v = seq
    while d:
        d -= 1
        w[n + d] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return out


# 1 for the bytes a user id may hold (auth.ID_CHARS)
cdef unsigned char _ID_BYTE[256]
_ID_BYTE[:] = [1 if c in ID_CHARS else 0 for c in range(256)]


cpdef str user_of_header(bytes raw):
    """auth.user_from_header in C: the user id of an ``X-User-Id`` value if it matches
    ``[A-Za-z0-9_-]{1,64}``, else None. One pass over at most 64 bytes costs less than
    the dict lookup a cache of validated values would (every request of a rush may
    bring a user not seen before)."""
    if raw is None:
        return None
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i
    cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(raw)
    if n == 0 or n > 64:
        return None
    for i in range(n):
        if not _ID_BYTE[b[i]]:
            return None
    return PyUnicode_DecodeASCII(<char *>b, n, NULL)


def hex_id(bytes prefix, unsigned long long seq):
    """An order id as the path makes it: ``prefix`` + ``seq`` in lower-case hex."""
    return _hex_id(prefix, seq)


@cython.final
cdef class BuyPath:
    """The common buy request in C, and the batch it joins. One per Gateway, which
    hands it every request (``handle``) and keeps the batch's counters here.

    ``handle`` takes ``POST`` to a buy route when no rate limit is configured, the
    request has no Idempotency-Key and the clock is in step; it then does what
    Gateway.buy, user_of, _admit and _enqueue do, in the same order, with the same
    counters and answers. Everything else goes to the Gateway's Python, untouched.
    """

    cdef object gw
    cdef Ledger ledger
    cdef public dict routes      # the Gateway's routes table (replaced on reload)
    cdef dict bodies             # buy bodies already parsed -> (sku, qty) or a 400
    cdef bint plain              # no rate limit configured
    cdef bint dev_ids            # identity from X-User-Id (no token secret)
    cdef long long commit_queue
    cdef object conn
    cdef object call_soon        # the loop's, once started
    cdef object py_handle, py_park, parse_body, rejects
    cdef bytes r_unauth, r_not_found, r_unavailable
    cdef public long long queued  # reservations sent or about to be sent to Redis
    cdef public unsigned long long seq  # order ids made (their last part, in hex)
    cdef public bint flush_scheduled
    cdef public object flush      # the Gateway's group commit (scheduled once per turn)
    cdef public bint clock_ok     # the Gateway's: this host's clock is in step with Redis's
    cdef public long long clock_offset_ms  # the Gateway's: Redis TIME - this host's clock

    def __init__(self, gw, Ledger ledger, bint plain, bint dev_ids,
                 long long commit_queue, conn, py_handle, py_park, parse_body, dict rejects,
                 bytes r_unauth, bytes r_not_found, bytes r_unavailable, flush):
        self.gw = gw
        self.ledger = ledger
        self.routes = {}
        self.bodies = {}
        self.plain = plain
        self.dev_ids = dev_ids
        self.commit_queue = commit_queue
        self.conn = conn
        self.call_soon = None
        self.py_handle = py_handle
        self.py_park = py_park
        self.parse_body = parse_body
        self.rejects = rejects
        self.r_unauth = r_unauth
        self.r_not_found = r_not_found
        self.r_unavailable = r_unavailable
        self.queued = 0
        self.seq = 0
        self.flush_scheduled = False
        self.flush = flush
        self.clock_ok = True
        self.clock_offset_ms = 0

    def bind(self, loop):
        self.call_soon = loop.call_soon

    def handle(self, req):
        """The HTTP entry (Gateway.handle, with its common buy request in C)."""
        route = self.routes.get(req.path)
        if (
            route is None
            or (<tuple>route)[0] != 0  # app._BUY
            or req.method != b"POST"
            or not self.plain
            or not self.dev_ids
        ):
            return self.py_handle(req)
        headers = req.headers
        if headers.get(b"idempotency-key") is not None or not self.clock_ok:
            return self.py_handle(req)
        return self._buy(req, <dict>headers, <EventCore?>(<tuple>route)[1])

    cdef object _buy(self, req, dict headers, EventCore ert):
        # Gateway.buy, for requests without key, limits or clock trouble
        cdef dict counts = ert.counts
        counts["attempts"] += 1
        user = self.dev_user(headers)
        if user is None:
            counts["unauthenticated"] += 1
            return self.r_unauth
        got = self.sku_of(req.body, ert)
        if type(got) is bytes:  # its 400 or 404
            return got
        srt, qty = <tuple>got
        ert.uv.add(user)
        return self._admit(<SkuCore?>srt, user, qty, counts)

    cpdef object sku_of(self, bytes body, EventCore ert):
        """``(SKU runtime, qty)`` of a buy body for this event, or its answer, counted:
        400 for a body that is not a buy, 404 for a SKU the event does not have."""
        parsed = self.buy_body(body)
        if type(parsed) is bytes:  # the body's 400 answer
            ert.counts["bad_request"] += 1
            return parsed
        srt = ert.by_id.get((<tuple>parsed)[0])
        if srt is None:
            ert.counts["not_found"] += 1
            return self.r_not_found
        return srt, (<tuple>parsed)[1]

    cpdef object buy_body(self, bytes body):
        """``(sku, qty)`` of a buy body, or its 400 answer (app._parse_buy_body), from a
        cache of the small bodies seen (clients send the same few)."""
        parsed = self.bodies.get(body)
        if parsed is None:
            parsed = self.parse_body(body)
            if len(body) <= 128:  # the cache holds small bodies only: bounded memory
                if len(self.bodies) >= 4096:
                    self.bodies.clear()
                self.bodies[body] = parsed
        return parsed

    cpdef object dev_user(self, dict headers):
        """The user of an ``X-User-Id`` header (None if missing or invalid)."""
        uid = headers.get(b"x-user-id")
        if type(uid) is not bytes:
            return None
        return user_of_header(<bytes>uid)

    cdef object _admit(self, SkuCore srt, str user, qty, dict counts):
        # Gateway._admit without a key: the ledger decides
        if qty > srt.sku.per_user_limit:
            counts["limit_exceeded"] += 1
            return self.rejects[2][1]  # LIMIT_EXCEEDED
        cdef int idx = srt.idx
        cdef long long now_ms = _clock_ms(CLOCK_REALTIME) + self.clock_offset_ms
        cdef int code = self.ledger.reserve(idx, user, qty, now_ms, False)
        if code == C_OK:
            return self.enqueue(Purchase(srt, user, qty, None, "", Pending(), _mono_us()))
        if code == C_WAIT:
            return self.py_park(srt, user, qty, None, "")
        name, answer = self.rejects[code]
        counts[name] += 1
        return answer

    cdef inline bint _connected(self):
        # RedisConnection.connected, without a Python call
        proto = self.conn._proto
        return proto is not None and proto.transport is not None

    cpdef object enqueue(self, Purchase p):
        """An admitted reservation joins its SKU's batch (the ledger holds its units):
        its answer (a Pending), or 503 at once when Redis is down or the queue full."""
        cdef SkuCore srt = <SkuCore?>p.srt
        if self.queued >= self.commit_queue or not self._connected():
            self.ledger.settle(srt.idx, p.user, p.held, 0)
            srt.ert.counts["unavailable"] += 1
            p.fut.set_result(self.r_unavailable)
            return p.fut
        self.seq += 1
        p.order_id = _hex_id(srt.oid_prefix, self.seq)
        self.ledger.push(srt.idx, p)
        self.queued += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.call_soon(self.flush)
        return p.fut
