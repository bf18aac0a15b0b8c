# cython: freethreading_compatible=False
"""The per-reservation work of a group commit, in C: the reservation object, the
commit call's RESP bytes, and the answers of a batch's sales.

Under commit load every request passes through here twice (packed into a script
call, then answered from its reply), so this is the part of the purchase path
that runs per sale rather than per batch. The gateway (app.py) keeps the
decisions about failures, refusals and replays; this module only does, in C, what
its Python version did per reservation.
"""

import logging
from bisect import bisect_left

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from flashgate.core._stock cimport Ledger

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

log = logging.getLogger("flashgate.app")


cdef class Purchase:
    """One admitted (or parked) buy request, until Redis answers it."""

    cdef public object srt       # its SkuRuntime
    cdef public str user
    cdef public int qty
    cdef public int held         # units the ledger counts in flight for it (0 for a probe)
    cdef public object idem      # the Idempotency-Key (str) or None
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


def pack_commit(bytes head, Py_ssize_t head_args, list items):
    """The RESP bytes of one commit script call for ``items`` (Purchases): ``head``
    is the call's first ``head_args`` arguments already packed (EVALSHA or EVAL, the
    script, the keys, the key prefix: see ``Script.packed_head``); then come the
    count, ``0`` (a first send, see commit.lua) and per reservation its order id,
    user, qty, Idempotency-Key ("" for none) and fingerprint."""
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t size, i, count, ulen, ilen, flen
    cdef Purchase p
    cdef const char *u
    cdef const char *k
    cdef const char *f
    cdef char *w
    count = head_args + 2 + 5 * n
    size = 1 + _digits(count) + 2 + PyBytes_GET_SIZE(head)
    size += _bulk_size(_digits(n)) + _bulk_size(1)
    for i in range(n):
        p = <Purchase?>items[i]
        PyUnicode_AsUTF8AndSize(p.user, &ulen)
        size += _bulk_size(PyBytes_GET_SIZE(p.order_id)) + _bulk_size(ulen)
        size += _bulk_size(_digits(p.qty))
        if p.idem is None:
            size += _bulk_size(0)
        else:
            PyUnicode_AsUTF8AndSize(p.idem, &ilen)
            size += _bulk_size(ilen)
        PyUnicode_AsUTF8AndSize(p.fp, &flen)
        size += _bulk_size(flen)
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
        w = _put_bulk_uint(w, p.qty)
        if p.idem is None:
            w = _put_bulk(w, b"", 0)
        else:
            k = PyUnicode_AsUTF8AndSize(p.idem, &ilen)
            w = _put_bulk(w, k, ilen)
        f = PyUnicode_AsUTF8AndSize(p.fp, &flen)
        w = _put_bulk(w, f, flen)
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


def answer_sale(_SaleTemplate t, bytes oid, str user):
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


def answer_commit(gw, srt, list items, reply, Ledger ledger, int idx, list lat,
                  tuple bounds, long long now_us, sale_answer, failed):
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
