# C-level declarations of the stock ledger (see _stock.pyx for the theory of operation).

from flashgate.core.outcomes cimport (
    O_ENDED, O_LIMIT_EXCEEDED, O_NOT_STARTED, O_PAUSED, O_PROBE, O_SOLD, O_SOLD_OUT, O_WAIT,
)


cdef struct BuyerSlot:
    unsigned long long key  # the user's str hash (per process, see _stock.pyx)
    long long units         # units bought; 0: the slot is empty


cdef struct BuyerShard:
    BuyerSlot *slots        # NULL until its first buyer
    Py_ssize_t mask         # slots - 1 (a power of two - 1)
    Py_ssize_t used


cdef struct SkuState:
    long long stock        # units in total, as Redis last reported
    long long sold         # units held by live orders, as Redis last reported
    long long inflight     # units of this worker's reservations not answered yet
    long long starts_ms    # window start (inclusive), epoch ms
    long long ends_ms      # window end (exclusive), epoch ms
    int limit              # per-user limit
    int limit_max          # the highest limit since the buyer table began (see I3)
    bint paused
    Py_ssize_t buyer_mask  # the buyer table's shards - 1 (a power of two - 1)
    BuyerShard *buyers     # the buyer table: buyer_mask + 1 shards
    Py_ssize_t buyer_count


cdef class Ledger:
    cdef SkuState *skus
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef list holding      # per sku: dict user -> units in flight
    cdef list pending      # per sku: list of reservations waiting for the next commit
    cdef list dirty        # skus with pending reservations, in arrival order

    cdef inline SkuState *_sku(self, int sku) except NULL
    cpdef int check(self, int sku, str user, int qty, long long now_ms) except -1
    cpdef int reserve(self, int sku, str user, int qty, long long now_ms, bint idem) except -1
    cpdef void push(self, int sku, object item) except *
    cpdef void settle(self, int sku, str user, int held, int sold_qty) except *
    cpdef void observe(self, int sku, long long sold, long long stock) except *
    cdef int _check(self, int sku) except -1
