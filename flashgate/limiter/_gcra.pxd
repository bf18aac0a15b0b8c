# C-level API of the GCRA rate limiter (see _gcra.pyx for the theory of operation).
#
# Another Cython module can `from flashgate.limiter._gcra cimport Gcra` and call
# `gcra.c_hit(PyObject_Hash(key), now_us)` without going through Python calls.

cimport cython
from libc.stdint cimport int64_t, uint64_t


cdef enum:
    GCRA_WAYS = 8           # slots per bucket: 8 x 16 bytes = two 64-byte cache lines


cdef struct gcra_slot:
    uint64_t key            # splitmix64 of the key's Python hash; never 0 once used
    int64_t tat             # theoretical arrival time, ns; tat <= now means "free"


@cython.final
cdef class Gcra:
    cdef readonly double rate           # requests per second (as given)
    cdef readonly double burst          # requests that may arrive at once (as given)
    cdef readonly Py_ssize_t capacity   # slots in the table (0 when disabled)
    cdef readonly Py_ssize_t memory_bytes   # bytes allocated for the table
    cdef readonly unsigned long long evictions  # live entries pushed out by a full bucket

    cdef int64_t _period_ns     # emission interval T; 0 means disabled
    cdef int64_t _tau_ns        # tolerance tau = T * (burst - 1)
    cdef uint64_t _bucket_mask  # number of buckets - 1 (a power of two minus one)
    cdef gcra_slot *_table      # capacity slots, 64-byte aligned inside _raw
    cdef void *_raw             # what was allocated (freed in __dealloc__)
    cdef int64_t _global_tat    # the key-less bucket of hit_global()
    cdef int64_t _last_now_ns   # largest `now` seen, for __len__

    # 0 if allowed (and counted), else microseconds until this key would be
    # allowed. `h` is the key's Python hash (PyObject_Hash); now_us must lie in
    # [0, 2**62 // 1000] (the Python wrappers check it, this does not).
    cdef long long c_hit(self, Py_hash_t h, long long now_us) noexcept nogil
    # Start fetching the bucket of key hash `h` into the CPU cache (a c_hit of `h` soon
    # after finds it there): a lookup's one cache miss overlaps other work.
    cdef void prefetch(self, Py_hash_t h) noexcept nogil
    cdef long long c_hit_global(self, long long now_us) noexcept nogil


@cython.final
cdef class Limiter:
    cdef readonly Gcra ip
    cdef readonly Gcra user
    cdef readonly Gcra glob
