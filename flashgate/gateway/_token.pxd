# C-level API of the buyer-token check (see _token.pyx for the theory of operation).
#
# Another Cython module can `from flashgate.gateway._token cimport TokenKey` and call
# `key.c_user(authorization_header_value, now_ms)` without going through Python calls.

cimport cython
from libc.stdint cimport uint32_t


# absorbs n whole 64-byte blocks at p into the SHA-256 state st (eight words)
ctypedef void (*token_compress_fn)(uint32_t *st, const unsigned char *p, size_t n) noexcept nogil


@cython.final
cdef class TokenKey:
    cdef readonly long long max_ttl_ms  # > 0: refuse tokens expiring later than now + this
    cdef uint32_t _inner[8]     # SHA-256 state after the block (secret ^ ipad)
    cdef uint32_t _outer[8]     # SHA-256 state after the block (secret ^ opad)
    cdef readonly str impl      # which compression function: "x86-sha" or "portable"
    cdef token_compress_fn _compress    # that function

    # The user id (str) of the token in an `Authorization` header value (bytes, or
    # None when absent) if it is `Bearer <valid, unexpired token>`, else None.
    # Any bytes at all give a str or None: never raises (but MemoryError).
    cdef object c_user(self, object authorization, long long now_ms)

    # The same check on a C buffer, without the GIL: the user id's length (1..64) and
    # its offset in value (*uid_at), or 0 if the value is not accepted.
    cdef Py_ssize_t c_verify(self, const unsigned char *value, Py_ssize_t n,
                             long long now_ms, Py_ssize_t *uid_at) noexcept nogil
