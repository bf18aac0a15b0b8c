"""The client IP that rate limits apply to, behind load balancers, in C.

Theory of operation
===================

Who the client is.
  The socket peer, unless that peer is a trusted proxy (``--trusted-proxies``) and
  not a PROXY protocol balancer (``--proxy-protocol-from``): then the right-most
  ``X-Forwarded-For`` hop that is not itself a trusted proxy. Hops to its right
  were appended by our own proxies; anything to its left the client could have
  written. The header of anyone else is ignored, so it cannot be spoofed. A
  balancer is never trusted with the header: its connections keep its address only
  when its PROXY header named no client (LOCAL, UNKNOWN, a non-IP family), and
  then nobody vouches for what follows.

Malformed means the peer.
  A hop that is not an address (empty, a name, "unknown", an IPv6 scope id, junk)
  ends the walk with the peer: random strings cannot mint new limiter keys, and a
  proxy that wrote garbage gets its own address limited. The walk looks at no more
  than the last XFF_MAX_HOPS (32) hops; if all of them are trusted proxies, the
  client is the peer, as when every hop is trusted. Hops are separated by commas,
  with optional spaces and tabs around each (HTTP's optional whitespace; nothing
  else is trimmed). The work is one backward scan of the header and at most 32
  parses of at most 45 bytes.

One address, one form.
  An address is 16 bytes (``ip_addr``): IPv6 as is, IPv4 as ::ffff:a.b.c.d. So
  an IPv4 client and its IPv4-mapped twin on a dual-stack socket are one client,
  one limiter key, one text (the IPv4 one). ``parse_ip`` accepts exactly what
  ``ipaddress.ip_address(str)`` accepts (decimal octets without leading zeros, 1-4
  hex digits per hextet, one "::", an IPv4 tail), except scope ids, which it
  refuses: a scoped address names an interface of this host, not a client.

Networks keep their family.
  A NetSet holds (network, mask) pairs of 16 bytes, built once from
  ``ipaddress.ip_network(spec, strict=False)``; an IPv4 network a.b.c.d/p is
  ::ffff:a.b.c.d/(96+p). As with ``ipaddress``, an IPv6 network never holds an
  IPv4 address, even ::/0 or ::ffff:0:0/96. A membership test is two 64-bit
  AND-and-compare per network: no allocation, no Python object, no GIL.

Keys.
  ``ip_hash`` is the interpreter's keyed string hash (siphash, secret per process
  unless PYTHONHASHSEED is fixed) of the 16 bytes: a client cannot choose
  addresses that collide in the limiter's table.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy, memset

import ipaddress

cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyUnicode_IS_ASCII(object o)
    const void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    str PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030E0000
    #define flashgate_hash_bytes(p, n) Py_HashBuffer((p), (n))
    #else
    #if PY_VERSION_HEX >= 0x030D0000
    /* 3.13 no longer declares it in the public headers; the symbol is still exported */
    PyAPI_FUNC(Py_hash_t) _Py_HashBytes(const void *, Py_ssize_t);
    #endif
    #define flashgate_hash_bytes(p, n) _Py_HashBytes((p), (n))
    #endif
    """
    Py_hash_t flashgate_hash_bytes(const void *p, Py_ssize_t n) noexcept

# The longest text ipaddress accepts without a scope id:
# "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
cdef enum:
    _TEXT_MAX = 45

cdef unsigned char _V4_PREFIX[12]
memset(_V4_PREFIX, 0, 10)
_V4_PREFIX[10] = 0xff
_V4_PREFIX[11] = 0xff

MAX_HOPS = XFF_MAX_HOPS  # X-Forwarded-For hops looked at, from the right


# ------------------------------------------------------------------ parsing

cdef inline int _hex(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:            # 0-9
        return c - 48
    c |= 0x20                    # A-F -> a-f (nothing else lands on a-f)
    if 97 <= c <= 102:           # a-f
        return c - 87
    return -1


cdef int _parse_v4(const unsigned char *s, Py_ssize_t n, unsigned char *o) noexcept nogil:
    """Four decimal octets 0-255 separated by dots; "0" but no other leading zero."""
    cdef Py_ssize_t i = 0, start
    cdef int k, v
    if n < 7 or n > 15:
        return 0
    for k in range(4):
        start = i
        v = 0
        while i < n and 48 <= s[i] <= 57:
            if i - start == 3:
                return 0         # a fourth digit
            v = v * 10 + (s[i] - 48)
            i += 1
        if i == start or v > 255 or (s[start] == 48 and i - start > 1):
            return 0
        o[k] = <unsigned char>v
        if k < 3:
            if i >= n or s[i] != 46:    # '.'
                return 0
            i += 1
    return i == n


cdef int _parse_v6(const unsigned char *s, Py_ssize_t n, ip_addr *out) noexcept nogil:
    """ipaddress.IPv6Address._ip_int_from_string, step for step (scope ids refused:
    '%' is not a hex digit)."""
    cdef Py_ssize_t st[9]
    cdef Py_ssize_t ln[9]
    cdef unsigned int val[10]
    cdef bint empty[10]
    cdef unsigned char four[4]
    cdef int np = 0, k, d, skip, hi, lo, j
    cdef Py_ssize_t i, start = 0
    cdef unsigned int v
    cdef bint dotted
    # split on ':' (more than 8 colons: refused before looking further)
    for i in range(n):
        if s[i] == 58:
            if np == 8:
                return 0
            st[np] = start
            ln[np] = i - start
            np += 1
            start = i + 1
    st[np] = start
    ln[np] = n - start
    np += 1
    if np < 3:
        return 0
    # every non-empty part is parsed in the end, so a bad one refuses at once
    dotted = False
    for i in range(ln[np - 1]):
        if s[st[np - 1] + i] == 46:
            dotted = True
            break
    for k in range(np - 1 if dotted else np):
        empty[k] = ln[k] == 0
        if ln[k] > 4:
            return 0
        v = 0
        for i in range(ln[k]):
            d = _hex(s[st[k] + i])
            if d < 0:
                return 0
            v = (v << 4) | <unsigned int>d
        val[k] = v
    if dotted:                   # an IPv4 tail stands for the last two hextets
        if not _parse_v4(s + st[np - 1], ln[np - 1], four):
            return 0
        val[np - 1] = (<unsigned int>four[0] << 8) | four[1]
        val[np] = (<unsigned int>four[2] << 8) | four[3]
        empty[np - 1] = False
        empty[np] = False
        np += 1
        if np > 9:
            return 0
    # at most one '::', i.e. one empty part away from the ends
    skip = -1
    for k in range(1, np - 1):
        if empty[k]:
            if skip >= 0:
                return 0
            skip = k
    if skip >= 0:
        hi = skip
        lo = np - skip - 1
        if empty[0]:
            hi -= 1
            if hi:
                return 0         # a leading ':' not part of '::'
        if empty[np - 1]:
            lo -= 1
            if lo:
                return 0         # a trailing ':' not part of '::'
        if 8 - (hi + lo) < 1:
            return 0             # '::' standing for no hextet
    else:
        if np != 8:
            return 0
        hi = 8
        lo = 0
    for k in range(hi):
        if empty[k]:
            return 0
    for k in range(np - lo, np):
        if empty[k]:
            return 0
    memset(out.b, 0, 16)
    for k in range(hi):
        out.b[2 * k] = <unsigned char>(val[k] >> 8)
        out.b[2 * k + 1] = <unsigned char>(val[k] & 0xff)
    for j in range(lo):
        k = np - lo + j
        out.b[2 * (8 - lo + j)] = <unsigned char>(val[k] >> 8)
        out.b[2 * (8 - lo + j) + 1] = <unsigned char>(val[k] & 0xff)
    return 1


cdef int parse_ip(const unsigned char *s, Py_ssize_t n, ip_addr *out) noexcept nogil:
    cdef unsigned char four[4]
    if n <= 0 or n > _TEXT_MAX:
        return 0
    if _parse_v4(s, n, four):
        memcpy(out.b, _V4_PREFIX, 12)
        memcpy(out.b + 12, four, 4)
        return 1
    return _parse_v6(s, n, out)


cdef bint ip_is_v4(const ip_addr *a) noexcept nogil:
    return memcmp(a.b, _V4_PREFIX, 12) == 0


# ------------------------------------------------------------------ text, hash

cdef inline Py_ssize_t _put_dec(char *p, unsigned int v) noexcept nogil:
    if v >= 100:
        p[0] = <char>(48 + v // 100)
        p[1] = <char>(48 + v // 10 % 10)
        p[2] = <char>(48 + v % 10)
        return 3
    if v >= 10:
        p[0] = <char>(48 + v // 10)
        p[1] = <char>(48 + v % 10)
        return 2
    p[0] = <char>(48 + v)
    return 1


cdef inline Py_ssize_t _put_hex(char *p, unsigned int v) noexcept nogil:
    cdef const char *digits = b"0123456789abcdef"
    cdef int shift = 12
    cdef Py_ssize_t m = 0
    while shift > 0 and (v >> shift) == 0:
        shift -= 4
    while shift >= 0:
        p[m] = digits[(v >> shift) & 15]
        m += 1
        shift -= 4
    return m


cdef Py_ssize_t format_ip(const ip_addr *a, char *buf) noexcept nogil:
    cdef Py_ssize_t p = 0
    cdef int k, run = 0, run_start = -1, best = 0, best_start = -1
    cdef unsigned int w[8]
    if ip_is_v4(a):
        for k in range(4):
            if k:
                buf[p] = 46
                p += 1
            p += _put_dec(buf + p, a.b[12 + k])
        buf[p] = 0
        return p
    for k in range(8):
        w[k] = (<unsigned int>a.b[2 * k] << 8) | a.b[2 * k + 1]
    # the first longest run of two or more zero hextets becomes '::'
    for k in range(8):
        if w[k] == 0:
            if run_start < 0:
                run_start = k
            run += 1
            if run > best:
                best = run
                best_start = run_start
        else:
            run = 0
            run_start = -1
    if best < 2:
        best_start = -1
    k = 0
    while k < 8:
        if k == best_start:
            buf[p] = 58
            buf[p + 1] = 58
            p += 2
            k += best
            continue
        if k > 0 and k != best_start + best:
            buf[p] = 58
            p += 1
        p += _put_hex(buf + p, w[k])
        k += 1
    buf[p] = 0
    return p


cdef Py_hash_t ip_hash(const ip_addr *a) noexcept:
    cdef Py_hash_t h = flashgate_hash_bytes(a.b, 16)
    if h == 0 or h == -1:
        h = -2
    return h


# ------------------------------------------------------------------ Python helpers

cdef int _parse_obj(object text, ip_addr *out) noexcept:
    """parse_ip on a str (non-ASCII: not an address) or bytes; 0 for anything else."""
    if PyUnicode_Check(text):
        if not PyUnicode_IS_ASCII(text):
            return 0
        return parse_ip(<const unsigned char *>PyUnicode_DATA(text),
                        PyUnicode_GET_LENGTH(text), out)
    if PyBytes_Check(text):
        return parse_ip(<const unsigned char *>PyBytes_AS_STRING(text), len(<bytes>text), out)
    return 0


cdef str _text(const ip_addr *a):
    cdef char buf[IP_TEXT_MAX]
    cdef Py_ssize_t n = format_ip(a, buf)
    return PyUnicode_DecodeASCII(buf, n, NULL)


def parse(text):
    """The 16 bytes of an address in text form (str or bytes), or None."""
    cdef ip_addr a
    if not _parse_obj(text, &a):
        return None
    return PyBytes_FromStringAndSize(<char *>a.b, 16)


cdef void _from16(bytes addr16, ip_addr *a) except *:
    if addr16 is None or len(addr16) != 16:
        raise ValueError("an address is 16 bytes")
    memcpy(a.b, PyBytes_AS_STRING(addr16), 16)


def text_of(bytes addr16):
    """The canonical text of 16 address bytes (an IPv4-mapped address as IPv4)."""
    cdef ip_addr a
    _from16(addr16, &a)
    return _text(&a)


def hash_of(bytes addr16):
    """``ip_hash`` of 16 address bytes."""
    cdef ip_addr a
    _from16(addr16, &a)
    return ip_hash(&a)


# ------------------------------------------------------------------ NetSet

@cython.final
cdef class NetSet:
    """A set of IP networks given as comma-separated CIDRs; ``address in netset``."""

    def __cinit__(self, spec=""):
        cdef Py_ssize_t i, k
        cdef int bits
        cdef unsigned char net[16]
        cdef unsigned char mask[16]
        cdef bytes packed
        if isinstance(spec, str):
            spec = [t for t in (p.strip() for p in spec.split(",")) if t]
        nets = tuple([ipaddress.ip_network(t, strict=False) for t in spec])  # ValueError
        self._nets = <ip_net *>PyMem_Malloc(max(1, len(nets)) * sizeof(ip_net))
        if self._nets == NULL:
            raise MemoryError()
        for i, nw in enumerate(nets):
            packed = nw.network_address.packed
            if nw.version == 4:
                memcpy(net, _V4_PREFIX, 12)
                memcpy(net + 12, PyBytes_AS_STRING(packed), 4)
                bits = 96 + nw.prefixlen
            else:
                memcpy(net, PyBytes_AS_STRING(packed), 16)
                bits = nw.prefixlen
            for k in range(16):
                if bits >= 8 * (k + 1):
                    mask[k] = 0xff
                elif bits <= 8 * k:
                    mask[k] = 0
                else:
                    mask[k] = <unsigned char>(0xff << (8 - (bits - 8 * k)))
                net[k] &= mask[k]
            memcpy(self._nets[i].net, net, 16)
            memcpy(self._nets[i].mask, mask, 16)
            self._nets[i].v6 = nw.version == 6
        self._n = len(nets)
        self.nets = nets

    def __dealloc__(self):
        PyMem_Free(self._nets)

    cdef bint contains(self, const ip_addr *a) noexcept nogil:
        cdef uint64_t w[2]
        cdef bint v4 = ip_is_v4(a)
        cdef const ip_net *e
        cdef Py_ssize_t i
        memcpy(w, a.b, 16)
        for i in range(self._n):
            e = &self._nets[i]
            if ((w[0] & e.mask[0]) == e.net[0] and (w[1] & e.mask[1]) == e.net[1]
                    and not (e.v6 and v4)):
                return True
        return False

    def __contains__(self, address):
        cdef ip_addr a
        cdef bint hit = _parse_obj(address, &a) and self.contains(&a)
        return hit

    def __bool__(self):
        return self._n > 0

    def __repr__(self):
        return f"NetSet({','.join(map(str, self.nets))!r})"


# ------------------------------------------------------------------ ClientIP

@cython.final
cdef class Peer:
    """A connection's client, resolved once (``ClientIP.peer``)."""

    @property
    def trusted(self):
        return self.trusted

    @property
    def address(self):
        """The 16 bytes of its address (all zero for a peer that is not one)."""
        return bytes(self.addr.b[:16])

    def __repr__(self):
        return f"Peer({self.text!r}, trusted={bool(self.trusted)})"


@cython.final
cdef class ClientIP:
    """``of(peer, x_forwarded_for)``: the client IP (see the theory of operation)."""

    def __cinit__(self, trusted="", balancers=""):
        if isinstance(trusted, NetSet):
            self.trusted = trusted
        else:
            try:
                self.trusted = NetSet(trusted)
            except ValueError as e:
                raise ValueError(f"trusted proxies: {e}") from None
        self.balancers = balancers if isinstance(balancers, NetSet) else NetSet(balancers)

    cdef bint is_trusted(self, const ip_addr *peer) noexcept nogil:
        return self.trusted.contains(peer) and not self.balancers.contains(peer)

    cdef void resolve(self, const ip_addr *peer, bint peer_trusted, object xff,
                      ip_addr *out) noexcept:
        if xff is None or not PyBytes_Check(xff):
            out[0] = peer[0]
            return
        self.resolve_buf(peer, peer_trusted, <const unsigned char *>PyBytes_AS_STRING(xff),
                         len(<bytes>xff), out)

    cdef void resolve_buf(self, const ip_addr *peer, bint peer_trusted,
                          const unsigned char *s, Py_ssize_t n, ip_addr *out) noexcept nogil:
        cdef ip_addr hop
        cdef Py_ssize_t end = n, i, a, b
        cdef int k
        out[0] = peer[0]
        if not peer_trusted or s == NULL:
            return
        for k in range(XFF_MAX_HOPS):
            i = end                  # the hop is s[i:end], i just after a comma or 0
            while i > 0 and s[i - 1] != 44:
                i -= 1
            a = i
            b = end
            while a < b and (s[a] == 32 or s[a] == 9):
                a += 1
            while b > a and (s[b - 1] == 32 or s[b - 1] == 9):
                b -= 1
            if not parse_ip(s + a, b - a, &hop):
                return               # malformed: no trustworthy client address
            if not self.is_trusted(&hop):
                out[0] = hop
                return
            if i == 0:
                return               # every hop is one of ours
            end = i - 1
        # XFF_MAX_HOPS trusted hops: the peer, as if every hop were ours

    cpdef Peer peer(self, str text):
        cdef Peer p = Peer.__new__(Peer)
        p.text = text
        if not _parse_obj(text, &p.addr):
            memset(p.addr.b, 0, 16)  # not an address: every such peer shares one key
            p.trusted = False
        else:
            p.trusted = self.is_trusted(&p.addr)
        p.hash = ip_hash(&p.addr)
        return p

    cdef Py_hash_t client_hash(self, Peer peer, object xff) noexcept:
        cdef ip_addr out
        if not peer.trusted or xff is None:
            return peer.hash
        self.resolve(&peer.addr, True, xff, &out)
        return ip_hash(&out)

    cpdef str client_text(self, Peer peer, object xff):
        """The text of the client of a request from ``peer`` carrying that
        X-Forwarded-For value (the address ``client_hash`` keys): the peer's own text
        when it is not an address (a unix socket: "")."""
        cdef ip_addr out
        if peer.trusted and xff is not None:
            self.resolve(&peer.addr, True, xff, &out)
            return _text(&out)
        if not _parse_obj(peer.text, &out):
            return peer.text
        return _text(&peer.addr)

    def hash_of_client(self, Peer peer not None, xff):
        """``client_hash`` for tests: equal to ``hash_of(parse(of(peer.text, xff)))``."""
        return self.client_hash(peer, xff)

    @property
    def proxies(self):
        return self.trusted

    def trusts(self, address):
        """``is_trusted`` on an address in text form (False if it is not one)."""
        cdef ip_addr a
        cdef bint hit = _parse_obj(address, &a) and self.is_trusted(&a)
        return hit

    def of(self, peer, forwarded_for):
        """The client IP of a request from ``peer`` carrying that X-Forwarded-For."""
        cdef ip_addr p, out
        if forwarded_for is not None and not PyBytes_Check(forwarded_for):
            raise TypeError("X-Forwarded-For must be bytes or None")
        if not _parse_obj(peer, &p):
            return peer              # not an address (a unix socket's ""): as given
        self.resolve(&p, self.is_trusted(&p), forwarded_for, &out)
        return _text(&out)

    def __repr__(self):
        return f"ClientIP(trusted={self.trusted!r}, balancers={self.balancers!r})"
