"""The PROXY protocol (versions 1 and 2): the client address a layer-4 load balancer
puts in front of the byte stream it forwards.

A listener configured with ``--proxy-protocol-from`` expects, on every connection
whose socket peer is in those networks, one PROXY header before the first HTTP
byte; such a connection without a valid header is refused (400 and close). The
header's source address becomes the connection's client address, which the rate
limits and ``X-Forwarded-For`` trust then apply to. Peers outside those networks
never get a header parsed: from them ``PROXY ...`` is just a malformed HTTP request,
so nobody can claim another address by sending one.

``parse(buf, limit)`` is sans-IO and is called with everything received so far:

* ``None``: the header is not complete yet (call again with more bytes);
* ``(n, address)``: the header is the first ``n`` bytes; ``address`` is the
  client's IP as text, or ``None`` when the header names no client (a v2 ``LOCAL``
  command - a load balancer's own health check - or v1 ``UNKNOWN``, or a v2
  address family other than IPv4/IPv6): the socket peer stands;
* ``ProxyHeaderError``: not a valid header; the connection must be refused.

Version 1 is the text line ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n`` of at
most 107 bytes. Version 2 is binary: a 12-byte signature, version/command,
family/transport, a 16-bit length and that many bytes of addresses and TLVs (TLVs
are skipped). Both are read strictly: one space between fields, canonical
addresses of the announced family, decimal ports without leading zeros, v2 version
2 with command LOCAL or PROXY over a stream transport.
"""

from __future__ import annotations

import ipaddress

__all__ = ["V1_MAX", "V2_MAX", "V2_SIGNATURE", "ProxyHeaderError", "parse"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's figure)
V2_MAX = 4096  # a v2 header with its TLVs (balancers send tens of bytes of TLVs)

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM = 1
_ADDRESS_SIZES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


def parse(buf: bytes, limit: int = V2_MAX) -> tuple[int, str | None] | None:
    """The header at the start of ``buf``: ``None`` (incomplete), or ``(size, address)``.

    ``limit`` bounds a v2 header's total size (the address block and TLVs).
    """
    n = len(buf)
    if buf[:12] == V2_SIGNATURE[:n]:  # the signature, or as much of it as has come
        return None if n < 16 else _parse_v2(buf, limit)
    if buf[:6] == V1_PREFIX[:n]:
        return _parse_v1(buf)
    raise ProxyHeaderError("PROXY protocol header required")


def _parse_v1(buf: bytes) -> tuple[int, str | None] | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX or b"\n" in buf:
            raise ProxyHeaderError("PROXY v1 line too long or not ended by CRLF")
        return None
    line = buf[:end]
    if b"\r" in line or b"\n" in line:
        raise ProxyHeaderError("PROXY v1 line contains a bare CR or LF")
    fields = line.split(b" ")
    family = fields[1] if len(fields) > 1 else b""
    if family == b"UNKNOWN":
        return end + 2, None  # the rest of the line is to be ignored
    if len(fields) != 6:
        raise ProxyHeaderError("PROXY v1 line needs: PROXY TCP4|TCP6 src dst sport dport")
    _, _, src, dst, sport, dport = fields
    if family == b"TCP4":
        kind = ipaddress.IPv4Address
    elif family == b"TCP6":
        kind = ipaddress.IPv6Address
    else:
        raise ProxyHeaderError("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN")
    address = _address(kind, src)
    _address(kind, dst)
    _port(sport)
    _port(dport)
    return end + 2, address


def _address(kind, raw: bytes) -> str:
    try:
        ip = kind(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        ip = None
    if ip is None or getattr(ip, "scope_id", None):  # (a zone is no client address)
        raise ProxyHeaderError(f"PROXY v1 address is not {kind.__name__[:4]}: {raw[:45]!r}")
    return _text(ip)


def _text(ip) -> str:
    # An IPv4 client seen through a dual-stack balancer is that IPv4 client (one
    # rate-limit key, whichever way it came in).
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _port(raw: bytes) -> None:
    if not (raw.isdigit() and raw.isascii() and len(raw) <= 5 and (raw == b"0" or raw[:1] != b"0")
            and int(raw) <= 65535):
        raise ProxyHeaderError(f"PROXY v1 port is not 0..65535: {raw[:8]!r}")


def _parse_v2(buf: bytes, limit: int) -> tuple[int, str | None] | None:
    command = buf[12]
    family, transport = buf[13] >> 4, buf[13] & 0x0F
    size = 16 + int.from_bytes(buf[14:16], "big")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError("PROXY v2 version must be 2 and command LOCAL or PROXY")
    if size > limit:
        raise ProxyHeaderError("PROXY v2 header too large")
    if command == _V2_LOCAL:  # the balancer's own connection: the socket peer stands,
        return None if len(buf) < size else (size, None)  # whatever the family says
    if family > _AF_UNIX or transport > 2:
        raise ProxyHeaderError("PROXY v2 address family or transport unknown")
    if len(buf) < size:
        return None
    need = _ADDRESS_SIZES.get(family, 0)
    if size - 16 < need:
        raise ProxyHeaderError("PROXY v2 address block shorter than its family needs")
    if family == _AF_UNSPEC or family == _AF_UNIX:
        return size, None  # no IP client address to take
    if transport != _STREAM:
        raise ProxyHeaderError("PROXY v2 over HTTP must carry a stream (TCP) connection")
    if family == _AF_INET:
        return size, str(ipaddress.IPv4Address(buf[16:20]))
    return size, _text(ipaddress.IPv6Address(buf[16:32]))
