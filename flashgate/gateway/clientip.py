"""The client IP that rate limits apply to, behind load balancers.

The socket peer, unless that peer is a configured trusted proxy: then the
right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy (hops to its
right were added by our own proxies; anything to its left the client could have
written). A header from anyone else is ignored, so it cannot be spoofed, and a
malformed hop falls back to the peer, so random strings cannot mint new limiter keys.
"""

from __future__ import annotations

import ipaddress


class ClientIP:
    def __init__(self, trusted: str | list[str] = ""):
        if isinstance(trusted, str):
            trusted = [t for t in (p.strip() for p in trusted.split(",")) if t]
        try:
            self.nets = [ipaddress.ip_network(t, strict=False) for t in trusted]
        except ValueError as e:
            raise ValueError(f"trusted proxies: {e}") from None
        self._known: dict[str, bool] = {}  # address -> trusted, bounded

    def trusted(self, address: str) -> bool:
        hit = self._known.get(address)
        if hit is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            hit = any(ip in net for net in self.nets)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[address] = hit
        return hit

    def of(self, peer: str, forwarded_for: bytes | None) -> str:
        """The client IP of a request from ``peer`` carrying that X-Forwarded-For."""
        if not self.nets or forwarded_for is None or not self.trusted(peer):
            return peer
        hops = forwarded_for.decode("latin-1").split(",")
        for hop in reversed(hops):
            hop = hop.strip()
            try:
                ip = str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # malformed: no trustworthy client address
            if not self.trusted(ip):
                return ip
        return peer  # every hop is one of ours
