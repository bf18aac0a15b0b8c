# C-level API of client IP resolution (see _net.pyx for the theory of operation).
#
# Another Cython module can `from flashgate.gateway._net cimport ip_addr, parse_ip,
# ip_hash, ClientIP` and find the client of a request without a Python call:
#
#     cdef ip_addr peer, client
#     if parse_ip(text, n, &peer):
#         cip.resolve(&peer, cip.is_trusted(&peer), xff_bytes_or_None, &client)
#         key = ip_hash(&client)

cimport cython
from libc.stdint cimport uint64_t


cdef enum:
    IP_TEXT_MAX = 46        # bytes format_ip may write (45 characters + NUL)
    XFF_MAX_HOPS = 32       # X-Forwarded-For hops looked at, from the right


# One address in its IPv6 form: an IPv4 address is ::ffff:a.b.c.d, so the IPv4
# client and its IPv4-mapped twin on a dual-stack socket are the same 16 bytes.
cdef struct ip_addr:
    unsigned char b[16]


# One network of a NetSet: the 16 bytes split in two native-order words, so that a
# membership test is two AND-and-compare (byte order does not matter bitwise).
cdef struct ip_net:
    uint64_t net[2]         # the network's bytes, host bits zero
    uint64_t mask[2]        # the prefix mask in the same layout
    bint v6                 # an IPv6 network: holds no IPv4(-mapped) address


# 1 and *out filled if s[:n] is an IPv4 or IPv6 address in text form, else 0 (out
# untouched). Accepts exactly what ipaddress.ip_address(str) accepts, except IPv6
# scope ids ("fe80::1%eth0"), which are refused.
cdef int parse_ip(const unsigned char *s, Py_ssize_t n, ip_addr *out) noexcept nogil

# The canonical text of `a` (str(ipaddress.ip_address(...)), an IPv4-mapped address
# in its IPv4 form) written to buf (at least IP_TEXT_MAX bytes, NUL-terminated);
# returns its length (7..45, or 2 for "::").
cdef Py_ssize_t format_ip(const ip_addr *a, char *buf) noexcept nogil

# 1 if `a` is an IPv4 address (::ffff:0:0/96).
cdef bint ip_is_v4(const ip_addr *a) noexcept nogil

# A hash of the 16 bytes keyed per process like str's (siphash with the
# interpreter's secret): clients cannot pick addresses that collide in a table.
# Never 0 or -1.
cdef Py_hash_t ip_hash(const ip_addr *a) noexcept


@cython.final
cdef class NetSet:
    cdef ip_net *_nets          # _n networks, allocated once in __cinit__
    cdef Py_ssize_t _n
    cdef readonly tuple nets    # the ipaddress network objects, as parsed

    cdef bint contains(self, const ip_addr *a) noexcept nogil


# A connection's client, resolved once when the connection opens (or its PROXY header
# arrives): its address, whether it may vouch for X-Forwarded-For, its limiter key.
@cython.final
cdef class Peer:
    cdef ip_addr addr           # all zero when the peer is not an address (a unix socket)
    cdef bint trusted           # ClientIP.is_trusted(addr)
    cdef Py_hash_t hash         # ip_hash(addr)
    cdef readonly str text      # as the connection saw it


@cython.final
cdef class ClientIP:
    cdef readonly NetSet trusted       # --trusted-proxies
    cdef readonly NetSet balancers     # --proxy-protocol-from

    # The peer may vouch for X-Forwarded-For: a trusted proxy and not a balancer.
    cdef bint is_trusted(self, const ip_addr *peer) noexcept nogil
    # The client of a request from `peer` (is_trusted(peer) given as peer_trusted)
    # carrying that X-Forwarded-For value (bytes, or None when absent; anything else
    # counts as absent). *out is the peer when the header is absent, the peer is not
    # trusted, a hop is malformed or every hop looked at is trusted.
    cdef void resolve(self, const ip_addr *peer, bint peer_trusted, object xff,
                      ip_addr *out) noexcept
    # The same on a header value that is not a bytes object (s may be NULL: absent).
    cdef void resolve_buf(self, const ip_addr *peer, bint peer_trusted,
                          const unsigned char *s, Py_ssize_t n, ip_addr *out) noexcept nogil
    # The Peer of a connection from `text` (an address, or "" for a unix socket).
    cpdef Peer peer(self, str text)
    # The limiter key of a request from `peer` carrying that X-Forwarded-For value.
    cdef Py_hash_t client_hash(self, Peer peer, object xff) noexcept
    # The text of that client's address (the peer's own text if it is not an address).
    cpdef str client_text(self, Peer peer, object xff)
