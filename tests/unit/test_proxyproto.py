"""The PROXY protocol header parser (v1 text, v2 binary), without sockets."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashgate.gateway.proxyproto import V1_MAX, V2_SIGNATURE, ProxyHeaderError, parse

HTTP = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def v2(command=0x21, fam=0x11, src="198.51.100.7", dst="10.0.0.1", sport=51000, dport=80,
       tlvs=b"", length=None) -> bytes:
    if fam >> 4 == 1:
        block = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
                 + struct.pack("!HH", sport, dport))
    elif fam >> 4 == 2:
        block = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
                 + struct.pack("!HH", sport, dport))
    elif fam >> 4 == 3:
        block = b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")
    else:
        block = b""
    block += tlvs
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([command, fam]) + struct.pack("!H", size) + block


# --------------------------------------------------------------------------- v1


@pytest.mark.parametrize("line, want", [
    (b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80\r\n", "198.51.100.7"),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "0.0.0.0"),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n", "2001:db8::7"),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:7 ::1 1 2\r\n", "2001:db8::7"),  # normalised
    (b"PROXY TCP6 ::ffff:198.51.100.7 ::1 1 2\r\n", "198.51.100.7"),  # IPv4-mapped
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),  # rest ignored
])
def test_v1_valid(line, want):
    assert parse(line + HTTP) == (len(line), want)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 198.51.100.7 10.0.0.1 51000\r\n",  # a field missing
    b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80 extra\r\n",
    b"PROXY TCP4  198.51.100.7 10.0.0.1 51000 80\r\n",  # two spaces
    b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80 \r\n",  # trailing space
    b"PROXY TCP5 198.51.100.7 10.0.0.1 51000 80\r\n",
    b"PROXY tcp4 198.51.100.7 10.0.0.1 51000 80\r\n",
    b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 80\r\n",  # family mismatch
    b"PROXY TCP6 198.51.100.7 ::1 51000 80\r\n",
    b"PROXY TCP4 198.51.100.007 10.0.0.1 51000 80\r\n",  # leading zeros
    b"PROXY TCP4 198.51.100.256 10.0.0.1 51000 80\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 65536 80\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 051000 80\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 -1 80\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 +1 80\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 \xd9\xa1 80\r\n",  # non-ASCII digit
    b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80\n",  # bare LF
    b"PROXY TCP4 198.51.100.7\r10.0.0.1 51000 80\r\n",  # bare CR
    b"PROXY TCP4 \xc3\xa9.1.1.1 10.0.0.1 51000 80\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 51000 80\r\n",  # a zone is no client address
    b"PROXY\r\n",
    b"PROXY \r\n",
    b"PROXY TCP6 " + b"1" * 100 + b"\r\n",  # longer than 107 bytes
    b"proxy TCP4 198.51.100.7 10.0.0.1 51000 80\r\n",
    HTTP,  # no header at all
    b"\r\n\r\n",
    b"\x00",
])
def test_v1_invalid(line):
    with pytest.raises(ProxyHeaderError):
        parse(line + HTTP)


def test_v1_incomplete_until_crlf_then_longest_lines_accepted():
    six = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    line = b"PROXY TCP6 " + six + b" " + six + b" 65535 65535\r\n"
    for i in range(len(line)):
        assert parse(line[:i]) is None, i
    assert parse(line + HTTP) == (len(line), six.decode())
    worst = b"PROXY UNKNOWN " + six + b" " + six + b" 65535 65535\r\n"
    assert len(worst) == V1_MAX  # the specification's worst case
    assert parse(worst + HTTP) == (V1_MAX, None)


def test_v1_line_without_end_is_refused_at_the_maximum_length():
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 14))


# --------------------------------------------------------------------------- v2


@pytest.mark.parametrize("header, want", [
    (v2(), "198.51.100.7"),
    (v2(fam=0x21, src="2001:db8::7", dst="2001:db8::1"), "2001:db8::7"),
    (v2(tlvs=b"\x04\x00\x03abc" + b"\x05" * 200), "198.51.100.7"),  # TLVs skipped
    (v2(command=0x20), None),  # LOCAL: the balancer's health check
    (v2(command=0x20, fam=0x00), None),
    (v2(fam=0x00), None),  # PROXY with UNSPEC: the socket's addresses stand
    (v2(fam=0x31), None),  # AF_UNIX: no IP to take
    (v2(command=0x20, fam=0x55), None),  # LOCAL: family and transport are ignored
])
def test_v2_valid(header, want):
    assert parse(header + HTTP) == (len(header), want)


@pytest.mark.parametrize("header", [
    v2(command=0x22),  # unknown command
    v2(command=0x11),  # version 1 in binary
    v2(command=0x31),
    v2(fam=0x41),  # unknown family
    v2(fam=0x13),  # unknown transport
    v2(fam=0x12),  # DGRAM
    v2(fam=0x10),  # INET over UNSPEC transport
    v2(length=11),  # block shorter than an IPv4 pair
    v2(fam=0x21, src="::1", dst="::1", length=35),
    v2(fam=0x31, length=200),
    v2(length=0xFFFF),  # over the size limit
])
def test_v2_invalid(header):
    with pytest.raises(ProxyHeaderError):
        parse(header + b"\0" * 300, limit=16 * 1024)


def test_v2_local_ignores_its_address_block():
    assert parse(v2(command=0x20, fam=0x11)[:16].replace(b"\x00\x0c", b"\x00\x00") + HTTP) == (
        16, None)


def test_v2_ipv4_mapped_source_is_the_ipv4_client():
    assert parse(v2(fam=0x21, src="::ffff:198.51.100.7", dst="::1"))[1] == "198.51.100.7"


def test_v2_incomplete_at_every_cut():
    header = v2(tlvs=b"\x01\x00\x02h2")
    for i in range(len(header)):
        assert parse(header[:i]) is None, i
    assert parse(header) == (len(header), "198.51.100.7")


def test_v2_size_limit_is_checked_before_the_body_arrives():
    with pytest.raises(ProxyHeaderError, match="too large"):
        parse(v2(length=5000)[:16], limit=4096)
    assert parse(v2(length=4000)[:16], limit=4096) is None


def test_a_broken_signature_is_refused_as_soon_as_it_differs():
    with pytest.raises(ProxyHeaderError):
        parse(V2_SIGNATURE[:5] + b"X")
    with pytest.raises(ProxyHeaderError):
        parse(b"PROX\r")


# --------------------------------------------------------------------------- properties


def _outcome(data: bytes):
    try:
        return parse(data, limit=1024)
    except ProxyHeaderError:
        return "error"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=120).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=120).map(lambda b: V2_SIGNATURE + b)))
def test_any_bytes_decide_once_and_for_good_as_they_arrive(data):
    """On the prefixes of any input, shortest first: None until the answer is
    decided (an error, or a header ending exactly there), then that answer."""
    decided = None
    for cut in range(len(data) + 1):
        got = _outcome(data[:cut])
        if decided is None:
            decided = got
            if got not in (None, "error"):
                size, address = got
                assert size == cut
                assert address is None or str(ipaddress.ip_address(address)) == address
        else:
            assert got == decided, (cut, got, decided)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["v1", "v2"]), st.ip_addresses(), st.integers(0, 65535),
       st.binary(max_size=40), st.data())
def test_generated_headers_round_trip_in_any_fragments(version, ip, port, after, data):
    dst = "10.0.0.1" if ip.version == 4 else "::1"
    if version == "v1":
        header = f"PROXY TCP{ip.version} {ip} {dst} {port} 80\r\n".encode()
    else:
        header = v2(fam=0x11 if ip.version == 4 else 0x21, src=str(ip), dst=dst, sport=port)
    stream = header + after
    cut = data.draw(st.integers(0, len(header)))
    assert cut == len(header) or parse(stream[:cut]) is None
    client = getattr(ip, "ipv4_mapped", None) or ip
    assert parse(stream) == (len(header), str(client))
