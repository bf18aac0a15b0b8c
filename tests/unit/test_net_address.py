"""flashgate.gateway._net's address parser, text form and hash, against ipaddress.

``parse`` must accept exactly what ``ipaddress.ip_address(str)`` accepts (scope ids
aside, which it refuses) and give the same address; ``text_of`` must give
``str(ipaddress.ip_address(...))`` with an IPv4-mapped address in its IPv4 form.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashgate.gateway import _net

MAPPED = b"\0" * 10 + b"\xff\xff"


def expected(text: str) -> bytes | None:
    """The 16 bytes ``parse`` must give for ``text``, or None."""
    if "%" in text:
        return None  # scope ids are refused
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return MAPPED + ip.packed if ip.version == 4 else ip.packed


def canonical(addr16: bytes) -> str:
    ip = ipaddress.IPv6Address(addr16)
    return str(ip.ipv4_mapped or ip)


def check(text: str) -> bytes | None:
    want = expected(text)
    assert _net.parse(text) == want, text
    if max(map(ord, text), default=0) < 256:
        assert _net.parse(text.encode("latin-1")) == want, text
    if want is not None:
        assert _net.text_of(want) == canonical(want)
    return want


# --------------------------------------------------------------------------- cases

ADVERSARIAL = [
    # IPv4
    "1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.",
    ".1.2.3", "1..2.3", "01.2.3.4", "1.2.3.04", "1.2.3.00", "1.2.3.0", "0001.2.3.4",
    "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\n", "+1.2.3.4", "1.2.3.-4", "1.2.3.4/32", "1e2.1.1.1",
    "0x1.2.3.4", "1.2.3.4:80", "1.2.3.\u0664", "\uff11.2.3.4", "999.999.999.999",
    # IPv6
    "::", "::1", "1::", "::ffff:1.2.3.4", "::FFFF:1.2.3.4", "::ffff:102:304", "::1.2.3.4",
    "1::2::3", ":::", "::::", "1:::2", ":1::2", "1::2:", ":1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
    "1::3:4:5:6:7:8", "1::2:3:4:5:6:7:8", "::1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8::",
    "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "1:2:3:4:5::1.2.3.4", "::1.2.3.4:5",
    "1.2.3.4::", "::1.2.3", "::01.2.3.4", "::256.0.0.0", "::ffff:1.2.3.4.5", "1.2.3.4:1::",
    "00000::1", "0000::1", "abcd::EF01", "g::1", "::-1", "::+1", "fe80::1%1", "fe80::1%eth0",
    "fe80::1%", "%1", "::1/128", "[::1]", "2001:db8::1 ", "\t::1", "::\x00", "1:2:3:4:5:6:7:8%x",
    "0:0:0:0:0:0:0:0", "0:0:0:0:0:0:0:1", "2001:0db8:0000:0000:0000:ff00:0042:8329",
    # long: the longest accepted texts, and one character more
    "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
    "0000:0000:0000:0000:0000:0000:255.255.255.255",
    "0000:0000:0000:0000:0000:00000:255.255.255.255",
    "0000:0000:0000:0000:0000:0000:255.255.255.2550",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffff",
    "::ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "::ffff:ffff:ffff:ffff:ffff:255.255.255.255",
    "1" * 46, "1." * 30, ":" * 50, "::" + "1" * 60, "a" * 4096, "",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial(text):
    check(text)


def test_the_oracle_tells_accepted_from_refused():
    assert expected("::ffff:1.2.3.4") == expected("1.2.3.4") == MAPPED + bytes([1, 2, 3, 4])
    assert expected("1.2.3") is None and expected("fe80::1%1") is None
    assert _net.parse("fe80::1") == ipaddress.IPv6Address("fe80::1").packed


def test_every_byte_value_anywhere_in_an_address():
    templates = ["1.2.3.4", "::1", "::ffff:1.2.3.4", "2001:db8::a:1", "1:2:3:4:5:6:7:8"]
    accepted = 0
    for b in range(256):
        c = chr(b)
        check(c)
        for t in templates:
            for i in range(len(t) + 1):
                accepted += check(t[:i] + c + t[i:]) is not None  # inserted
            for i in range(len(t)):
                accepted += check(t[:i] + c + t[i + 1:]) is not None  # replaced
    assert accepted > 1000  # hex digits, dots and colons in the right places


def test_non_text_is_not_an_address():
    for x in (None, 16909060, 1.5, bytearray(b"1.2.3.4"), ["1.2.3.4"]):
        assert _net.parse(x) is None


def test_text_of_needs_16_bytes():
    for bad in (b"", b"\0" * 4, b"\0" * 17):
        with pytest.raises(ValueError):
            _net.text_of(bad)
    with pytest.raises(TypeError):
        _net.text_of("::1")
    assert _net.text_of(MAPPED + bytes(4)) == "0.0.0.0"
    assert _net.text_of(bytes(16)) == "::"


# --------------------------------------------------------------------------- random

near = st.text("0123456789abcdefABCDEF:.", max_size=48)


@st.composite
def mutated(draw) -> str:
    """A valid address text in some form, perhaps with one edit."""
    if draw(st.booleans()):
        ip = ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))
        text = draw(st.sampled_from([str(ip), f"::ffff:{ip}", f"1:2:3:4:5:6:{ip}"]))
    else:
        hextets = draw(st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8, 0x1234]),
                                min_size=8, max_size=8))
        ip = ipaddress.IPv6Address(b"".join(h.to_bytes(2, "big") for h in hextets))
        text = draw(st.sampled_from([str(ip), ip.exploded, ip.exploded.upper()]))
    edits = draw(st.integers(0, 2))
    for _ in range(edits):
        i = draw(st.integers(0, len(text)))
        c = draw(st.sampled_from("0:.f0%g "))
        text = draw(st.sampled_from([text[:i] + c + text[i:], text[:i] + text[i + 1:],
                                     text[:i] + text[i:] * 2]))
    return text


@settings(max_examples=2500, deadline=None)
@given(text=st.one_of(near, mutated(), st.text(max_size=50)))
def test_random_text(text):
    check(text)


@settings(max_examples=2000, deadline=None)
@given(raw=st.binary(max_size=50))
def test_random_bytes(raw):
    assert _net.parse(raw) == expected(raw.decode("latin-1"))


@st.composite
def addrs16(draw) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return MAPPED + draw(st.binary(min_size=4, max_size=4))
    hextets = draw(st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]) | st.integers(0, 0xFFFF),
                            min_size=8, max_size=8))
    return b"".join(h.to_bytes(2, "big") for h in hextets)


@settings(max_examples=1500, deadline=None)
@given(a=st.one_of(addrs16(), st.binary(min_size=16, max_size=16)))
def test_text_form_is_ipaddress_s_and_parses_back(a):
    text = _net.text_of(a)
    assert text == canonical(a)
    assert _net.parse(text) == a


# --------------------------------------------------------------------------- hash


@settings(max_examples=500, deadline=None)
@given(a=addrs16())
def test_the_hash_is_the_interpreter_s_keyed_hash_of_the_bytes(a):
    assert _net.hash_of(a) == hash(a)  # bytes hash: the same siphash, the same secret


def test_the_hash_changes_with_the_process_secret():
    code = ("from flashgate.gateway import _net; "
            "print(_net.hash_of(_net.parse('198.51.100.1')))")

    def run(seed: str) -> int:
        root = os.path.dirname(os.path.dirname(os.path.dirname(_net.__file__)))
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                             capture_output=True, text=True)
        return int(out.stdout)

    assert run("1") == run("1")
    assert len({run("1"), run("2"), run("3")}) == 3
