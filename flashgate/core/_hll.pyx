# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Unique visitors, counted in the worker's memory in Redis's own HyperLogLog format.

Theory of operation
===================

Why. Every buy counts its user towards the event's unique visitors (``uv`` in the
stats). Keeping the users of the last half second in a set and sending them with
``PFADD`` costs a set insertion per request and, at the flush, a command of tens of
thousands of arguments: a pause of milliseconds in the worker (and in Redis) every
flush. Instead each worker keeps the 16,384 registers of a HyperLogLog, updated
in C per visit (a 64-bit hash and a max), and merges them into Redis's key with
``PFMERGE`` - the same 12 KiB whatever the number of visitors.

Same sketch as Redis. A visit is hashed exactly as Redis's ``PFADD`` does
(MurmurHash64A, seed 0xadc83b19, of the UTF-8 bytes): the low 14 bits pick the
register, the number of trailing zeros of the other 50 (+1) is the candidate
value, and a register keeps its maximum. ``dump()`` writes the registers in
Redis's dense encoding (the 16-byte ``HYLL`` header, then 6 bits per register,
least significant first, with the cached cardinality marked stale), a string that
``PFMERGE`` accepts as a source. Merging is a register-wise max: idempotent and
order-free, so workers can merge their registers in any order, and merging the same
registers twice changes nothing (the registers are never reset; a lost flush is
carried by the next one).

Cost. ``add`` hashes the string's UTF-8 bytes (for an ASCII ``str`` CPython hands
out its own buffer: no copy) and updates one byte: a few tens of nanoseconds.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

cdef uint64_t SEED = 0xadc83b19


cdef inline uint64_t murmur64a(const uint8_t* data, Py_ssize_t length) noexcept nogil:
    """MurmurHash64A as Redis uses it (little-endian 8-byte words)."""
    cdef uint64_t m = 0xc6a4a7935bd1e995ULL
    cdef int r = 47
    cdef uint64_t h = SEED ^ (<uint64_t>length * m)
    cdef uint64_t k
    cdef Py_ssize_t blocks = length >> 3
    cdef Py_ssize_t i
    cdef const uint8_t* p
    for i in range(blocks):
        p = data + i * 8
        k = (<uint64_t>p[0] | <uint64_t>p[1] << 8 | <uint64_t>p[2] << 16
             | <uint64_t>p[3] << 24 | <uint64_t>p[4] << 32 | <uint64_t>p[5] << 40
             | <uint64_t>p[6] << 48 | <uint64_t>p[7] << 56)
        k *= m
        k ^= k >> r
        k *= m
        h ^= k
        h *= m
    p = data + blocks * 8
    cdef int rest = length & 7
    if rest:
        for i in range(rest):  # the last 1-7 bytes, little-endian
            h ^= <uint64_t>p[i] << (8 * i)
        h *= m
    h ^= h >> r
    h *= m
    h ^= h >> r
    return h


cdef class HyperLogLog:
    """The registers of one HyperLogLog; ``add(str)``, then ``dump()`` for PFMERGE."""

    def __cinit__(self):
        memset(self.regs, 0, REGISTERS)
        self.dirty = False

    cpdef add(self, str item):
        """Count one visit of ``item``."""
        cdef Py_ssize_t n
        cdef const char* s
        try:
            s = PyUnicode_AsUTF8AndSize(item, &n)
        except UnicodeEncodeError:  # a lone surrogate: not a visitor Redis could name
            return
        cdef uint64_t h = murmur64a(<const uint8_t*>s, n)
        cdef unsigned int index = h & (REGISTERS - 1)
        h >>= P
        h |= (<uint64_t>1) << Q
        cdef uint8_t count = 1
        while not (h & 1):
            count += 1
            h >>= 1
        if count > self.regs[index]:
            self.regs[index] = count
            self.dirty = True

    def register(self, unsigned int index):
        """One register's value (for tests)."""
        if index >= REGISTERS:
            raise IndexError(index)
        return self.regs[index]

    def dump(self):
        """The registers as a Redis dense HyperLogLog string; clears ``dirty``."""
        out = PyBytes_FromStringAndSize(NULL, HEADER + DENSE)
        cdef uint8_t* b = <uint8_t*>PyBytes_AS_STRING(out)
        memset(b, 0, HEADER + DENSE)
        b[0] = b'H'
        b[1] = b'Y'
        b[2] = b'L'
        b[3] = b'L'
        b[4] = 0  # dense
        b[15] = 0x80  # cached cardinality: stale
        cdef uint8_t* d = b + HEADER
        cdef unsigned int i, bit, byte, shift
        cdef unsigned int v
        for i in range(REGISTERS):
            v = self.regs[i]
            if not v:
                continue
            bit = i * BITS
            byte = bit >> 3
            shift = bit & 7
            d[byte] |= <uint8_t>(v << shift)
            if shift > 8 - BITS:  # the register runs into the next byte
                d[byte + 1] |= <uint8_t>(v >> (8 - shift))
        self.dirty = False
        return out
