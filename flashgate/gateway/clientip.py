"""The client IP that rate limits apply to, behind load balancers.

The work is done in C by ``flashgate.gateway._net`` (its theory of operation says who
the client is); this module keeps the names the rest of the application imports:
``Networks`` (a ``NetSet``) and ``ClientIP`` with ``of``, ``proxies``, ``balancers``,
``nets`` and ``trusted(address)``.
"""

from __future__ import annotations

from flashgate.gateway import _net
from flashgate.gateway._net import NetSet

__all__ = ["ClientIP", "Networks", "NetSet"]

Networks = NetSet


class ClientIP:
    """``of(peer, x_forwarded_for)``: the client IP, as canonical text. ``native`` is
    the ``_net.ClientIP`` doing the work (for C callers)."""

    __slots__ = ("native", "proxies", "balancers", "nets", "of")

    def __init__(self, trusted: str | list[str] = "", balancers: str | list[str] = ""):
        self.native = _net.ClientIP(trusted, balancers)  # ValueError: "trusted proxies: ..."
        self.proxies: NetSet = self.native.trusted
        self.balancers: NetSet = self.native.balancers
        self.nets = self.proxies.nets
        self.of = self.native.of  # the C method itself: no Python frame per request

    def trusted(self, address: str) -> bool:
        """Whether ``address`` may vouch for X-Forwarded-For (trusted, not a balancer)."""
        return self.native.trusts(address)

    def __repr__(self) -> str:
        return repr(self.native)
