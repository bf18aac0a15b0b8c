# cython: freethreading_compatible=False
"""The in-memory stock ledger of one worker: an exact filter and a batcher.

Theory of operation
===================

Redis decides every sale (one commit script per batch and SKU). The ledger never
sells on its own; it answers from memory only what it *knows*, and batches the
rest for the next group commit.

Per SKU it holds what Redis last reported (``stock``, ``sold``), the units of this
worker's reservations that Redis has not answered yet (``inflight``), the sale
window, the pause flag, the per-user limit, and the users who bought through this
worker (``buyers``, at most ``stock`` entries) or have units in flight
(``holding``, at most ``inflight`` entries). Tables are sized by stock, never by the
number of requests.

The buyer table of a SKU is a C hash table of the users' str hashes (64 bits, keyed
per process by Python's hash randomization) to units: 16 bytes a slot, no Python
object kept per buyer. It is split in ``2**k`` shards by the hash, ``k`` chosen from
the stock so that each holds at most about ``BUYER_SHARD`` users: one table of a
million buyers would double in one go on the purchase path (tens of ms, a stall
every worker's latency tail would show); shards grow one at a time, each in well
under a millisecond. Two users whose 64-bit hashes are equal share an entry, so the
second could be refused ``limit_exceeded`` by this worker (never sold more: Redis
counts each user apart). For a million buyers the chance that any two collide is
about 3 in 10^8.

``reserve(sku, user, qty, now_ms, idem)`` decides, in this order:

1. outside the window -> NOT_STARTED / ENDED; paused -> PAUSED;
2. ``sold >= stock`` (Redis said no unit is left) -> SOLD_OUT;
3. the user already holds ``limit`` units through this worker -> LIMIT_EXCEEDED;
4. ``qty`` fits in the open units (``stock - sold - inflight``) and in what the user
   may still hold counting their own units in flight -> OK: the units join
   ``inflight`` until ``settle``;
5. otherwise, if units are in flight, their outcome can change the answer -> WAIT
   (the caller parks the request, bounded, and retries after the next settle);
   with nothing in flight, Redis said fewer than ``qty`` are left -> SOLD_OUT.

A request with an Idempotency-Key may be the replay of an order Redis already
holds, which must be answered with that order whatever the ledger knows (sold out,
ended, at the limit). So where the ledger would refuse or park it, it answers
PROBE instead: the request goes to Redis holding no units (``held`` 0); Redis
replays the order, or refuses, or, if units opened meanwhile, sells.

Invariants (checked after every mutation when built with FLASHGATE_DEBUG=1):

* I1 ``0 <= inflight <= max(0, stock - sold)`` once admitted: a batch never asks
  Redis for more units than it last said were open (a stale ``sold`` makes Redis
  refuse some; it can never make Redis oversell, Redis checks again).
* I2 ``inflight == sum(holding.values())`` and ``sum(pending qty) <= inflight``.
* I3 ``buyers[u] <= limit_max`` for every user, the highest limit since the buyer
  table began (a definition may lower the limit when Redis holds no sale of the
  event, e.g. after it lost its data: a buyer over the new limit is simply at it);
  SOLD_OUT only when ``sold >= stock``
  per Redis, or nothing is in flight and Redis said fewer than ``qty`` are left.

A rejection touches only C fields and (for the user check) one dict lookup: it
allocates no Python object.
"""

from cpython.mem cimport PyMem_Calloc, PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject_Hash
from cpython.object cimport PyObject

cimport cython

cdef extern from *:
    """
    #ifndef FLASHGATE_DEBUG
    #define FLASHGATE_DEBUG 0
    #endif
    """
    bint FLASHGATE_DEBUG

# True in a build with the invariant checks compiled in (FLASHGATE_DEBUG=1 at build
# time): the debug pass of the tests asserts that it runs on that build.
DEBUG = bool(FLASHGATE_DEBUG)

# Outcome codes (core/outcomes.py: one table for the ledger, the commit script and the
# HTTP answers).
OK = O_SOLD
SOLD_OUT = O_SOLD_OUT
LIMIT_EXCEEDED = O_LIMIT_EXCEEDED
NOT_STARTED = O_NOT_STARTED
ENDED = O_ENDED
PAUSED = O_PAUSED
WAIT = O_WAIT
PROBE = O_PROBE

# Users per shard of a buyer table (at most, while the stock does not grow), and the
# most shards a SKU gets.
cdef long long _BUYER_SHARD = 4096
cdef long long _MAX_SHARDS = 4096
BUYER_SHARD = _BUYER_SHARD


# ----------------------------------------------------------------- buyer table
# Open addressing, linear probing; a slot with units 0 is empty (a buyer has >= 1).
# The shard is picked by bits 20 and up of the hash, the slot by its low bits.

cdef inline unsigned long long _key_of(str user) except? 0:
    return <unsigned long long>PyObject_Hash(user)


cdef inline BuyerShard *_shard(SkuState *s, unsigned long long key) noexcept:
    return &s.buyers[<Py_ssize_t>((key >> 20) & <unsigned long long>s.buyer_mask)]


cdef inline BuyerSlot *_find(BuyerShard *b, unsigned long long key) noexcept:
    # the slot of `key`, or the empty slot where it would go (b.slots != NULL)
    cdef Py_ssize_t i = <Py_ssize_t>(key & <unsigned long long>b.mask)
    cdef BuyerSlot *slot
    while True:
        slot = &b.slots[i]
        if slot.units == 0 or slot.key == key:
            return slot
        i = (i + 1) & b.mask


cdef long long _bought(SkuState *s, unsigned long long key) noexcept:
    cdef BuyerShard *b = _shard(s, key)
    if b.slots == NULL:
        return 0
    return _find(b, key).units


cdef int _grow(BuyerShard *b) except -1:
    cdef Py_ssize_t size = 8 if b.slots == NULL else 2 * (b.mask + 1)
    cdef BuyerSlot *old = b.slots
    cdef Py_ssize_t old_size = 0 if old == NULL else b.mask + 1
    cdef BuyerSlot *slots = <BuyerSlot *>PyMem_Calloc(size, sizeof(BuyerSlot))
    cdef Py_ssize_t i
    if slots == NULL:
        raise MemoryError()
    b.slots = slots
    b.mask = size - 1
    for i in range(old_size):
        if old[i].units:
            _find(b, old[i].key)[0] = old[i]
    PyMem_Free(old)
    return 0


cdef int _add_bought(SkuState *s, unsigned long long key, long long units) except -1:
    cdef BuyerShard *b = _shard(s, key)
    cdef BuyerSlot *slot = NULL
    if b.slots != NULL:
        slot = _find(b, key)
        if slot.units:  # a buyer already in the table
            slot.units += units
            return 0
    if b.slots == NULL or 4 * (b.used + 1) > 3 * (b.mask + 1):
        _grow(b)
        slot = _find(b, key)  # (the table moved)
    slot.key = key
    slot.units = units
    b.used += 1
    s.buyer_count += 1
    return 0


cdef BuyerShard *_alloc_buyer_table(SkuState *s) except NULL:
    cdef BuyerShard *t = <BuyerShard *>PyMem_Calloc(s.buyer_mask + 1, sizeof(BuyerShard))
    if t == NULL:
        raise MemoryError()
    return t


cdef void _free_buyer_table(SkuState *s) noexcept:
    cdef Py_ssize_t i
    if s.buyers != NULL:
        for i in range(s.buyer_mask + 1):
            PyMem_Free(s.buyers[i].slots)
        PyMem_Free(s.buyers)
        s.buyers = NULL
    s.buyer_count = 0


@cython.final
cdef class Ledger:
    """See the module docstring; ``.pyi`` has the per-method documentation."""

    def __cinit__(self):
        self.skus = NULL
        self.n = 0
        self.cap = 0
        self.holding = []
        self.pending = []
        self.dirty = []

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.skus != NULL:
            for i in range(self.n):
                _free_buyer_table(&self.skus[i])
            PyMem_Free(self.skus)
            self.skus = NULL

    def __len__(self):
        return self.n

    # -- configuration -----------------------------------------------------

    def add_sku(self, long long stock, long long sold, int per_user_limit,
                long long starts_ms, long long ends_ms, bint paused=False):
        cdef SkuState *s
        cdef Py_ssize_t newcap
        if per_user_limit < 1:
            raise ValueError("per_user_limit must be >= 1")
        if stock < 0 or sold < 0:
            raise ValueError("stock and sold must be >= 0")
        if self.n == self.cap:
            newcap = 8 if self.cap == 0 else self.cap * 2
            s = <SkuState *>PyMem_Realloc(self.skus, newcap * sizeof(SkuState))
            if s == NULL:
                raise MemoryError()
            self.skus = s
            self.cap = newcap
        s = &self.skus[self.n]
        s.stock = stock
        s.sold = sold
        s.inflight = 0
        s.starts_ms = starts_ms
        s.ends_ms = ends_ms
        s.limit = per_user_limit
        s.limit_max = per_user_limit
        s.paused = paused
        s.buyer_mask = 0
        while s.buyer_mask + 1 < _MAX_SHARDS and (s.buyer_mask + 1) * _BUYER_SHARD < stock:
            s.buyer_mask = s.buyer_mask * 2 + 1
        s.buyers = NULL
        s.buyer_count = 0
        s.buyers = _alloc_buyer_table(s)
        self.holding.append({})
        self.pending.append([])
        self.n += 1
        return self.n - 1

    def configure(self, int sku, long long stock, int per_user_limit,
                  long long starts_ms, long long ends_ms, bint paused):
        """Apply a changed event definition (the window, the limit, the stock)."""
        cdef SkuState *s = self._sku(sku)
        if per_user_limit < 1:
            raise ValueError("per_user_limit must be >= 1")
        if stock < 0:
            raise ValueError("stock must be >= 0")
        s.stock = stock
        s.limit = per_user_limit
        if per_user_limit > s.limit_max:
            s.limit_max = per_user_limit
        s.starts_ms = starts_ms
        s.ends_ms = ends_ms
        s.paused = paused
        if FLASHGATE_DEBUG:
            self._check(sku)

    def set_paused(self, int sku, bint paused):
        self._sku(sku).paused = paused

    cdef inline SkuState *_sku(self, int sku) except NULL:
        if sku < 0 or sku >= self.n:
            raise IndexError(f"no sku {sku}")
        return &self.skus[sku]

    # -- the hot path --------------------------------------------------------

    cpdef int check(self, int sku, str user, int qty, long long now_ms) except -1:
        """What ``reserve`` would answer without an Idempotency-Key; changes nothing."""
        cdef SkuState *s = self._sku(sku)
        cdef long long left, held
        cdef PyObject *v
        if qty < 1:
            raise ValueError("qty must be >= 1")
        if now_ms < s.starts_ms:
            return O_NOT_STARTED
        if now_ms >= s.ends_ms:
            return O_ENDED
        if s.paused:
            return O_PAUSED
        left = s.stock - s.sold
        if left <= 0:
            return O_SOLD_OUT
        held = _bought(s, _key_of(user))
        if held + qty > s.limit:
            return O_LIMIT_EXCEEDED
        v = PyDict_GetItem(<dict>self.holding[sku], user)
        if v != NULL and held + <long long>(<object>v) + qty > s.limit:
            return O_WAIT  # the user's own units in flight may make it limit_exceeded
        if qty <= left - s.inflight:
            return O_SOLD
        if s.inflight > 0:
            return O_WAIT
        return O_SOLD_OUT

    cpdef int reserve(self, int sku, str user, int qty, long long now_ms, bint idem) except -1:
        cdef int code = self.check(sku, user, qty, now_ms)
        cdef dict h
        if code == O_SOLD:
            self.skus[sku].inflight += qty
            h = <dict>self.holding[sku]
            h[user] = h.get(user, 0) + qty
            if FLASHGATE_DEBUG:
                self._check(sku)
            return O_SOLD
        return O_PROBE if idem else code

    cpdef void push(self, int sku, object item) except *:
        """Queue an admitted reservation for the next group commit of its SKU."""
        cdef list p = <list>self.pending[sku]
        if not p:
            self.dirty.append(sku)
        p.append(item)

    def take_batches(self):
        """Hand out the pending reservations as ``[(sku, [items…]), …]`` and clear them."""
        cdef list out = []
        cdef int sku
        if not self.dirty:
            return out
        for sku in self.dirty:
            out.append((sku, self.pending[sku]))
            self.pending[sku] = []
        self.dirty = []
        return out

    cpdef void settle(self, int sku, str user, int held, int sold_qty) except *:
        """A reservation's answer came back: its ``held`` units (0 for a probe) leave
        ``inflight``; ``sold_qty`` units were sold to ``user`` as a new sale."""
        cdef SkuState *s = self._sku(sku)
        cdef dict h
        cdef long long rest
        if held:
            s.inflight -= held
            h = <dict>self.holding[sku]
            rest = h.get(user, 0) - held
            if rest > 0:
                h[user] = rest
            else:
                h.pop(user, None)
        if sold_qty:
            _add_bought(s, _key_of(user), sold_qty)
        if FLASHGATE_DEBUG:
            self._check(sku)

    cpdef void observe(self, int sku, long long sold, long long stock) except *:
        """What Redis reports after a commit or a refresh: the SKU's sold and stock.
        Call it after settling the batch's reservations. Fewer units sold than Redis
        last said means units came back (a cancel, an expiry, lost data): the local
        buyer table may then be too strict, and is dropped (``forget_buyers``)."""
        cdef SkuState *s = self._sku(sku)
        if sold < s.sold:
            self.forget_buyers(sku)
        s.sold = sold
        s.stock = stock

    def forget_buyers(self, int sku):
        """Units were given back (cancel / expire) somewhere: the local buyer table
        may now be too strict, so drop it; Redis still enforces the limit."""
        cdef SkuState *s = self._sku(sku)
        cdef BuyerShard *fresh = _alloc_buyer_table(s)  # first: on MemoryError nothing changed
        _free_buyer_table(s)
        s.buyers = fresh
        s.limit_max = s.limit

    # -- reading -----------------------------------------------------------

    def left(self, int sku):
        """Units not held by orders, per Redis's last report (never below 0)."""
        cdef SkuState *s = self._sku(sku)
        return s.stock - s.sold if s.stock > s.sold else 0

    def state(self, int sku):
        """``(stock, sold, inflight, paused)`` of one SKU."""
        cdef SkuState *s = self._sku(sku)
        return (s.stock, s.sold, s.inflight, bool(s.paused))

    def bought(self, int sku, str user):
        """Units ``user`` bought through this worker, as the buyer table counts them."""
        return _bought(self._sku(sku), _key_of(user))

    def buyer_count(self, int sku):
        """Users in the SKU's buyer table."""
        return self._sku(sku).buyer_count

    def buyer_shards(self, int sku):
        """How many shards the SKU's buyer table is split in."""
        return self._sku(sku).buyer_mask + 1

    def pending_count(self, int sku):
        return len(self.pending[sku])

    def verify(self):
        """Verify the invariants of every SKU; raises AssertionError."""
        cdef int i
        for i in range(self.n):
            self._check(i)

    cdef int _check(self, int sku) except -1:
        cdef SkuState *s = &self.skus[sku]
        cdef dict h = <dict>self.holding[sku]
        cdef long long total = 0
        for v in h.values():
            if v <= 0:
                raise AssertionError(f"sku {sku}: non-positive holding {v}")
            total += v
        if total != s.inflight:
            raise AssertionError(f"sku {sku}: inflight {s.inflight} != sum(holding) {total}")
        if s.inflight < 0:
            raise AssertionError(f"sku {sku}: inflight {s.inflight} < 0")
        cdef Py_ssize_t i, j, used, count = 0
        cdef BuyerShard *b
        cdef BuyerSlot *slot
        for i in range(s.buyer_mask + 1):
            b = &s.buyers[i]
            used = 0
            if b.slots != NULL:
                for j in range(b.mask + 1):
                    slot = &b.slots[j]
                    if slot.units == 0:
                        continue
                    used += 1
                    if slot.units < 0 or slot.units > s.limit_max:
                        raise AssertionError(
                            f"sku {sku}: a buyer holds {slot.units}, limit {s.limit_max}")
                    if _shard(s, slot.key) != b:
                        raise AssertionError(f"sku {sku}: a buyer in shard {i}")
                    if _find(b, slot.key) != slot:
                        raise AssertionError(f"sku {sku}: a buyer twice, or out of reach")
                if 4 * used > 3 * (b.mask + 1):
                    raise AssertionError(f"sku {sku}: shard {i} over its load")
            if used != b.used:
                raise AssertionError(f"sku {sku}: shard {i} counts {b.used}, holds {used}")
            count += used
        if count != s.buyer_count:
            raise AssertionError(f"sku {sku}: {s.buyer_count} buyers counted, {count} held")
        return 0
