"""Which address the rate limits see, behind trusted and untrusted proxies.

The C classes of flashgate.gateway._net, case by case, then against the pure-Python
implementation they replaced (tests/reference/clientip.py) on random peers, networks
and X-Forwarded-For values.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashgate.gateway import _net
from flashgate.gateway._net import ClientIP, NetSet
from tests.reference import clientip as reference

LB = "10.1.0.5"


# --------------------------------------------------------------------------- cases


@pytest.mark.parametrize("peer,xff,want", [
    ("203.0.113.9", b"198.51.100.1", "203.0.113.9"),      # not a trusted proxy: ignored
    (LB, None, LB),                                      # trusted, no header
    (LB, b"198.51.100.1", "198.51.100.1"),               # one hop
    (LB, b"6.6.6.6, 198.51.100.1", "198.51.100.1"),      # spoofed left part ignored
    (LB, b"198.51.100.1, 10.1.0.7", "198.51.100.1"),     # our second proxy skipped
    (LB, b"10.1.0.8,10.1.0.7", LB),                      # only our own hops
    (LB, b"not-an-ip", LB),                              # malformed: the peer
    (LB, b"198.51.100.1, , 10.1.0.7", LB),               # empty hop: the peer
    (LB, b"", LB),                                       # empty header: the peer
    (LB, b"2001:db8::1", "2001:db8::1"),                 # IPv6
    (LB, b"2001:DB8:0:0::01", "2001:db8::1"),            # ... as canonical text
    (LB, b"::ffff:198.51.100.1", "198.51.100.1"),        # IPv4-mapped: the IPv4 client
    (LB, b"::ffff:10.1.0.7, 198.51.100.1", "198.51.100.1"),
    (LB, b"198.51.100.1,::ffff:10.1.0.7", "198.51.100.1"),  # a mapped proxy is a proxy
    (LB, b"\t198.51.100.1 \t", "198.51.100.1"),          # spaces and tabs around a hop
    (LB, b"198.51.100.1\xa0", LB),                       # other blanks are not trimmed
    (LB, b"\x0b198.51.100.1", LB),
    (LB, b"fe80::1%eth0", LB),                           # a scope id is no client
    (LB, b"198.51.100.01", LB),                          # leading zero
    (LB, b"198.51.100.1:443", LB),                       # a port
    (LB, b"[2001:db8::1]", LB),                          # brackets
    (LB, b"unknown", LB),                                # RFC 7239's obfuscation
    ("::ffff:10.1.0.5", b"198.51.100.1", "198.51.100.1"),  # a mapped peer is trusted
    ("::ffff:203.0.113.9", None, "203.0.113.9"),         # ... and answered as IPv4
])
def test_right_most_untrusted_hop(peer, xff, want):
    assert ClientIP("10.1.0.0/16").of(peer, xff) == want
    assert _net.ClientIP("10.1.0.0/16").of(peer, xff) == want


def test_no_trusted_proxies_means_the_peer():
    assert ClientIP("").of(LB, b"198.51.100.1") == LB
    assert not ClientIP("").trusted


def test_a_peer_that_is_not_an_address_is_returned_as_given():
    ip = ClientIP("0.0.0.0/0")
    assert ip.of("", b"198.51.100.1") == ""  # a unix socket
    assert ip.of("fe80::1%eth0", b"198.51.100.1") == "fe80::1%eth0"


def test_the_header_must_be_bytes():
    with pytest.raises(TypeError):
        ClientIP("10.1.0.0/16").of(LB, "198.51.100.1")


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="^trusted proxies: "):
        ClientIP("10.0.0.0/33")
    with pytest.raises(ValueError):
        ClientIP("", "10.0.0.0/8,nope")
    with pytest.raises(ValueError):
        NetSet("10.0.0.1/24/1")
    with pytest.raises(ValueError):
        _net.ClientIP("::/129")


def test_a_proxy_protocol_balancer_never_vouches_for_x_forwarded_for():
    # its connections keep its address only when the PROXY header named no client
    ip = ClientIP("10.1.0.0/16", "10.1.0.5/32")
    assert ip.of(LB, b"198.51.100.1") == LB
    assert ip.of("10.1.0.6", b"198.51.100.1") == "198.51.100.1"  # another, plain proxy
    assert not ip.trusts(LB) and ip.trusts("10.1.0.6") and not ip.trusts("10.2.0.1")
    # nor is it skipped as one of our hops
    assert ip.of("10.1.0.6", b"198.51.100.1, 10.1.0.5") == "10.1.0.5"


def test_only_the_last_32_hops_are_looked_at():
    assert _net.MAX_HOPS == 32
    ours = [b"10.1.0.%d" % (i % 250) for i in range(40)]
    ip = ClientIP("10.1.0.0/16")
    for k in (1, 31, 32):  # the client k hops from the right
        hops = ours[: 40 - k] + [b"198.51.100.1"] + ours[40 - k + 1:]
        assert ip.of(LB, b",".join(hops)) == "198.51.100.1"
    hops = ours[:7] + [b"198.51.100.1"] + ours[8:]  # 33rd from the right: not looked at
    assert ip.of(LB, b",".join(hops)) == LB


def test_ipv4_mapped_peers_are_their_ipv4_address_for_membership():
    nets = NetSet("10.0.0.0/8")
    assert "::ffff:10.1.2.3" in nets and "10.1.2.3" in nets
    assert "::ffff:11.1.2.3" not in nets
    assert b"10.1.2.3" in nets


def test_networks_keep_their_family():
    # as ipaddress: an IPv6 network never holds an IPv4 address, even ::/0
    everything6 = NetSet("::/0")
    assert "2001:db8::1" in everything6 and "::" in everything6
    assert "10.1.2.3" not in everything6 and "::ffff:10.1.2.3" not in everything6
    assert "10.1.2.3" not in NetSet("::ffff:0:0/96")
    assert "::a01:203" not in NetSet("10.0.0.0/8")  # ::10.1.2.3 (IPv4-compatible) is IPv6
    assert "0.0.0.0" in NetSet("0.0.0.0/0") and "::1" not in NetSet("0.0.0.0/0")


def test_a_network_set():
    nets = NetSet(" 10.0.0.0/8 , ,192.168.1.7/24,2001:db8::/32,")
    assert bool(nets) and not NetSet("") and not NetSet([])
    assert [str(n) for n in nets.nets] == ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]
    assert repr(nets) == "NetSet('10.0.0.0/8,192.168.1.0/24,2001:db8::/32')"
    assert "192.168.1.255" in nets and "192.168.2.0" not in nets
    assert "2001:db8:ffff::1" in nets and "2001:db9::" not in nets
    assert "192.168.1.1" in NetSet("192.168.1.1")  # a bare address is a /32
    assert "192.168.1.2" not in NetSet(["192.168.1.1"])
    for junk in ("", "10.1.2", None, 167837953, "10.1.2.3 ", "10.1.2.3%x", "10.1.2.3/32"):
        assert junk not in nets


def test_a_connection_s_peer_and_the_limiter_key_of_its_requests():
    """``ClientIP.peer`` resolves a connection's client once; the purchase path's key of a
    request (``client_hash``) is the hash of the client ``of`` names."""
    ip = _net.ClientIP("10.1.0.0/16", "10.1.0.5")
    proxy, balancer, direct, unix = (ip.peer("10.1.0.6"), ip.peer("10.1.0.5"),
                                     ip.peer("198.51.100.7"), ip.peer(""))
    assert proxy.trusted and not balancer.trusted and not direct.trusted and not unix.trusted
    assert unix.address == bytes(16) and proxy.text == "10.1.0.6"
    for peer in (proxy, balancer, direct):
        for xff in (None, b"198.51.100.1", b"203.0.113.9, 10.1.0.7", b"junk", b"10.1.0.8",
                    b"2001:db8::1", b""):
            want = _net.hash_of(_net.parse(ip.of(peer.text, xff)))
            assert ip.hash_of_client(peer, xff) == want, (peer, xff)
    assert ip.hash_of_client(unix, b"198.51.100.1") == _net.hash_of(bytes(16))


# --------------------------------------------------------------------------- differential

# A small world of addresses, so that hops and peers often fall in the networks.
V4 = [f"10.{a}.{b}.{c}" for a in (0, 1) for b in (0, 7) for c in (0, 5, 255)] + [
    "192.0.2.1", "198.51.100.1", "203.0.113.9", "0.0.0.0", "255.255.255.255", "127.0.0.1",
]
V6 = ["2001:db8::1", "2001:db8::5", "2001:db8:0:1::5", "::1", "::", "fe80::1",
      "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "::a01:5", "64:ff9b::a01:5"]


def _forms(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Texts ipaddress accepts for ``ip``."""
    if ip.version == 4:
        return [str(ip), f"::ffff:{ip}", f"::FFFF:{ip}", f"0:0:0:0:0:ffff:{ip}",
                f"::ffff:{int(ip) >> 16:x}:{int(ip) & 0xFFFF:x}"]
    return [str(ip), ip.exploded, ip.exploded.upper(), str(ip).upper(),
            ":".join(h.lstrip("0") or "0" for h in ip.exploded.split(":"))]


@st.composite
def addresses(draw) -> str:
    text = draw(st.sampled_from(V4 + V6))
    if draw(st.booleans()):
        text = draw(st.sampled_from(_forms(ipaddress.ip_address(text))))
    return text


@st.composite
def networks(draw) -> str:
    ip = ipaddress.ip_address(draw(st.sampled_from(V4 + V6)))
    prefix = draw(st.integers(0, ip.max_prefixlen))
    return f"{ip}/{prefix}"


def _inside(nets: list[str]) -> list[str]:
    """Addresses in those networks: their first, second and last address."""
    out = []
    for net in (ipaddress.ip_network(n, strict=False) for n in nets):
        out += [str(net.network_address), str(net.broadcast_address)]
        if net.num_addresses > 2:
            out.append(str(net.network_address + 1))
    return out


JUNK_ALPHABET = "0123456789abcdefABCDEF:.%/[] \t\x0bxz-\xa0\x85"

malformed = st.one_of(
    st.just(""),
    st.sampled_from(["unknown", "_hidden", "1.2.3", "010.0.0.1", "1::2::3", ":::", "fe80::1%1",
                     "10.0.0.1:80", "[::1]", "::ffff:1.2.3.04", "1.2.3.4.5", "12345::"]),
    st.text(JUNK_ALPHABET, max_size=48),
    st.binary(max_size=16).map(lambda b: b.decode("latin-1")),
)

ows = st.text(" \t", max_size=2)  # HTTP's optional whitespace
odd_blank = st.sampled_from("\x0b\x0c\r\n\x1c\x1f\x85\xa0")  # trimmed by str.strip() only


def pick(draw, *weighted):
    """One of the strategies, by weight: ``pick(draw, (3, a), (1, b))``."""
    roll = draw(st.integers(0, sum(w for w, _ in weighted) - 1))
    for w, strategy in weighted:
        if roll < w:
            return draw(strategy)
        roll -= w
    raise AssertionError


def _any_form(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from(_forms(ipaddress.ip_address(text)))


@st.composite
def hops(draw, ours: list[str], outside: list[str]) -> str:
    """One hop: one of ``ours`` or an address ``outside`` them (in some form), another
    address, junk or nothing, with blanks around."""
    body = pick(draw, (3, st.sampled_from(ours or V4).flatmap(_any_form)),
                (2, st.sampled_from(outside or V6).flatmap(_any_form)),
                (1, addresses()), (1, st.just("")), (1, malformed))
    return pick(draw, (9, ows), (1, odd_blank)) + body + pick(draw, (9, ows), (1, odd_blank))


@st.composite
def headers(draw, ours: list[str], outside: list[str]) -> bytes | None:
    """None, or 1-64 hops whose right-most part is often a run of ``ours``."""
    if draw(st.integers(0, 9)) == 0:
        return None
    # the run of our own hops on the right: any length, often one short of MAX_HOPS or
    # all of them; then the rest, up to 64 hops in all
    tail = pick(draw, (2, st.integers(0, 40)), (1, st.sampled_from([31, 32]))) if ours else 0
    n = tail + pick(draw, (3, st.integers(1, 64 - tail)), (1, st.integers(1, 3)),
                    (1, st.just(0) if tail else st.just(1)))
    left = draw(st.lists(hops(ours, outside), min_size=n - tail, max_size=n - tail))
    right = draw(st.lists(st.sampled_from(ours), min_size=tail, max_size=tail)) if tail else []
    return ",".join(left + right).encode("latin-1")


def _canonical(text):
    """The reference's answer as the C module words it."""
    try:
        ip = reference.ip_address(text)
    except ValueError:
        return text
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


@st.composite
def cases(draw) -> tuple[list[str], list[str], object, bytes | None]:
    """Trusted networks, balancers, a peer (often a trusted proxy), a header."""
    trusted = pick(draw, (4, st.lists(networks(), min_size=1, max_size=4)), (1, st.just([])))
    ours = _inside(trusted)
    hosts = st.sampled_from(ours or ["192.0.2.1"]).map(lambda t: str(ipaddress.ip_network(t)))
    balancers = pick(draw, (3, st.just([])), (2, st.lists(hosts, min_size=1, max_size=2)),
                     (1, st.lists(networks(), min_size=1, max_size=2)))
    peer = pick(draw, (4, st.sampled_from(ours or ["192.0.2.1"])),
                (2, st.sampled_from(ours or ["192.0.2.1"]).flatmap(_any_form)),
                (2, addresses()), (1, malformed))
    mine = reference.Networks(trusted)
    outside = [a for a in V4 + V6 if a not in mine]
    return trusted, balancers, peer, draw(headers(ours, outside))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_of_matches_the_reference(case):
    # The cases are weighted so that about half of the peers are trusted proxies and
    # their walks end every way: at a client right away, further left, at the 32nd hop,
    # beyond it, on a malformed or empty hop, with every hop ours.
    trusted, balancers, peer, xff = case
    got = ClientIP(trusted, balancers).of(peer, xff)
    last32 = None if xff is None else b",".join(xff.split(b",")[-_net.MAX_HOPS:])
    want = reference.ClientIP(trusted, balancers).of(peer, last32)
    assert got == _canonical(want)


@settings(max_examples=1500, deadline=None)
@given(spec=st.lists(networks(), max_size=5), address=st.one_of(addresses(), malformed))
def test_membership_matches_the_reference(spec, address):
    assert (address in NetSet(spec)) == (address in reference.Networks(spec))
    assert (address in NetSet(",".join(spec))) == (address in reference.Networks(spec))


@settings(max_examples=1000, deadline=None)
@given(spec=st.text("0123456789abcdef:./, x%", max_size=30))
def test_a_spec_is_refused_exactly_when_the_reference_refuses_it(spec):
    try:
        want = reference.Networks(spec).nets
    except ValueError:
        with pytest.raises(ValueError):
            NetSet(spec)
    else:
        assert list(NetSet(spec).nets) == want
