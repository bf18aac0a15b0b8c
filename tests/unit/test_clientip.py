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
