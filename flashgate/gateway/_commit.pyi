"""The per-reservation work of a group commit (type stub of the Cython module)."""

from typing import Any, final

class SkuCore:
    """The fields of a SKU's runtime (app.SkuRuntime) the C path reads."""

    idx: int
    sku: Any
    ert: Any
    oid_prefix: bytes

class EventCore:
    """The fields of an event's runtime (app.EventRuntime) the C path reads."""

    by_id: dict[str, Any]
    counts: dict[str, int]
    uv: Any

@final
class Purchase:
    """One admitted (or parked) buy request, until Redis answers it."""

    srt: Any
    user: str
    qty: int
    held: int
    idem: str | None
    fp: str
    order_id: bytes
    fut: Any
    deadline: int
    t0: int
    def __init__(self, srt: Any, user: str, qty: int, idem: str | None, fp: str, fut: Any,
                 t0: int) -> None: ...

def pack_commit(head: bytes, head_args: int, items: list[Purchase]) -> bytes:
    """The RESP of one commit script call: ``head`` (``Script.packed_head``), the count,
    ``0``, then per reservation order id, user, and the qty or
    ``<qty>|<fingerprint>|<Idempotency-Key>`` (``store.reservation_args``)."""

class _SaleTemplate: ...

def sale_template(tmpl: bytes, fixed: int) -> _SaleTemplate: ...
def answer_sale(t: _SaleTemplate, oid: bytes, user: str) -> bytes:
    """``tmpl % (fixed + len(oid) + len(user), oid, user)``."""

def reply_offsets(reply: Any, n: int) -> list[int] | None:
    """Where each of ``n`` reservations' part starts in a commit reply, or None."""

def answer_commit(gw: Any, srt: Any, items: list[Purchase], reply: Any, ledger: Any, idx: int,
                  lat: list[int], bounds: tuple[int, ...], now_us: int, sale_answer: Any,
                  failed: bytes) -> tuple[int, int, int] | None:
    """Settle and answer a batch from its commit reply: (orders, units, revenue), or
    None (nothing done) if the reply has not the script's shape."""

def user_of_header(raw: bytes | None) -> str | None:
    """auth.user_from_header in C: the user id of an ``X-User-Id`` value, or None."""

def hex_id(prefix: bytes, seq: int) -> bytes:
    """An order id as the path makes it: ``prefix`` + ``seq`` in lower-case hex."""

class BuyPath:
    """The common buy request in C, and the batch it joins (see _commit.pyx)."""

    routes: dict[str, tuple[int, Any]]
    queued: int
    seq: int
    flush_scheduled: bool
    flush: Any
    def __init__(self, gw: Any, ledger: Any, plain: bool, dev_ids: bool, commit_queue: int,
                 conn: Any, py_handle: Any, py_park: Any, parse_body: Any,
                 rejects: dict[int, tuple[str, bytes]], r_unauth: bytes, r_not_found: bytes,
                 r_unavailable: bytes, flush: Any) -> None: ...
    def bind(self, loop: Any) -> None: ...
    def sku_of(self, body: bytes, ert: EventCore) -> tuple[Any, int] | bytes:
        """``(SKU runtime, qty)`` of a buy body for this event, or its 400/404 answer
        (counted)."""
    def buy_body(self, body: bytes) -> Any:
        """``(sku, qty)`` of a buy body, or its 400 answer (cached)."""
    def dev_user(self, headers: dict[bytes, bytes]) -> str | None:
        """The user of an ``X-User-Id`` header, or None (checked in C)."""
    def handle(self, req: Any) -> Any:
        """The HTTP entry: the common buy request here, everything else in Python."""
    def enqueue(self, p: Purchase) -> Any:
        """An admitted reservation joins its SKU's batch: its answer (a Pending)."""
