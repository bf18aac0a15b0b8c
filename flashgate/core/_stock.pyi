"""The in-memory stock ledger of one worker (Cython). See _stock.pyx for the theory."""

from typing import Any

OK: int
SOLD_OUT: int
LIMIT_EXCEEDED: int
NOT_STARTED: int
ENDED: int
PAUSED: int
WAIT: int
PROBE: int
DEBUG: bool  # built with FLASHGATE_DEBUG=1: the ledger's invariants checked after each change
BUYER_SHARD: int  # users per shard of a buyer table (while the stock does not grow)

class Ledger:
    def __len__(self) -> int: ...
    def add_sku(
        self,
        stock: int,
        sold: int,
        per_user_limit: int,
        starts_ms: int,
        ends_ms: int,
        paused: bool = False,
    ) -> int:
        """Add a SKU with what Redis says of it; returns its index."""
    def configure(
        self, sku: int, stock: int, per_user_limit: int, starts_ms: int, ends_ms: int, paused: bool
    ) -> None:
        """Apply a changed event definition."""
    def set_paused(self, sku: int, paused: bool) -> None: ...
    def check(self, sku: int, user: str, qty: int, now_ms: int) -> int:
        """What ``reserve(..., idem=False)`` would answer; changes nothing."""
    def reserve(self, sku: int, user: str, qty: int, now_ms: int, idem: bool) -> int:
        """Decide a purchase from memory. OK: ``qty`` units are now in flight and the
        caller must ``push`` a reservation and later ``settle`` it. WAIT: units in
        flight may change the answer; retry after the next settle. Any other code is
        the final answer (SOLD_OUT, LIMIT_EXCEEDED, NOT_STARTED, ENDED, PAUSED).
        With ``idem``, every refusal or wait becomes PROBE: send it to Redis holding
        no units (it may be the replay of a committed order)."""
    def push(self, sku: int, item: Any) -> None:
        """Queue an admitted reservation for the next group commit of its SKU."""
    def take_batches(self) -> list[tuple[int, list[Any]]]:
        """The pending reservations per SKU, in arrival order; clears them."""
    def settle(self, sku: int, user: str, held: int, sold_qty: int) -> None:
        """Redis answered one reservation: its ``held`` units (0 for a probe) leave
        the in-flight count; ``sold_qty`` units were sold to ``user`` as a new sale."""
    def observe(self, sku: int, sold: int, stock: int) -> None:
        """Redis's report of a SKU's ``sold`` and ``stock`` (after settling a batch)."""
    def forget_buyers(self, sku: int) -> None:
        """Units were given back somewhere: drop the local buyer table of a SKU."""
    def left(self, sku: int) -> int:
        """Units not held by orders per Redis's last report, never below 0."""
    def state(self, sku: int) -> tuple[int, int, int, bool]:
        """``(stock, sold, inflight, paused)``."""
    def bought(self, sku: int, user: str) -> int:
        """Units ``user`` bought through this worker, as the buyer table counts them."""
    def buyer_count(self, sku: int) -> int:
        """Users in the SKU's buyer table."""
    def buyer_shards(self, sku: int) -> int:
        """How many shards the SKU's buyer table is split in (about stock / BUYER_SHARD)."""
    def pending_count(self, sku: int) -> int: ...
    def verify(self) -> None:
        """Verify the invariants of every SKU (AssertionError)."""
