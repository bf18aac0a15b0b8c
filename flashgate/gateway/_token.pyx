# cython: freethreading_compatible=False
"""Buyer tokens (API.md, "Identity") checked in C, for the purchase path.

Theory of operation
===================

The token.
  ``Authorization: Bearer <user_id>.<expires_ms>.<sig>`` with
  ``sig = lowercase hex(HMAC-SHA256(secret, "<user_id>.<expires_ms>"))``. The value
  is accepted only in exactly this shape: the scheme ``Bearer`` (any case), one or
  more spaces, the token, then nothing but spaces and tabs. The token is a user id
  of 1 to 64 bytes of ``[A-Za-z0-9_-]``, a dot, 1 to 15 ASCII digits, a dot, 64
  lowercase hex digits (145 bytes at most; more than 200 is refused before looking).
  The signed message is the token's own bytes up to the second dot, read in place.

Checks, cheapest first.
  One pass over the value checks the shape, reads the expiry and decodes the
  signature into 32 bytes. Then the expiry: ``expires_ms <= now_ms`` is refused,
  and so, when ``max_ttl_ms > 0``, is ``expires_ms > now_ms + max_ttl_ms`` (a token
  living longer than the operator allows). Only a well-formed, unexpired token
  costs an HMAC. Everything the shape and expiry checks branch on is in the token
  itself, which its sender knows.

HMAC with precomputed midstates (RFC 2104).
  HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), where K' is the secret
  padded to SHA-256's 64-byte block (hashed first if it is longer). Each of the
  two padded keys fills exactly one block, so the SHA-256 states after them (the
  midstates) are computed once per TokenKey. A check then compresses the message
  and its padding from the inner midstate (one block for messages up to 55 bytes,
  e.g. a 13-digit expiry and a user id of up to 41 bytes; two up to 80 bytes), and
  the 32-byte inner digest with its padding from the outer midstate (one block):
  2 or 3 compressions per check, against 4 or 5 for HMAC from scratch.

Constant time.
  The computed MAC is compared with the decoded signature by OR-ing the XOR of
  all 32 byte pairs: no branch or early exit depends on how many bytes match, so
  the time taken does not tell a forger how close a guess came.

SHA-256 itself (FIPS 180-4) is in ``_sha256.h``, twice: portable C, and the x86
SHA extensions (two rounds per instruction). The second is used where the CPU has
them (CPUID, asked once at import; ``IMPLEMENTATIONS``); the tests run everything on
both. A check costs about 190 ns with the extensions, 600 ns without (2 compressions;
the shape and expiry pass is 40-50 ns of that).

No cache of verified tokens.
  Measured against (a) the same token on every request and (b) a new token on every
  request: a dict of header value -> user id (65536 entries, cleared when full) and
  a table of verified tokens indexed by their signature both answer (a) in about
  55 ns instead of 200, but make (b) cost 350-440 ns instead of 200: the entry a new
  token replaces is cold memory (and so, for the dict, is its growth and the objects
  it frees). A rush is (b): every buyer's first request. Without a cache a check
  costs the same whoever sends it, and keeps nothing.

The hot path (c_user) makes one Python object, the user id's str; c_verify does
the whole check on a C buffer without the GIL.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.limits cimport LLONG_MAX
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from flashgate.auth import ID_CHARS

cdef extern from "_sha256.h":
    int FG_SHA256_HW
    const uint32_t fg_sha256_iv[8]
    void fg_sha256_compress_portable(uint32_t *st, const unsigned char *p, size_t n) noexcept nogil
    void fg_sha256_compress_hw(uint32_t *st, const unsigned char *p, size_t n) noexcept nogil
    int fg_sha256_hw_available() noexcept nogil
    void fg_sha256_finish(token_compress_fn compress, const uint32_t *st0, uint64_t done,
                          const unsigned char *msg, size_t n, unsigned char *out) noexcept nogil

cdef enum:
    _BLOCK = 64         # SHA-256's block, in bytes
    _DIGEST = 32        # SHA-256's digest, in bytes
    _MAX_TOKEN = 200    # longer tokens are refused before looking at them
    _MAX_UID = 64
    _MAX_DIGITS = 15    # expires_ms: 1 to 15 digits (up to year 33658)
    _SIG_HEX = 64       # the signature: 64 lowercase hex digits

# 1 for the bytes a user id may hold (auth.ID_CHARS)
cdef unsigned char _ID_BYTE[256]
_ID_BYTE[:] = [1 if c in ID_CHARS else 0 for c in range(256)]

# the value of a lowercase hex digit; 0x10 for any other byte
cdef unsigned char _HEX[256]
_HEX[:] = [b"0123456789abcdef".index(c) if c in b"0123456789abcdef" else 0x10
           for c in range(256)]

# the compression functions this build and CPU can run, by name; the first is the default
IMPLEMENTATIONS = ("x86-sha", "portable") if FG_SHA256_HW and fg_sha256_hw_available() \
    else ("portable",)


cdef token_compress_fn _compress_of(impl) except NULL:
    if impl is None:
        impl = IMPLEMENTATIONS[0]
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, not {impl!r}")
    return fg_sha256_compress_hw if impl == "x86-sha" else fg_sha256_compress_portable


cdef inline void _hmac_states(token_compress_fn compress, const unsigned char *key,
                              Py_ssize_t n, uint32_t *inner, uint32_t *outer) noexcept nogil:
    """The SHA-256 states after absorbing the block K' ^ ipad (inner) and K' ^ opad
    (outer), K' being the key padded with zeros to a block, or its digest if longer."""
    cdef unsigned char k[_BLOCK]
    cdef unsigned char pad[_BLOCK]
    cdef int i
    memset(k, 0, _BLOCK)
    if n > _BLOCK:
        fg_sha256_finish(compress, fg_sha256_iv, 0, key, <size_t>n, k)
    else:
        memcpy(k, key, <size_t>n)
    memcpy(inner, fg_sha256_iv, sizeof(uint32_t) * 8)
    memcpy(outer, fg_sha256_iv, sizeof(uint32_t) * 8)
    for i in range(_BLOCK):
        pad[i] = k[i] ^ 0x36
    compress(inner, pad, 1)
    for i in range(_BLOCK):
        pad[i] = k[i] ^ 0x5c
    compress(outer, pad, 1)


cdef inline void _hmac(token_compress_fn compress, const uint32_t *inner,
                       const uint32_t *outer, const unsigned char *msg, Py_ssize_t n,
                       unsigned char *out) noexcept nogil:
    cdef unsigned char d[_DIGEST]
    fg_sha256_finish(compress, inner, _BLOCK, msg, <size_t>n, d)
    fg_sha256_finish(compress, outer, _BLOCK, d, _DIGEST, out)


cdef struct parsed_token:
    Py_ssize_t start            # where the token (its user id) starts in the value
    Py_ssize_t uid_n            # the user id's length
    Py_ssize_t msg_n            # the signed message's length: "<user_id>.<expires_ms>"
    unsigned char sig[_DIGEST]  # the signature, decoded


cdef inline bint _parse(const unsigned char *v, Py_ssize_t n, long long now_ms,
                        long long max_ttl_ms, parsed_token *t) noexcept nogil:
    """Whether v is ``Bearer <token>`` with a well-formed token, unexpired at now_ms
    and within max_ttl_ms (if > 0); fills t. Reads nothing past v[n - 1]."""
    cdef Py_ssize_t i, start, end, lim, dot1, dot2
    cdef long long expires = 0
    cdef unsigned char bad = 0, hi, lo
    cdef int k
    # the scheme, case-insensitive ('B' | 0x20 == 'b', and only 'B' and 'b' give
    # 'b'), then at least one space
    if (n < 7 or v[0] | 0x20 != c'b' or v[1] | 0x20 != c'e' or v[2] | 0x20 != c'a'
            or v[3] | 0x20 != c'r' or v[4] | 0x20 != c'e' or v[5] | 0x20 != c'r'
            or v[6] != c' '):
        return False
    start = 7
    while start < n and v[start] == c' ':
        start += 1
    end = n
    while end > start and (v[end - 1] == c' ' or v[end - 1] == c'\t'):
        end -= 1
    if end - start > _MAX_TOKEN:
        return False
    # <user_id>.
    i = start
    lim = start + _MAX_UID if end - start > _MAX_UID else end
    while i < lim and _ID_BYTE[v[i]]:
        i += 1
    if i == start or i == end or v[i] != c'.':
        return False
    dot1 = i
    # <expires_ms>.
    i += 1
    lim = dot1 + 1 + _MAX_DIGITS if end - dot1 - 1 > _MAX_DIGITS else end
    while i < lim and c'0' <= v[i] <= c'9':
        expires = expires * 10 + (v[i] - c'0')
        i += 1
    if i == dot1 + 1 or i == end or v[i] != c'.':
        return False
    dot2 = i
    # <sig>: exactly 64 lowercase hex digits to the end
    if end - dot2 - 1 != _SIG_HEX:
        return False
    i = dot2 + 1
    for k in range(_DIGEST):
        hi = _HEX[v[i + 2 * k]]
        lo = _HEX[v[i + 2 * k + 1]]
        bad |= hi | lo
        t.sig[k] = <unsigned char>((hi << 4) | lo)
    if bad & 0x10:
        return False
    # the expiry, from the token's own digits
    if expires <= now_ms:
        return False
    if max_ttl_ms > 0 and now_ms <= LLONG_MAX - max_ttl_ms and expires > now_ms + max_ttl_ms:
        return False
    t.start = start
    t.uid_n = dot1 - start
    t.msg_n = dot2 - start
    return True


cdef inline bint _signed(TokenKey key, const unsigned char *v, const parsed_token *t) noexcept nogil:
    """Whether t's signature is the HMAC of its message (compared in constant time)."""
    cdef unsigned char mac[_DIGEST]
    cdef unsigned char diff = 0
    cdef int k
    _hmac(key._compress, key._inner, key._outer, v + t.start, t.msg_n, mac)
    for k in range(_DIGEST):
        diff |= mac[k] ^ t.sig[k]
    return diff == 0


@cython.final
cdef class TokenKey:
    """The secret of buyer tokens, ready to check them (see the .pyi stub)."""

    def __cinit__(self, secret, long long max_ttl_ms=0, *, impl=None):
        if not isinstance(secret, bytes):
            raise TypeError("secret must be bytes")
        if len(secret) == 0:
            raise ValueError("secret must not be empty")
        if max_ttl_ms < 0:
            raise ValueError("max_ttl_ms must be >= 0 (0: no limit)")
        self._compress = _compress_of(impl)
        self.impl = IMPLEMENTATIONS[0] if impl is None else impl
        self.max_ttl_ms = max_ttl_ms
        _hmac_states(self._compress, <const unsigned char *>PyBytes_AS_STRING(secret),
                     PyBytes_GET_SIZE(secret), self._inner, self._outer)

    def user(self, authorization, long long now_ms):
        return self.c_user(authorization, now_ms)

    cdef object c_user(self, object authorization, long long now_ms):
        cdef parsed_token t
        if not PyBytes_Check(authorization):
            return None
        cdef const unsigned char *v = <const unsigned char *>PyBytes_AS_STRING(authorization)
        if (not _parse(v, PyBytes_GET_SIZE(authorization), now_ms, self.max_ttl_ms, &t)
                or not _signed(self, v, &t)):
            return None
        return PyUnicode_DecodeASCII(<const char *>v + t.start, t.uid_n, NULL)

    cdef Py_ssize_t c_verify(self, const unsigned char *v, Py_ssize_t n,
                             long long now_ms, Py_ssize_t *uid_at) noexcept nogil:
        cdef parsed_token t
        if not _parse(v, n, now_ms, self.max_ttl_ms, &t) or not _signed(self, v, &t):
            return 0
        uid_at[0] = t.start
        return t.uid_n


def sha256(data: bytes, impl: str | None = None) -> bytes:
    cdef token_compress_fn compress = _compress_of(impl)
    if not isinstance(data, bytes):
        raise TypeError("data must be bytes")
    out = PyBytes_FromStringAndSize(NULL, _DIGEST)
    fg_sha256_finish(compress, fg_sha256_iv, 0,
                     <const unsigned char *>PyBytes_AS_STRING(data),
                     <size_t>PyBytes_GET_SIZE(data),
                     <unsigned char *>PyBytes_AS_STRING(out))
    return out


def hmac_sha256(key: bytes, msg: bytes, impl: str | None = None) -> bytes:
    cdef token_compress_fn compress = _compress_of(impl)
    cdef uint32_t inner[8]
    cdef uint32_t outer[8]
    if not isinstance(key, bytes) or not isinstance(msg, bytes):
        raise TypeError("key and msg must be bytes")
    _hmac_states(compress, <const unsigned char *>PyBytes_AS_STRING(key),
                 PyBytes_GET_SIZE(key), inner, outer)
    out = PyBytes_FromStringAndSize(NULL, _DIGEST)
    _hmac(compress, inner, outer, <const unsigned char *>PyBytes_AS_STRING(msg),
          PyBytes_GET_SIZE(msg), <unsigned char *>PyBytes_AS_STRING(out))
    return out
