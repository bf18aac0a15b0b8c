# The outcome codes of a purchase, as C constants: the ledger's answers, the commit
# script's replies and the HTTP answers share them. The table of names, statuses and
# messages is core/outcomes.py; tests/unit/test_outcomes.py checks the two agree
# (and the commit script gets its codes from that table).

cdef enum:
    O_SOLD = 0                  # a new order (the ledger's OK: admitted to the batch)
    O_SOLD_OUT = 1
    O_LIMIT_EXCEEDED = 2
    O_NOT_STARTED = 3
    O_ENDED = 4
    O_PAUSED = 5
    O_NOT_REGISTERED = 6
    O_IDEMPOTENCY_MISMATCH = 7
    O_NOT_FOUND = 8
    O_EXISTS = 9                # script: this order id exists (a re-sent batch)
    O_REPLAY = 10               # script: an Idempotency-Key's earlier order
    O_WAIT = 11                 # ledger: units in flight may change the answer
    O_PROBE = 12                # ledger: to Redis holding nothing (a key's possible replay)
    O_RATE_LIMITED = 13
    O_UNAVAILABLE = 14
    O_BAD_REQUEST = 15
    O_UNAUTHENTICATED = 16
    O_SOLD_TIERS = 17           # script: a new order whose units straddle price tiers
    N_OUTCOMES = 18
