# C-level API of the purchase path (see _buy.pyx for the theory of operation).

from flashgate.core._hll cimport HyperLogLog
from flashgate.core._stock cimport Ledger
from flashgate.core.outcomes cimport N_OUTCOMES
from flashgate.gateway._http cimport Request
from flashgate.gateway._net cimport ClientIP, Peer
from flashgate.gateway._protocol cimport Pending
from flashgate.gateway._token cimport TokenKey
from flashgate.limiter._gcra cimport Limiter

cdef enum:
    N_LATENCY = 18  # buckets of the committed buys' latency: LATENCY_BOUNDS_US, then beyond


cdef class EventCore:
    """An event as the purchase path sees it, and its counters in this worker."""
    cdef public object event        # its definition (events.Event)
    cdef public dict by_id          # SKU id -> its runtime (a SkuCore)
    cdef public HyperLogLog visitors      # who viewed it: identities, else client IPs
    cdef public HyperLogLog participants  # users who sent a buy request
    cdef public HyperLogLog buyers        # users who got an order
    cdef public long long pv, attempts, orders, units, revenue
    cdef long long answered[N_OUTCOMES]  # requests answered with each refusal, by code
    cdef long long latency[N_LATENCY]    # committed buys by latency bucket, since the last take
    cdef public long long latency_us     # committed buys' latency summed, µs (never reset)

    cdef void count(self, int code) noexcept
    cdef void sold(self, long long qty, long long amount, long long elapsed_us) noexcept


cdef class SkuCore:
    """A SKU as the purchase path sees it."""
    cdef public int idx             # its index in the ledger
    cdef public object sku          # its definition (events.Sku)
    cdef public EventCore ert       # its event
    cdef public int limit           # per-user limit (sku.per_user_limit, as a C int)
    cdef public bytes oid_prefix    # its order ids' start: "<event>.<sku>.<worker boot id>"
    cdef public str idem_prefix     # where its Idempotency-Keys' orders live: keys.SkuKeys.idem
    cdef public bytes order_json    # its orders' JSON with %s (id, user) and %d (figures) holes
    cdef public object waiters      # requests parked on its units in flight (a deque)


cdef class Purchase:
    """One admitted (or parked) buy request, until Redis answers it."""
    cdef public SkuCore srt
    cdef public str user
    cdef public int qty
    cdef public int held            # units the ledger counts in flight for it (0: a probe)
    cdef public str fp              # its Idempotency-Key's fingerprint ("" without a key)
    cdef public str idem_key        # the key's order (a KEYS entry of the commit), or None
    cdef public bytes order_id      # made when it joins a batch
    cdef public Pending fut         # its answer
    cdef public long long deadline  # monotonic µs a parked request gives up at (0: none)
    cdef public long long t0        # monotonic µs it arrived at


cdef class Target:
    """What the router knows of one exact path (routing.py builds them)."""
    cdef public dict routes         # method (bytes) -> routing.Bound
    cdef public bytes not_allowed   # the 405 answer, with its Allow header
    cdef public EventCore ert       # the event of a per-event path, else None
    cdef public bint buy            # POST here is the purchase: this module's


cdef class BuyPath:
    cdef Ledger ledger
    cdef readonly Limiter limiter
    cdef readonly TokenKey tokens   # buyer tokens' key, or None
    cdef readonly bint dev          # no secret: X-User-Id names the buyer (dev identity)
    cdef readonly ClientIP client_ip  # who the client of a request is (_net.pyx)
    cdef object conn                # the worker's RedisConnection
    cdef object call_soon           # the loop's
    cdef bint ip_limited, user_limited, global_limited
    cdef long long commit_queue, wait_queue, wait_timeout_us
    cdef dict bodies                # buy bodies seen -> (sku, qty) or their 400 answer
    cdef public dict targets        # exact path -> Target (the router's)
    cdef public object router       # the Python entry of every other request
    cdef public object flush        # the committer's group commit (once per loop turn)
    cdef public list skus           # SKU runtimes by ledger index
    cdef public long long queued    # reservations sent or about to be sent to Redis
    cdef public long long waiting   # parked requests
    cdef public unsigned long long seq  # order ids made (their last part permutes it)
    cdef unsigned long long oid_k0, oid_k1  # the order ids' key (see _order_id)
    cdef public bint flush_scheduled
    cdef public bint clock_ok       # this host's clock is in step with Redis TIME
    cdef public long long clock_offset_ms  # Redis TIME - this host's clock

    cdef object _buy(self, Request req, EventCore ert)
    cpdef str user_of(self, Request req)
    cpdef str visitor_of(self, Request req)
    cdef str _user_at(self, Request req, long long wall_ms)
    cdef Py_hash_t _client_hash(self, Request req) except? -1
    cpdef object sku_of(self, bytes body, EventCore ert)
    cdef bint _connected(self)
    cdef object _buy_with_key(self, SkuCore srt, str user, object qty, str key)
    cpdef object admit(self, SkuCore srt, str user, object qty, str fp, str idem_key,
                       Pending fut)
    cdef object _admit(self, SkuCore srt, str user, object qty, str fp, str idem_key,
                       Pending fut, long long now_ms, long long now_us)
    cdef object _park(self, SkuCore srt, str user, int qty, str fp, str idem_key, Pending fut)
    cpdef object enqueue(self, Purchase p)
    cpdef retry_waiters(self, SkuCore srt)
    cpdef long long now_ms(self)
