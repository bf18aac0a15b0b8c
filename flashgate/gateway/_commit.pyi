"""The commit codec (type stub of the Cython module; see _commit.pyx)."""

from typing import Any

from flashgate.core._stock import Ledger
from flashgate.gateway._buy import Purchase, SkuCore

FIXED_KEYS: int

def pack_commit(head: bytes, keys: bytes, items: list[Purchase]) -> bytes:
    """The RESP of one commit script call: ``head`` (``Script.packed_head``), the key
    count, ``keys`` (the FIXED_KEYS fixed keys, ``pack_bulks``), the key of every
    reservation with an Idempotency-Key, the count, ``0``, then per reservation order
    id, user, and the qty or ``<qty>|<fingerprint>``."""

def pack_bulks(values: list[str | bytes]) -> bytes:
    """RESP bulk strings of ``values``, one after the other."""

def sale_answer(srt: SkuCore, oid: bytes, user: str, qty: int, price: int, created: Any,
                pay_by: Any) -> bytes:
    """The 200 answer of one order, as a commit reply answers it."""

def tiered_order(oid: bytes | str, user: str, qty: int, price: int, created: int,
                 pay_by: int, bd: bytes | str) -> dict | None:
    """The API order of a new order whose units straddle price tiers (``bd``: its
    record's breakdown, ``1x100,1x990``), or None if ``bd`` is not one."""

def reply_offsets(reply: Any, n: int) -> list[int] | None:
    """Where each of ``n`` reservations' part starts in a commit reply, or None."""

def answer_commit(ledger: Ledger, srt: SkuCore, items: list[Purchase], reply: Any,
                  now_us: int) -> bool:
    """Settle, count and answer a batch from its commit reply: True; False (nothing
    done) if the reply has not the script's shape."""

def has_replay(reply: Any, n: int) -> bool:
    """Whether a commit reply of ``n`` reservations has a REPLAY (an earlier order)."""

def answer_unreplicated(ledger: Ledger, srt: SkuCore, items: list[Purchase], reply: Any,
                        answer: bytes) -> int:
    """Settle a batch whose WAIT fell short: its sales and replays answered ``answer``
    (503), its refusals as ever; the count answered ``answer``, or -1 (nothing done) if
    the reply has not the script's shape."""
