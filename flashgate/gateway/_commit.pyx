# cython: freethreading_compatible=False
"""The commit codec, in C: a batch of purchases packed into one commit script call
(RESP bytes, no argument list), and the script's reply answered, reservation by
reservation (the ledger settled, the counters counted, each Pending resolved).

Under load every sale passes through here twice. The committer
(gateway/committer.py) decides when batches leave and handles what this does not
understand (a lost connection, an error reply).
"""

import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from flashgate.core._stock cimport Ledger
from flashgate.core.outcomes cimport O_EXISTS, O_REPLAY, O_SOLD, O_SOLD_TIERS, O_UNAVAILABLE
from flashgate.gateway._buy cimport EventCore, Purchase, SkuCore

import orjson

from flashgate.core import orders
from flashgate.core.keys import COMMIT_KEYS
from flashgate.gateway import answers
from flashgate.gateway.protocol import build_response

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

log = logging.getLogger("flashgate.commit")

cdef tuple BY_CODE = answers.BY_CODE
cdef bytes R_UNAVAILABLE = answers.UNAVAILABLE
cdef bytes OK_JSON_HEAD = answers.OK_JSON_HEAD

# the commit script's fixed KEYS (core/keys.py COMMIT_KEYS); then one per key
FIXED_KEYS = len(COMMIT_KEYS)
cdef Py_ssize_t _FIXED_KEYS = FIXED_KEYS


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


def pack_commit(bytes head not None, bytes keys not None, list items not None):
    """The RESP bytes of one commit script call (lua/commit.lua) for ``items``
    (Purchases): ``head`` is its first two arguments packed (``Script.packed_head``),
    ``keys`` its FIXED_KEYS fixed keys packed (bulk strings); then come the number of
    keys, the fixed keys, the key of every reservation with an Idempotency-Key, the
    count and per reservation its order id, user, and qty (or
    "<qty>|<fingerprint>" for one with a key: lua/commit.lua)."""
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t size, i, count, ulen, klen, flen, spec, nkeys = _FIXED_KEYS
    cdef Purchase p
    cdef const char *u
    cdef const char *s
    cdef char *w
    size = PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(keys)
    for i in range(n):
        p = <Purchase?>items[i]
        if p.order_id is None or p.user is None or p.fp is None:
            raise TypeError("a reservation without its order id, user or fingerprint")
        if p.qty < 1:
            raise ValueError(f"qty {p.qty} in a commit batch")
        PyUnicode_AsUTF8AndSize(p.user, &ulen)
        size += _bulk_size(PyBytes_GET_SIZE(p.order_id)) + _bulk_size(ulen)
        spec = _digits(p.qty)
        if p.idem_key is not None:
            PyUnicode_AsUTF8AndSize(p.idem_key, &klen)
            PyUnicode_AsUTF8AndSize(p.fp, &flen)
            size += _bulk_size(klen)
            spec += 1 + flen
            nkeys += 1
        size += _bulk_size(spec)
    count = 2 + 1 + nkeys + 1 + 3 * n
    size += 1 + _digits(count) + 2 + _bulk_size(_digits(nkeys)) + _bulk_size(_digits(n))
    out = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(out)
    w[0] = b'*'
    w = _put_uint(w + 1, count)
    w[0] = b'\r'
    w[1] = b'\n'
    w += 2
    memcpy(w, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    w += PyBytes_GET_SIZE(head)
    w = _put_bulk_uint(w, nkeys)
    memcpy(w, PyBytes_AS_STRING(keys), PyBytes_GET_SIZE(keys))
    w += PyBytes_GET_SIZE(keys)
    for i in range(n):
        p = <Purchase>items[i]
        if p.idem_key is not None:
            s = PyUnicode_AsUTF8AndSize(p.idem_key, &klen)
            w = _put_bulk(w, s, klen)
    w = _put_bulk_uint(w, n)
    for i in range(n):
        p = <Purchase>items[i]
        w = _put_bulk(w, PyBytes_AS_STRING(p.order_id), PyBytes_GET_SIZE(p.order_id))
        u = PyUnicode_AsUTF8AndSize(p.user, &ulen)
        w = _put_bulk(w, u, ulen)
        if p.idem_key is None:
            w = _put_bulk_uint(w, p.qty)
            continue
        # "<qty>|<fingerprint>"
        s = PyUnicode_AsUTF8AndSize(p.fp, &flen)
        spec = _digits(p.qty) + 1 + flen
        w[0] = b'$'
        w = _put_uint(w + 1, spec)
        w[0] = b'\r'
        w[1] = b'\n'
        w = _put_uint(w + 2, p.qty)
        w[0] = b'|'
        memcpy(w + 1, s, flen)
        w += 1 + flen
        w[0] = b'\r'
        w[1] = b'\n'
        w += 2
    if w != PyBytes_AS_STRING(out) + size:  # (never: the sizes above are exact)
        raise AssertionError("commit packing size mismatch")
    return out


def pack_bulks(list values not None):
    """Bulk strings (RESP) of ``values`` (str or bytes), one after the other: the fixed
    keys ``pack_commit`` takes."""
    cdef list parts = []
    for v in values:
        b = v.encode() if type(v) is str else bytes(v)
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


# ------------------------------------------------------------------- answers

cdef class _SaleTemplate:
    """A sale's 200 answer cut around its variable parts: head, Content-Length,
    middle, order id, between, user, tail (see _sale_template)."""

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


cdef _SaleTemplate _sale_template(SkuCore srt, long long qty, long long price, created,
                                  pay_by):
    # a sale's 200 answer with everything but Content-Length, order id and user formatted
    # in (event and SKU ids hold no "%": they match ID_CHARS)
    # (a new order's updated_ms is its created_ms)
    body = srt.order_json % (b"%s", b"%s", qty, price, price * qty, created, pay_by, created)
    return _SaleTemplate(OK_JSON_HEAD + body, len(body) - 4)


def sale_answer(SkuCore srt not None, bytes oid not None, str user not None, long long qty,
                long long price, created, pay_by):
    """The 200 answer of one order (as the commit reply answers it)."""
    return _sale_template(srt, qty, price, created, pay_by).answer(oid, user)


def tiered_order(oid, str user not None, qty, price, created, pay_by, bd):
    """The API order of a new order whose units straddle price tiers (``bd``, its
    record's breakdown: ``1x100,1x990``), made from its record as every reader makes
    it (core/orders.py), or None if ``bd`` is not a breakdown. Rare (an order of more
    than one unit across a tier's edge): built in Python, not from a template."""
    if type(oid) is bytes:
        oid = (<bytes>oid).decode()
    if type(bd) is bytes:
        bd = (<bytes>bd).decode()
    rec = orders.record("reserved", user, qty, price, created, pay_by, bd=bd)
    return orders.from_record(oid, rec.encode())


cdef bytes _tiered_answer(oid, str user, qty, price, created, pay_by, bd):
    order = tiered_order(oid, user, qty, price, created, pay_by, bd)
    if order is None:
        raise ValueError(f"a price breakdown that does not read: {bd!r}")
    return build_response(200, orjson.dumps(order))


cdef list _offsets(reply, Py_ssize_t n):
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
        if code == O_SOLD:
            at += 2
        elif code == O_EXISTS or code == O_REPLAY:
            at += 7
        elif code == O_SOLD_TIERS:
            at += 4
        else:
            at += 1
    return offsets if at == size else None


def reply_offsets(reply, Py_ssize_t n):
    """Where each of ``n`` reservations' part starts in a commit reply, or None if the
    reply has not the shape lua/commit.lua gives: four figures, then per reservation
    2 values (SOLD), 4 (SOLD_TIERS), 7 (EXISTS, REPLAY: an existing order) or 1 (a
    refusal)."""
    return _offsets(reply, n)


cdef bytes _existing(SkuCore srt, Purchase p, list r, Py_ssize_t at):
    # the answer of an order that exists (EXISTS, REPLAY): reply[at + 1:at + 7] is
    # order id, unit price, qty, created, pay by, price breakdown ("": one price)
    oid, price, qty, created, pay_by = r[at + 1], r[at + 2], r[at + 3], r[at + 4], r[at + 5]
    if type(oid) is not bytes:
        raise TypeError(f"an order id of type {type(oid).__name__}")
    bd = r[at + 6]
    if bd:
        return _tiered_answer(oid, p.user, qty, price, created, pay_by, bd)
    return _sale_template(srt, qty, price, created, pay_by).answer(oid, p.user)


cdef long long _existing_amount(list r, Py_ssize_t at) except? -1:
    # the amount of an order that exists (EXISTS), from its reply part
    bd = r[at + 6]
    if not bd:
        return <long long>r[at + 2] * <long long>r[at + 3]
    parts = orders.parse_breakdown(bd.decode() if type(bd) is bytes else bd)
    if parts is None:
        raise ValueError(f"a price breakdown that does not read: {bd!r}")
    return sum(x["qty"] * x["unit_price"] for x in parts)


def answer_commit(Ledger ledger not None, SkuCore srt not None, list items not None, reply,
                  long long now_us):
    """Settle and answer every reservation of a batch from its commit reply, counting
    each in its event's counters, and tell the ledger the SKU's sold and stock: True;
    or False (nothing settled, counted or answered) if the reply has not the commit
    script's shape. An answer that fails to build is 503 (and logged)."""
    cdef list offsets = _offsets(reply, len(items))
    if offsets is None:
        return False
    cdef list r = <list>reply
    cdef EventCore ert = srt.ert
    cdef Purchase p
    cdef Py_ssize_t i, at
    cdef int idx = srt.idx
    cdef long long qty, price
    cdef _SaleTemplate t = None
    cdef long long t_qty = 0, t_price = 0
    created, pay_by = r[2], r[3]
    for i in range(len(items)):
        p = <Purchase?>items[i]
        at = offsets[i]
        code = r[at]
        try:
            if code == O_SOLD:  # this reservation's order, made now
                qty = p.qty
                ledger.settle(idx, p.user, p.held, p.qty)
                price = r[at + 1]
                if t is None or qty != t_qty or price != t_price:
                    t = _sale_template(srt, qty, price, created, pay_by)
                    t_qty, t_price = qty, price
                answer = t.answer(p.order_id, p.user)
                ert.sold(qty, price * qty, now_us - p.t0)
                ert.buyers.add(p.user)
            elif code == O_SOLD_TIERS:  # a new order across price tiers (rare: slower)
                ledger.settle(idx, p.user, p.held, p.qty)
                answer = _tiered_answer(p.order_id, p.user, p.qty, r[at + 1], created, pay_by,
                                        r[at + 3])
                ert.sold(p.qty, r[at + 2], now_us - p.t0)
                ert.buyers.add(p.user)
            elif code == O_EXISTS:  # its id came earlier in the batch (never from a worker)
                ledger.settle(idx, p.user, p.held, p.qty)
                answer = _existing(srt, p, r, at)
                ert.sold(r[at + 3], _existing_amount(r, at), now_us - p.t0)
                ert.buyers.add(p.user)
            elif code == O_REPLAY:  # the key's order (counted when it was made)
                ledger.settle(idx, p.user, p.held, 0)
                answer = _existing(srt, p, r, at)
            else:
                answer = _refused(ledger, idx, p, code, ert)
        except Exception:
            log.exception("cannot answer a committed reservation")
            answer = R_UNAVAILABLE
            ert.count(O_UNAVAILABLE)
        if not p.fut.done():
            p.fut.set_result(answer)
    _learn(ledger, idx, r)
    return True



cdef object _refused(Ledger ledger, int idx, Purchase p, object code, EventCore ert):
    """A reservation the script refused: its units released, its answer (counted)."""
    ledger.settle(idx, p.user, p.held, 0)
    answer = BY_CODE[code] if 0 < code < len(BY_CODE) else None
    if answer is None:
        raise ValueError(f"commit code {code}")
    ert.count(code)
    return answer


cdef int _learn(Ledger ledger, int idx, list r) except -1:
    """The SKU's sold and stock as the reply says them, into the ledger."""
    try:
        ledger.observe(idx, int(r[0]), int(r[1]))
    except (TypeError, ValueError):
        log.error("commit reply without sold/stock: %.200r", r[:2])
    return 0

def has_replay(reply, Py_ssize_t n):
    """Whether a commit reply of ``n`` reservations answers one of them with an order
    made before this call (REPLAY: an Idempotency-Key's earlier order), which the call
    itself did not write (committer.py: such an answer needs a WAIT of its own)."""
    cdef list offsets = _offsets(reply, n)
    if offsets is None:
        return False
    cdef list r = <list>reply
    for at in offsets:
        if r[at] == O_REPLAY:
            return True
    return False


def answer_unreplicated(Ledger ledger not None, SkuCore srt not None, list items not None,
                        reply, bytes answer not None):
    """Settle and answer a batch whose commit reply came but whose WAIT (--commit-replicas)
    did not say enough replicas have it: each sale (SOLD, SOLD_TIERS, EXISTS) and each
    earlier order (REPLAY) is settled in the ledger as the reply says (the master has
    it) but answered ``answer`` (a 503) and counted as such; a refusal is answered as
    ever. Returns the number of reservations answered ``answer``, or -1 (nothing
    settled, counted or answered) if the reply has not the commit script's shape.
    Off the hot path: only with --commit-replicas, and only when WAIT fell short."""
    cdef list offsets = _offsets(reply, len(items))
    if offsets is None:
        return -1
    cdef list r = <list>reply
    cdef EventCore ert = srt.ert
    cdef Purchase p
    cdef Py_ssize_t i, held_back = 0
    cdef int idx = srt.idx
    for i in range(len(items)):
        p = <Purchase?>items[i]
        code = r[offsets[i]]
        try:
            if code == O_SOLD or code == O_SOLD_TIERS or code == O_EXISTS:
                ledger.settle(idx, p.user, p.held, p.qty)
                out = answer
                held_back += 1
                ert.count(O_UNAVAILABLE)
            elif code == O_REPLAY:
                ledger.settle(idx, p.user, p.held, 0)
                out = answer
                held_back += 1
                ert.count(O_UNAVAILABLE)
            else:
                out = _refused(ledger, idx, p, code, ert)
        except Exception:
            log.exception("cannot answer a committed reservation")
            out = R_UNAVAILABLE
            ert.count(O_UNAVAILABLE)
        if not p.fut.done():
            p.fut.set_result(out)
    _learn(ledger, idx, r)
    return held_back
