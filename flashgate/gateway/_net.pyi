"""The client IP that rate limits apply to, behind load balancers (type stub of the
Cython module).

See the theory of operation at the top of ``_net.pyx``. C callers cimport
``ip_addr``, ``parse_ip``, ``format_ip``, ``ip_hash`` and the two classes from
``_net.pxd``; what follows is the Python side (tests, configuration, the rest of the
application).
"""

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network
from typing import Final, final

MAX_HOPS: Final[int]
"""X-Forwarded-For hops looked at, from the right (32)."""

def parse(text: str | bytes) -> bytes | None:
    """The 16 bytes of an IP address in text form, or None if ``text`` is not one.

    Accepts exactly what ``ipaddress.ip_address(str)`` accepts, except IPv6 scope ids
    (``"fe80::1%eth0"``), which are refused. An IPv4 address is returned in its
    IPv4-mapped form (``::ffff:a.b.c.d``), so ``"1.2.3.4"`` and ``"::ffff:1.2.3.4"``
    give the same bytes. Anything but str and bytes is not an address (None).
    """

def text_of(addr16: bytes) -> str:
    """The canonical text of 16 address bytes: ``str(ipaddress.ip_address(...))``, an
    IPv4-mapped address in its IPv4 form. ``ValueError`` unless 16 bytes."""

def hash_of(addr16: bytes) -> int:
    """The C ``ip_hash`` of 16 address bytes: the interpreter's keyed hash of them
    (changes with the process's hash secret), never 0 or -1."""

@final
class NetSet:
    """A set of IP networks; ``address in netset``.

    ``spec``: comma-separated CIDRs (blanks around each and empty items ignored) or
    a list of them, parsed by ``ipaddress.ip_network(item, strict=False)``: host bits
    are dropped, a bare address is a /32 or /128. ``ValueError`` on a bad item.
    Held as a C array of (network, mask) pairs built once; IPv4 and IPv6 networks
    keep their family, as in ``ipaddress``: an IPv6 network (even ``::/0``) never
    holds an IPv4 address or its IPv4-mapped form.
    """

    nets: Final[tuple[IPv4Network | IPv6Network, ...]]
    """The networks as parsed, in the order given."""

    def __init__(self, spec: str | Iterable[str] = "") -> None: ...
    def __contains__(self, address: object) -> bool:
        """Whether the address (str or bytes, in text form) lies in one of the networks.
        An IPv4-mapped IPv6 address counts as its IPv4 address. Not an address: False."""
    def __bool__(self) -> bool:
        """Whether any network was given."""

@final
class Peer:
    """A connection's client, resolved once when the connection opens (``ClientIP.peer``):
    its address, whether it may vouch for X-Forwarded-For, its limiter key."""

    text: str
    @property
    def trusted(self) -> bool: ...
    @property
    def address(self) -> bytes:
        """The 16 bytes of its address (all zero for a peer that is not one)."""

class ClientIP:
    """The client IP of a request: the peer, unless the peer is a trusted proxy that is
    not a PROXY protocol balancer; then the right-most X-Forwarded-For hop that is not a
    trusted proxy. A malformed hop, or only trusted hops among the last ``MAX_HOPS``,
    means the peer.

    ``trusted`` (``--trusted-proxies``) and ``balancers`` (``--proxy-protocol-from``):
    NetSet specs, or NetSets. ``ValueError`` on a bad spec, prefixed with
    ``"trusted proxies: "`` for the first.
    """

    trusted: Final[NetSet]
    """The proxies whose X-Forwarded-For is believed."""
    balancers: Final[NetSet]
    """The PROXY protocol sources: never believed about X-Forwarded-For."""
    proxies: Final[NetSet]
    """Same as ``trusted``."""

    def __init__(
        self, trusted: str | Iterable[str] | NetSet = "", balancers: str | Iterable[str] | NetSet = ""
    ) -> None: ...
    def trusts(self, address: object) -> bool:
        """Whether ``address`` (text) may vouch for X-Forwarded-For: trusted, not a
        balancer. Not an address: False."""
    def peer(self, text: str) -> Peer:
        """The Peer of a connection from ``text`` (an address, or "" for a unix socket)."""
    def client_text(self, peer: Peer, xff: bytes | None) -> str:
        """The client's address as text (the peer's own text if it is not one)."""
    def hash_of_client(self, peer: Peer, xff: bytes | None) -> int:
        """The limiter key of a request from ``peer`` with that X-Forwarded-For (for
        tests: the hash of the address ``of`` names)."""
    def of(self, peer: str, forwarded_for: bytes | None) -> str:
        """The client IP of a request from ``peer`` carrying that X-Forwarded-For value
        (None when absent), as canonical text (an IPv4-mapped address as IPv4). A peer
        that is not an address (a unix socket's ``""``) is returned as given.
        ``TypeError`` if ``forwarded_for`` is neither bytes nor None."""
