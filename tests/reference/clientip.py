"""The client IP that rate limits apply to, behind load balancers: the pure-Python
implementation that ``flashgate.gateway._net`` replaced, kept as the slow oracle of
the differential tests (tests/unit/test_clientip.py).

The socket peer, unless that peer is a configured trusted proxy: then the
right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy (hops to its
right were added by our own proxies; anything to its left the client could have
written). A header from anyone else is ignored, so it cannot be spoofed, and a
malformed hop falls back to the peer, so random strings cannot mint new limiter keys.

Where the C module deliberately differs, this module was changed to follow it (each
place is marked "C:"):

* an IPv6 scope id ("fe80::1%eth0") is not an address (ipaddress accepts it);
* only spaces and tabs around a hop are trimmed (HTTP's optional whitespace; str.strip()
  also trimmed VT, FF, CR, LF, 0x1c-0x1f, NEL and NBSP).

What the tests compare allows for the rest: the C module answers with canonical text
(an IPv4-mapped address as its IPv4 form, also for the peer) and looks at no more than
the last 32 hops.
"""

from __future__ import annotations

import ipaddress


def ip_address(text):
    """ipaddress.ip_address, refusing scope ids (C: a scoped address names an interface
    of this host, not a client)."""
    if isinstance(text, str) and "%" in text:
        raise ValueError(f"{text!r}: scope ids are not accepted")
    return ipaddress.ip_address(text)


class Networks:
    """A set of IP networks given as comma-separated CIDRs; ``address in networks``.

    Membership answers are cached per address text (bounded), since the same few
    load balancer addresses ask again and again.
    """

    def __init__(self, spec: str | list[str] = ""):
        if isinstance(spec, str):
            spec = [t for t in (p.strip() for p in spec.split(",")) if t]
        self.nets = [ipaddress.ip_network(t, strict=False) for t in spec]  # ValueError
        self._known: dict[str, bool] = {}  # address -> member, bounded

    def __bool__(self) -> bool:
        return bool(self.nets)

    def __contains__(self, address: str) -> bool:
        hit = self._known.get(address)
        if hit is None:
            try:
                ip = ip_address(address)
            except ValueError:
                return False
            if ip.version == 6 and ip.ipv4_mapped:  # an IPv4 peer on a dual-stack socket
                ip = ip.ipv4_mapped
            hit = any(ip in net for net in self.nets)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[address] = hit
        return hit

    def __repr__(self) -> str:
        return f"Networks({','.join(map(str, self.nets))!r})"


class ClientIP:
    """``of(peer, x_forwarded_for)``: the client IP. ``balancers`` (the PROXY protocol
    sources) are never trusted with X-Forwarded-For: a connection from one still has
    the balancer as its peer only when its PROXY header named no client (LOCAL,
    UNKNOWN, a non-IP family), and then nobody vouches for the header."""

    def __init__(self, trusted: str | list[str] = "", balancers: str | list[str] = ""):
        try:
            self.proxies = Networks(trusted)
        except ValueError as e:
            raise ValueError(f"trusted proxies: {e}") from None
        self.balancers = Networks(balancers)
        self.nets = self.proxies.nets

    def trusted(self, address: str) -> bool:
        return address in self.proxies and address not in self.balancers

    def of(self, peer: str, forwarded_for: bytes | None) -> str:
        """The client IP of a request from ``peer`` carrying that X-Forwarded-For."""
        if not self.nets or forwarded_for is None or not self.trusted(peer):
            return peer
        hops = forwarded_for.decode("latin-1").split(",")
        for hop in reversed(hops):
            hop = hop.strip(" \t")  # C: HTTP's optional whitespace only
            try:
                ip = str(ip_address(hop))
            except ValueError:
                return peer  # malformed: no trustworthy client address
            if not self.trusted(ip):
                return ip
        return peer  # every hop is one of ours
