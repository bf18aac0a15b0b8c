"""The purchase path in C (type stub of the Cython module; see _buy.pyx)."""

from typing import Any

from flashgate.core._hll import HyperLogLog
from flashgate.core._stock import Ledger
from flashgate.gateway._http import Request

LATENCY_BOUNDS_US: tuple[int, ...]

def mono_us() -> int:
    """The monotonic clock the purchase path stamps requests with, in µs."""

def user_of_header(raw: object) -> str | None:
    """The user id of an ``X-User-Id`` value, or None (checked in C)."""

def rate_limited(wait_us: int) -> bytes:
    """The 429 of a refusal that may be retried in ``wait_us`` microseconds."""

def order_id(prefix: bytes, key: bytes, seq: int) -> bytes:
    """The order id the path makes for sequence number ``seq`` under a 16-byte key (the
    C function, exposed for tests)."""

def siphash24(key: bytes, word: int) -> int:
    """SipHash-2-4 of one 8-byte little-endian word under a 16-byte key (for tests)."""

class EventCore:
    """An event as the purchase path sees it, and its counters in this worker."""

    event: Any
    by_id: dict[str, Any]
    visitors: HyperLogLog
    participants: HyperLogLog
    buyers: HyperLogLog
    pv: int
    attempts: int
    orders: int
    units: int
    revenue: int
    latency_us: int  # committed buys' latency summed, µs (never reset)
    def answers(self) -> list[int]:
        """Requests answered with each outcome code, indexed by code."""
    def add(self, code: int, n: int = 1) -> None:
        """Count ``n`` answers of ``code``."""
    def take_latency(self) -> list[int]:
        """The latency buckets counted since the last take (then zeroed)."""

class SkuCore:
    """A SKU as the purchase path sees it."""

    idx: int
    sku: Any
    ert: EventCore
    limit: int
    oid_prefix: bytes
    idem_prefix: str
    order_json: bytes
    waiters: Any

class Purchase:
    """One admitted (or parked) buy request, until Redis answers it."""

    srt: SkuCore
    user: str
    qty: int
    held: int
    fp: str
    idem_key: str | None
    order_id: bytes
    fut: Any
    deadline: int
    t0: int
    def __init__(self, srt: SkuCore, user: str, qty: int, fp: str = "",
                 idem_key: str | None = None, fut: Any = None, t0: int = 0) -> None: ...

class Target:
    """What the router knows of one exact path."""

    routes: dict[bytes, Any]
    not_allowed: bytes
    ert: EventCore | None
    buy: bool
    def __init__(self, routes: dict[bytes, Any], not_allowed: bytes,
                 ert: EventCore | None = None, buy: bool = False) -> None: ...

class BuyPath:
    """The purchase path of one worker; ``handle`` is the worker's HTTP entry."""

    limiter: Any
    targets: dict[str, Target]
    router: Any
    flush: Any
    skus: list[SkuCore]
    queued: int
    waiting: int
    seq: int
    flush_scheduled: bool
    clock_ok: bool
    clock_offset_ms: int
    def __init__(self, cfg: Any, ledger: Ledger, conn: Any) -> None: ...
    def bind(self, loop: Any, router: Any, flush: Any) -> None:
        """Start on ``loop``: other requests go to ``router.dispatch(req, target)``."""
    def now_ms(self) -> int:
        """Wall-clock ms corrected to Redis TIME."""
    def handle(self, req: Request) -> Any:
        """The HTTP entry: a buy request here, every other to the router."""
    def user_of(self, req: Request) -> str | None:
        """The buyer of a request, or None."""
    def visitor_of(self, req: Request) -> str:
        """A page view's visitor: its identity, else ``ip:<client IP>``."""
    def limit_ip(self, req: Request) -> int:
        """Count a request against its client IP's limit: 0, or the µs to wait."""
    def limit_user(self, user: str) -> int:
        """Count a request against its user's limit: 0, or the µs to wait."""
    def sku_of(self, body: bytes, ert: EventCore) -> tuple[SkuCore, int] | bytes:
        """``(SKU runtime, qty)`` of a buy body, or its 400/404 answer (counted)."""
    def admit(self, srt: SkuCore, user: str, qty: int, fp: str, idem_key: str | None,
              fut: Any) -> Any:
        """The ledger decides: a refusal's answer, or the Pending the commit resolves."""
    def enqueue(self, p: Purchase) -> Any:
        """An admitted reservation joins its SKU's batch: its answer (a Pending)."""
    def retry_waiters(self, srt: SkuCore) -> None:
        """Requests parked on this SKU's units in flight try again."""
    def expire_waiters(self) -> None:
        """Parked requests past their deadline are answered 503."""
