"""GCRA rate limiting over a fixed-size table of keys (type stub of the Cython module).

See the theory of operation at the top of ``_gcra.pyx``.
"""

from collections.abc import Hashable
from typing import Final, final

MAX_NOW_US: Final[int]
"""Largest ``now_us`` accepted (2**62 ns, about 146 years of monotonic clock)."""

@final
class Gcra:
    """GCRA (generic cell rate algorithm == token bucket) over a FIXED-SIZE table of keys.

    ``rate``: requests per second sustained; ``burst``: how many may arrive at once
    (>= 1). ``rate <= 0`` disables it: every hit is allowed and nothing is stored (no
    table is allocated; ``capacity`` and ``memory_bytes`` are 0).

    The table has ``capacity`` slots (rounded up to a power of two, at least 8) of 16
    bytes, allocated once. When the 8-slot bucket of a new key is full of live
    entries, the one nearest to expiring is forgotten (``evictions`` counts them):
    the limiter becomes more lenient toward that key, never stricter toward another.

    Not thread-safe without the GIL (the methods below hold it).

    Raises ``ValueError`` for a NaN rate, ``burst < 1`` or infinite, ``capacity < 1``
    or above 2**40, or a rate so low that a burst spans more than 2**61 ns.
    """

    rate: Final[float]
    """Requests per second, as given."""
    burst: Final[float]
    """Requests that may arrive at once, as given."""
    capacity: Final[int]
    """Slots in the table (a power of two >= 8; 0 when disabled)."""
    memory_bytes: Final[int]
    """Bytes held by the table: 16 * capacity + 64 (alignment); 0 when disabled."""
    evictions: Final[int]
    """Live entries forgotten because their bucket was full (table pressure)."""

    def __init__(self, rate: float, burst: float, capacity: int = 65536) -> None: ...
    def hit(self, key: Hashable, now_us: int) -> int:
        """Count one request of ``key`` at ``now_us`` (monotonic, integer microseconds).

        Returns 0 if allowed (and counted), else the microseconds until a request of
        this key would be allowed (> 0, not counted). ``key`` is a str in practice;
        any hashable works (``TypeError`` if unhashable). ``ValueError`` if ``now_us``
        is outside ``[0, MAX_NOW_US]``. Allocates nothing when allowed.
        """
    def hit_global(self, now_us: int) -> int:
        """Like ``hit`` on a single key-less bucket (for the global admission rate)."""
    def __len__(self) -> int:
        """Live entries: TAT after the latest ``now_us`` seen. O(capacity)."""

@final
class Limiter:
    """Bundles the three limits the gateway applies: per IP, per user, global.

    Each ``*_rate <= 0`` (the default) disables that limit. ``capacity`` sizes the
    per-IP and the per-user tables; ``glob`` only uses its key-less bucket and gets
    the smallest table (8 slots).
    """

    ip: Final[Gcra]
    user: Final[Gcra]
    glob: Final[Gcra]

    def __init__(
        self,
        ip_rate: float = 0.0,
        ip_burst: float = 1.0,
        user_rate: float = 0.0,
        user_burst: float = 1.0,
        global_rate: float = 0.0,
        global_burst: float = 1.0,
        capacity: int = 65536,
    ) -> None: ...
    def check_ip(self, ip: Hashable, now_us: int) -> int:
        """0, or microseconds until this IP may send again (``self.ip.hit``)."""
    def check_user(self, user: Hashable, now_us: int) -> int:
        """0, or microseconds until this user may send again (``self.user.hit``)."""
    def check_global(self, now_us: int) -> int:
        """0, or microseconds until the global rate admits a request (``self.glob.hit_global``)."""
