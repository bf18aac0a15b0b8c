"""GCRA rate limiting over a fixed-size table of keys.

Theory of operation
===================

GCRA (generic cell rate algorithm; the same limits as a token bucket).
  Each key has a theoretical arrival time TAT: when its next request would be
  on schedule. T = 1/rate is the emission interval, tau = T * (burst - 1) the
  tolerance. A request at `now` uses tat = max(TAT, now). If tat - now > tau it
  arrives too early: refused, retry after tat - tau - now, nothing stored.
  Otherwise it is allowed and TAT becomes tat + T. One int64 per key, no timer.

Time.
  Callers pass a monotonic clock in integer microseconds, 0 <= now_us <=
  MAX_NOW_US. Inside, times are int64 nanoseconds, so that T = 1e9 / rate
  keeps sub-microsecond precision (a global rate of 30k/s has T = 33.3 us;
  rounding T to whole microseconds would admit 1% too many). Retry-after is
  rounded up to whole microseconds, so a retry exactly that much later passes.

The table.
  One C array of `capacity` slots (a power of two, at least 8), allocated once
  and zero-filled, never resized: memory_bytes = 16 * capacity (+64 bytes of
  alignment slack), i.e. 16 MiB for 1 << 20 slots, whatever the number of keys.
  A slot is (64-bit key hash, TAT). The hash is Python's (cached for str,
  randomized per process) mixed by the splitmix64 finalizer. The table is split
  in buckets of 8 slots, two cache lines fetched together; a key lives in the
  bucket its hash picks and nowhere else, so a lookup reads one bucket.

A slot whose TAT <= now is free.
  Such an entry says nothing the limiter would not assume of an unseen key
  (tat = max(TAT, now) = now either way), so it is reused without clean-up.

Eviction: a new key takes the slot of its bucket with the smallest TAT.
  That is a free slot if there is one. Otherwise it is the live entry nearest
  to expiring, and its key is forgotten early (counted in `evictions`).
  Consequences:
  * Forgetting a key only makes the limiter more lenient toward that key
    (it starts again with a full burst). It never refuses an innocent key: a
    key is refused only on the TAT stored under its own 64-bit hash (two
    keys share one only on a 64-bit hash collision).
  * A key being refused has TAT > now + tau; a key last seen once, at t <= now,
    has TAT = t + T <= now + tau when burst >= 2. So a limited key is evicted
    only when all 8 slots of its bucket hold keys at their limit too: a flood
    of new keys passes through the table without freeing the keys it limits.
    (With burst < 2, a limited key can be the oldest entry of a full bucket.)
  * The hash is randomized per process (unless PYTHONHASHSEED is fixed), so
    an attacker cannot pick keys that land in one bucket to push a chosen key
    out; a flood spreads evenly and, at worst, shortens how long the table
    remembers keys.

Disabled (rate <= 0, or a rate so high that T rounds to 0 ns): every hit is
allowed, nothing is stored, no table is allocated (capacity == 0).

The hot path (c_hit) is C only: no Python object, no allocation, no GIL needed;
an allowed hit() returns the cached int 0. The table is not locked: use one
Gcra per thread, or hold the GIL (as the Python-level methods do).
"""

cimport cython
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from cpython.object cimport PyObject_Hash
from libc.math cimport isinf, isnan, llround
from libc.stdint cimport int64_t, uint64_t, uintptr_t

# now (ns) + tau + T must fit in an int64: now < 2**62 ns, tau + T <= 2**61 ns.
cdef int64_t _MAX_NOW_NS = 1LL << 62
cdef int64_t _MAX_SPAN_NS = 1LL << 61
cdef long long _MAX_NOW_US = _MAX_NOW_NS // 1000
cdef Py_ssize_t _MAX_CAPACITY = (<Py_ssize_t>1) << 40
cdef enum:
    _ALIGN = 64   # the table starts on a cache line

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define flashgate_prefetch(p) __builtin_prefetch(p)
    #else
    #define flashgate_prefetch(p) ((void)(p))
    #endif
    """
    void flashgate_prefetch(const void *p) noexcept nogil

# Largest now_us accepted (about 146 years of monotonic clock).
MAX_NOW_US = _MAX_NOW_US


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # splitmix64 finalizer: every input bit affects every output bit.
    x = (x ^ (x >> 30)) * <uint64_t>0xbf58476d1ce4e5b9ULL
    x = (x ^ (x >> 27)) * <uint64_t>0x94d049bb133111ebULL
    x = x ^ (x >> 31)
    return x + (x == 0)  # 0 marks a never-used slot


cdef inline long long _admit(int64_t *tat_p, int64_t now, int64_t period,
                             int64_t tau) noexcept nogil:
    # The GCRA step on one stored TAT: 0 and advance it, or the wait in us.
    cdef int64_t tat = tat_p[0]
    if tat < now:
        tat = now
    if tat - now > tau:
        return (tat - tau - now + 999) // 1000
    tat_p[0] = tat + period
    return 0


cdef inline int _check_now(long long now_us) except -1:
    if <unsigned long long>now_us > <unsigned long long>_MAX_NOW_US:
        raise ValueError(f"now_us must be in [0, {MAX_NOW_US}] (got {now_us})")
    return 0


@cython.final
cdef class Gcra:
    """GCRA (== token bucket) limits over a fixed-size table of keys."""

    def __cinit__(self, double rate, double burst, Py_ssize_t capacity=65536):
        cdef double period
        cdef Py_ssize_t slots
        self._table = NULL
        self._raw = NULL
        if isnan(rate):
            raise ValueError("rate must be a number of requests per second, not NaN")
        if not burst >= 1.0:  # also catches NaN
            raise ValueError(f"burst must be >= 1 (got {burst!r})")
        if isinf(burst):
            raise ValueError("burst must be finite")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        if capacity > _MAX_CAPACITY:
            raise ValueError(f"capacity must be <= {_MAX_CAPACITY} (got {capacity})")
        self.rate = rate
        self.burst = burst
        self._period_ns = 0
        self._tau_ns = 0
        if rate <= 0.0:
            return
        period = 1e9 / rate
        if period * burst > <double>_MAX_SPAN_NS:
            raise ValueError(
                f"rate {rate!r} with burst {burst!r} spans more than 2**61 ns; "
                "use rate <= 0 to disable the limit"
            )
        self._period_ns = llround(period)
        if self._period_ns == 0:
            return  # faster than one request per ns: no limit at all
        # tau from the rounded T, so that an integer burst is exactly (burst-1)*T
        self._tau_ns = llround(<double>self._period_ns * (burst - 1.0))

        slots = GCRA_WAYS
        while slots < capacity:
            slots <<= 1
        self._raw = PyMem_RawCalloc(<size_t>slots * sizeof(gcra_slot) + _ALIGN, 1)
        if self._raw == NULL:
            raise MemoryError(f"cannot allocate a rate-limit table of {slots} slots")
        self._table = <gcra_slot *>((<uintptr_t>self._raw + _ALIGN - 1) & ~<uintptr_t>(_ALIGN - 1))
        self.capacity = slots
        self.memory_bytes = slots * sizeof(gcra_slot) + _ALIGN
        self._bucket_mask = <uint64_t>(slots // GCRA_WAYS - 1)

    def __dealloc__(self):
        if self._raw != NULL:
            PyMem_RawFree(self._raw)
            self._raw = NULL
            self._table = NULL

    cdef long long c_hit(self, Py_hash_t h, long long now_us) noexcept nogil:
        cdef int64_t now
        cdef uint64_t key
        cdef gcra_slot *bucket
        cdef gcra_slot *victim
        cdef int i
        if self._table == NULL:
            return 0
        now = now_us * 1000
        if now > self._last_now_ns:
            self._last_now_ns = now
        key = _mix(<uint64_t>h)
        bucket = self._table + (key & self._bucket_mask) * GCRA_WAYS
        # A bucket is two cache lines: fetch the second one while the first
        # is being compared, so that a cold bucket costs one miss, not two.
        flashgate_prefetch(bucket + GCRA_WAYS // 2)
        victim = bucket
        for i in range(GCRA_WAYS):
            if bucket[i].key == key:
                return _admit(&bucket[i].tat, now, self._period_ns, self._tau_ns)
            if bucket[i].tat < victim.tat:
                victim = &bucket[i]
        # An unseen key is always allowed (tau >= 0): it takes the slot with
        # the smallest TAT, which is free unless the bucket is full of live keys.
        if victim.tat > now:
            self.evictions += 1
        victim.key = key
        victim.tat = now + self._period_ns
        return 0

    cdef void prefetch(self, Py_hash_t h) noexcept nogil:
        cdef gcra_slot *bucket
        if self._table == NULL:
            return
        bucket = self._table + (_mix(<uint64_t>h) & self._bucket_mask) * GCRA_WAYS
        flashgate_prefetch(bucket)
        flashgate_prefetch(bucket + GCRA_WAYS // 2)

    cdef long long c_hit_global(self, long long now_us) noexcept nogil:
        if self._period_ns == 0:
            return 0
        return _admit(&self._global_tat, now_us * 1000, self._period_ns, self._tau_ns)

    def hit(self, key, long long now_us):
        """0 if allowed (and counted), else microseconds until allowed."""
        _check_now(now_us)
        return self.c_hit(PyObject_Hash(key), now_us)

    def hit_global(self, long long now_us):
        """The same limit on a single key-less bucket."""
        _check_now(now_us)
        return self.c_hit_global(now_us)

    def __len__(self):
        """Live entries: TAT after the latest `now` seen. O(capacity)."""
        cdef Py_ssize_t i
        cdef Py_ssize_t live = 0
        cdef int64_t now = self._last_now_ns
        if self._table == NULL:
            return 0
        with nogil:
            for i in range(self.capacity):
                if self._table[i].tat > now:
                    live += 1
        return live

    def __repr__(self):
        return (
            f"Gcra(rate={self.rate!r}, burst={self.burst!r}, capacity={self.capacity})"
        )


@cython.final
cdef class Limiter:
    """Bundles the three limits the gateway applies: per IP, per user, global."""

    def __cinit__(self, double ip_rate=0.0, double ip_burst=1.0,
                 double user_rate=0.0, double user_burst=1.0,
                 double global_rate=0.0, double global_burst=1.0,
                 Py_ssize_t capacity=65536):
        self.ip = Gcra(ip_rate, ip_burst, capacity)
        self.user = Gcra(user_rate, user_burst, capacity)
        # The global limit uses only the key-less bucket: the smallest table.
        self.glob = Gcra(global_rate, global_burst, 1)

    def check_ip(self, ip, long long now_us):
        """0, or microseconds until this IP may send again."""
        _check_now(now_us)
        return self.ip.c_hit(PyObject_Hash(ip), now_us)

    def check_user(self, user, long long now_us):
        """0, or microseconds until this user may send again."""
        _check_now(now_us)
        return self.user.c_hit(PyObject_Hash(user), now_us)

    def check_global(self, long long now_us):
        """0, or microseconds until the global admission rate allows a request."""
        _check_now(now_us)
        return self.glob.c_hit_global(now_us)

    def __repr__(self):
        return f"Limiter(ip={self.ip!r}, user={self.user!r}, glob={self.glob!r})"
