"""What can become of a purchase: one table of codes shared by the ledger
(``_stock.pyx``), the commit script's replies (``lua/commit.lua``, which gets its
codes from here: ``scripts.py``) and the HTTP answers (``answers``).

The C side declares the same numbers as constants in ``outcomes.pxd``;
tests/unit/test_outcomes.py checks that both agree.

A code is produced by one or more layers:

* ledger: decided from the worker's memory (``Ledger.reserve``);
* script: decided by Redis in the commit script;
* gateway: decided by the request path before the ledger (identity, limits, body).

``O_WAIT`` and ``O_PROBE`` are the ledger's instructions to the request path, never
an answer; ``O_EXISTS`` and ``O_REPLAY`` are answered with the order they name;
``O_SOLD_TIERS`` is a sale like ``O_SOLD`` whose units straddle price tiers (its reply
carries the breakdown).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    name: str  # the API's error code (or what the counter is called)
    status: int  # the HTTP status of its answer (0: not an answer of its own)
    message: str
    by: str  # who decides it: "ledger", "script", "gateway", joined with "+"


OUTCOMES: tuple[Outcome, ...] = (
    Outcome(0, "sold", 200, "a new order", "ledger+script"),
    Outcome(1, "sold_out", 409, "no unit left for this sku", "ledger+script"),
    Outcome(2, "limit_exceeded", 409, "this would exceed the per-user limit", "ledger+script"),
    Outcome(3, "not_started", 409, "the sale has not started", "ledger+script"),
    Outcome(4, "ended", 409, "the sale has ended", "ledger+script"),
    Outcome(5, "paused", 409, "the sale is paused", "ledger+script"),
    Outcome(6, "not_registered", 409, "registration is required for this sale", "script"),
    Outcome(7, "idempotency_mismatch", 422,
            "this Idempotency-Key was used with a different request", "gateway+script"),
    Outcome(8, "not_found", 404, "no such event, sku or order", "gateway+script"),
    Outcome(9, "exists", 0, "this order id is stored already (a re-sent batch)", "script"),
    Outcome(10, "replay", 0, "the Idempotency-Key's earlier order", "script"),
    Outcome(11, "wait", 0, "units in flight may change the answer", "ledger"),
    Outcome(12, "probe", 0, "Redis decides, holding no units", "ledger"),
    Outcome(13, "rate_limited", 429, "too many requests; slow down", "gateway"),
    Outcome(14, "unavailable", 503, "the store is unreachable or overloaded; retry",
            "gateway"),
    Outcome(15, "bad_request", 400, "the request is malformed", "gateway"),
    Outcome(16, "unauthenticated", 401, "missing or invalid identity", "gateway"),
    Outcome(17, "sold_tiers", 0, "a new order whose units straddle price tiers", "script"),
)

BY_NAME: dict[str, Outcome] = {o.name: o for o in OUTCOMES}

# Module constants, e.g. ``SOLD_OUT == 1``.
SOLD = 0
SOLD_OUT = 1
LIMIT_EXCEEDED = 2
NOT_STARTED = 3
ENDED = 4
PAUSED = 5
NOT_REGISTERED = 6
IDEMPOTENCY_MISMATCH = 7
NOT_FOUND = 8
EXISTS = 9
REPLAY = 10
WAIT = 11
PROBE = 12
RATE_LIMITED = 13
UNAVAILABLE = 14
BAD_REQUEST = 15
UNAUTHENTICATED = 16
SOLD_TIERS = 17

# The refusals a request can be counted under (every outcome with an answer of its
# own, but the sale): the ``rejections`` of the stats.
REJECTIONS: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.status >= 400)


def lua_header() -> str:
    """The codes as Lua locals, put in front of a script's source: the scripts name
    codes, this table numbers them."""
    names = [o.name.upper() for o in OUTCOMES]
    codes = [str(o.code) for o in OUTCOMES]
    return f"local {', '.join(names)} = {', '.join(codes)}\n"
