"""Which address the rate limits see, behind trusted and untrusted proxies."""

import pytest

from flashgate.gateway.clientip import ClientIP

LB = "10.1.0.5"


@pytest.mark.parametrize("peer,xff,want", [
    ("203.0.113.9", b"198.51.100.1", "203.0.113.9"),      # not a trusted proxy: ignored
    (LB, None, LB),                                      # trusted, no header
    (LB, b"198.51.100.1", "198.51.100.1"),               # one hop
    (LB, b"6.6.6.6, 198.51.100.1", "198.51.100.1"),      # spoofed left part ignored
    (LB, b"198.51.100.1, 10.1.0.7", "198.51.100.1"),     # our second proxy skipped
    (LB, b"10.1.0.8,10.1.0.7", LB),                      # only our own hops
    (LB, b"not-an-ip", LB),                              # malformed: the peer
    (LB, b"198.51.100.1, , 10.1.0.7", LB),               # empty hop: the peer
    (LB, b"2001:db8::1", "2001:db8::1"),                 # IPv6
])
def test_right_most_untrusted_hop(peer, xff, want):
    assert ClientIP("10.1.0.0/16").of(peer, xff) == want


def test_no_trusted_proxies_means_the_peer():
    assert ClientIP("").of(LB, b"198.51.100.1") == LB


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError):
        ClientIP("10.0.0.0/33")


def test_a_proxy_protocol_balancer_never_vouches_for_x_forwarded_for():
    # its connections keep its address only when the PROXY header named no client
    ip = ClientIP("10.1.0.0/16", "10.1.0.5/32")
    assert ip.of(LB, b"198.51.100.1") == LB
    assert ip.of("10.1.0.6", b"198.51.100.1") == "198.51.100.1"  # another, plain proxy


def test_ipv4_mapped_peers_are_their_ipv4_address_for_membership():
    from flashgate.gateway.clientip import Networks

    nets = Networks("10.0.0.0/8")
    assert "::ffff:10.1.2.3" in nets and "10.1.2.3" in nets
    assert "::ffff:11.1.2.3" not in nets
