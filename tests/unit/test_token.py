"""Buyer tokens checked in C (flashgate.gateway._token): SHA-256 and HMAC against the
published vectors and the standard library, and the Authorization check against a
slow reference (a regex and hmac) on every compression function the build offers."""

from __future__ import annotations

import hashlib
import hmac
import platform
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashgate.auth import sign
from flashgate.gateway._token import IMPLEMENTATIONS, TokenKey, hmac_sha256, sha256

NOW = 1_790_000_000_000  # epoch ms
SECRET = b"test-secret-\x00\xff"

impls = pytest.mark.parametrize("impl", IMPLEMENTATIONS)


# -- the oracle -----------------------------------------------------------------------

REFERENCE_RE = re.compile(
    rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_-]{1,64})\.([0-9]{1,15})\.([0-9a-f]{64})[ \t]*\Z"
)


def reference_user(secret: bytes, value, now_ms: int, max_ttl_ms: int = 0) -> str | None:
    """TokenKey(secret, max_ttl_ms).user(value, now_ms), slowly."""
    if not isinstance(value, bytes):
        return None
    m = REFERENCE_RE.match(value)
    if m is None:
        return None
    uid, exp, sig = m.groups()
    expires = int(exp)
    if expires <= now_ms or (max_ttl_ms > 0 and expires > now_ms + max_ttl_ms):
        return None
    want = hmac.digest(secret, uid + b"." + exp, "sha256").hex().encode()
    return uid.decode() if hmac.compare_digest(want, sig) else None


def header(user: str = "u42", expires: int = NOW + 60_000, secret: bytes = SECRET) -> bytes:
    return b"Bearer " + sign(secret, user, expires).encode()


# -- SHA-256 and HMAC ---------------------------------------------------------------------

def test_the_sha_extensions_are_used_where_the_cpu_has_them():
    """Else the hardware path would go untested here, and unused in production."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the x86 SHA extensions path is for x86-64")
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    if "sha_ni" not in flags or "sse4_1" not in flags:
        pytest.skip("this CPU has no SHA extensions")
    assert IMPLEMENTATIONS == ("x86-sha", "portable")
    assert TokenKey(SECRET).impl == "x86-sha"


def test_every_build_has_the_portable_function():
    assert "portable" in IMPLEMENTATIONS
    assert TokenKey(SECRET, impl="portable").impl == "portable"
    with pytest.raises(ValueError):
        TokenKey(SECRET, impl="openssl")
    with pytest.raises(ValueError):
        sha256(b"", "openssl")


# FIPS 180-4 examples (NIST CSRC "SHA256.pdf", "SHA2_Additional"): one block, two
# blocks, and the one-million-'a' message
NIST = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
     b"lmnopqrsmnopqrstnopqrstu",
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]


@impls
@pytest.mark.parametrize("msg,digest", NIST, ids=["empty", "abc", "448-bit", "896-bit", "1M-a"])
def test_sha256_nist_vectors(impl, msg, digest):
    assert sha256(msg, impl).hex() == digest


# RFC 4231 section 4 (case 5's MAC is truncated to 128 bits there; cases 6 and 7 have a
# key longer than the block)
RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than "
     b"block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@impls
@pytest.mark.parametrize("key,msg,mac", RFC4231, ids=[f"case{i}" for i in range(1, 8)])
def test_hmac_sha256_rfc4231(impl, key, msg, mac):
    assert hmac_sha256(key, msg, impl).hex()[: len(mac)] == mac


@impls
def test_sha256_every_padding_case(impl):
    """Every tail length around one and two blocks (the 55/56 and 119/120 edges)."""
    for n in range(0, 260):
        msg = bytes((7 * i + n) & 0xFF for i in range(n))
        assert sha256(msg, impl) == hashlib.sha256(msg).digest(), n


@impls
def test_hmac_sha256_every_key_length(impl):
    """Keys shorter than, as long as, and longer than the 64-byte block."""
    for n in range(0, 200):
        key = bytes((13 * i + n) & 0xFF for i in range(n))
        assert hmac_sha256(key, b"u42.1790000000000", impl) == hmac.digest(
            key, b"u42.1790000000000", "sha256"), n


@impls
@settings(max_examples=300, deadline=None)
@given(msg=st.binary(max_size=600))
def test_sha256_is_hashlib(impl, msg):
    assert sha256(msg, impl) == hashlib.sha256(msg).digest()


@impls
@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_sha256_is_the_standard_library(impl, key, msg):
    assert hmac_sha256(key, msg, impl) == hmac.digest(key, msg, "sha256")


def test_the_implementations_agree_on_many_blocks():
    msg = bytes(range(256)) * 257  # 1028 blocks and a tail
    assert len({sha256(msg, impl) for impl in IMPLEMENTATIONS}) == 1
    assert sha256(msg) == hashlib.sha256(msg).digest()


def test_wrong_argument_types_raise():
    with pytest.raises(TypeError):
        sha256("abc")
    with pytest.raises(TypeError):
        hmac_sha256(b"k", "abc")
    with pytest.raises(TypeError):
        TokenKey("secret")
    with pytest.raises(ValueError):
        TokenKey(b"")
    with pytest.raises(ValueError):
        TokenKey(SECRET, -1)


# -- tokens ---------------------------------------------------------------------------

user_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@impls
@settings(max_examples=300, deadline=None)
@given(secret=st.binary(min_size=1, max_size=200), user=user_ids,
       ttl=st.integers(1, 10**14), now=st.integers(0, 10**14))
def test_signed_tokens_are_accepted(impl, secret, user, ttl, now):
    key = TokenKey(secret, impl=impl)
    value = header(user, now + ttl, secret)
    assert key.user(value, now) == user
    assert key.user(value, now + ttl) is None  # expired
    assert TokenKey(secret + b"x", impl=impl).user(value, now) is None


@impls
def test_every_single_byte_change_is_refused(impl):
    key = TokenKey(SECRET, impl=impl)
    value = header("user_Z-9", NOW + 60_000)
    assert key.user(value, NOW) == "user_Z-9"
    for i in range(len(b"Bearer "), len(value)):
        for b in range(256):
            if b != value[i]:
                changed = value[:i] + bytes([b]) + value[i + 1:]
                assert key.user(changed, NOW) is None, (i, b)


@impls
def test_every_truncation_is_refused(impl):
    key = TokenKey(SECRET, impl=impl)
    value = header("u" * 64, 10**15 - 1)  # the longest token: 145 bytes
    assert key.user(value, NOW) == "u" * 64
    for n in range(len(value)):
        assert key.user(value[:n], NOW) is None, n
    token = value[len(b"Bearer "):]
    for n in range(1, len(token)):
        assert key.user(b"Bearer " + token[n:], NOW) is None, n  # and every cut of its head


@impls
def test_expiry_edges(impl):
    key = TokenKey(SECRET, impl=impl)
    value = header("u1", NOW)
    assert key.user(value, NOW - 1) == "u1"
    assert key.user(value, NOW) is None
    assert key.user(value, NOW + 1) is None
    assert key.user(header("u1", 1), 0) == "u1"
    assert key.user(header("u1", 1), 1) is None
    assert key.user(header("u1", 10**15 - 1), NOW) == "u1"  # 15 digits
    for now in (-(2**63), -1, 2**63 - 1):
        assert key.user(value, now) == reference_user(SECRET, value, now)


@impls
def test_max_ttl_edges(impl):
    key = TokenKey(SECRET, 3_600_000, impl=impl)
    assert key.max_ttl_ms == 3_600_000
    assert key.user(header("u1", NOW + 3_600_000), NOW) == "u1"
    assert key.user(header("u1", NOW + 3_600_001), NOW) is None
    assert key.user(header("u1", NOW + 1), NOW) == "u1"
    assert key.user(header("u1", NOW), NOW) is None
    # 0: no limit
    assert TokenKey(SECRET, 0, impl=impl).user(header("u1", 10**15 - 1), NOW) == "u1"
    # now + max_ttl past the largest C long long: no token is too far out
    big = TokenKey(SECRET, 2**62, impl=impl)
    assert big.user(header("u1", 10**15 - 1), 2**62) is None  # expired
    assert big.user(header("u1", 10**15 - 1), -(2**63)) is None  # further than 2**62
    assert big.user(header("u1", 10**15 - 1), 0) == "u1"
    endless = TokenKey(SECRET, 2**63 - 1, impl=impl)
    assert endless.user(header("u1", 10**15 - 1), NOW) == "u1"
    assert endless.user(header("u1", NOW), NOW) is None


@impls
def test_header_forms(impl):
    key = TokenKey(SECRET, impl=impl)
    value = header("u42")
    token = value[len(b"Bearer "):]
    accepted = [
        b"Bearer " + token, b"bearer " + token, b"BEARER " + token, b"bEaReR " + token,
        b"Bearer    " + token, b"Bearer " + token + b"   ", b"Bearer " + token + b"\t",
        b"Bearer " + token + b" \t \t", b"Bearer " + b" " * 10_000 + token,
        b"Bearer " + token + b" " * 10_000,
    ]
    for v in accepted:
        assert key.user(v, NOW) == "u42", v[:40]
    refused = [
        None, b"", b"Bearer", b"Bearer ", b"Bearer    ", b"Bearer" + token,
        b"Bearer\t" + token, b" Bearer " + token, b"Bearer: " + token, b"Basic " + token,
        b"Bearerx " + token, b"Bearer " + token + b"\r", b"Bearer " + token + b"\n",
        b"Bearer " + token + b" x", b"Bearer " + token + b"\x00", b"Bearer " + token + b".",
        b"Bearer " + token.upper(), b"Bearer " + token[:-64] + token[-64:].upper(),
        b"Bearer \xff\xfe" + token, b"Bearer " + "é".encode() + token,
        b"Bearer " + bytes(range(256)), b"\xff" * 10_000, b"Bearer " + b"a" * 10_000,
        b"Bearer " + token + b"0" * 10_000, b"Bearer " + b"u." * 5_000 + token,
        b"B\xe9arer " + token,
        # a user id of 65 bytes, an expiry of 16 digits, a short or long signature
        b"Bearer " + sign(SECRET, "u" * 65, NOW + 1).encode(),
        b"Bearer " + sign(SECRET, "u", 10**15).encode(),
        b"Bearer " + token[:-1], b"Bearer " + token + b"0",
        # an empty part, a fourth part, a signature made on other text
        b"Bearer " + token.replace(b"u42.", b"."), b"Bearer u42." + token,
        b"Bearer " + sign(SECRET, "u42", NOW + 60_000).encode().replace(b"u42", b"u43"),
        value.decode(), str(value), bytearray(value), memoryview(value),
    ]
    for v in refused:
        assert key.user(v, NOW) is None, v if not isinstance(v, bytes) else v[:60]
        assert reference_user(SECRET, v, NOW) is None


def _mutate(value: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    i = data.draw(st.integers(0, len(value) - 1))
    b = data.draw(st.sampled_from(b" \t.0aAf-_\x00\xff9gz"))
    if kind == "replace":
        return value[:i] + bytes([b]) + value[i + 1:]
    if kind == "delete":
        return value[:i] + value[i + 1:]
    return value[:i] + bytes([b]) + value[i:]


SCHEMES = [b"Bearer", b"bearer", b"BEARER", b"bEaReR"]
SPACES = [b" ", b"  ", b" " * 9]
TAILS = [b"", b" ", b"\t", b" \t \t"]
BAD_SCHEMES = [b"Bearer:", b"Basic", b"", b"Bearerr", b"Bear"]
BAD_SPACES = [b"", b"\t", b" \t", b"\r\n "]
BAD_TAILS = [b"\r\n", b"x", b"\x00", b".", b" x"]


@impls
@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_agrees_with_the_reference(impl, data):
    """Built and mutated header values, near-expiry clocks, random bytes: the C check
    answers what the regex-and-hmac reference answers, and never raises."""
    max_ttl = data.draw(st.sampled_from([0, 1, 60_000, 10**15]))
    key = TokenKey(SECRET, max_ttl, impl=impl)
    now = data.draw(st.sampled_from([NOW, 0, -1]))
    edges = [e for e in (now - 1, now, now + 1, now + max_ttl, now + max_ttl + 1)
             if 0 < e < 10**15]
    anywhen = st.integers(1, 10**15 - 1)
    expires = data.draw(st.one_of(st.sampled_from(edges), anywhen) if edges else anywhen)
    token = sign(SECRET, data.draw(user_ids), expires).encode()
    source = data.draw(st.sampled_from(["good form", "good form", "any form", "bytes", "junk"]))
    if source == "bytes":
        value = data.draw(st.binary(max_size=300))
    elif source == "junk":
        value = b"Bearer " + data.draw(st.binary(max_size=160))
    else:
        good = source == "good form"
        scheme = data.draw(st.sampled_from(SCHEMES if good else SCHEMES + BAD_SCHEMES))
        sp = data.draw(st.sampled_from(SPACES if good else SPACES + BAD_SPACES))
        tail = data.draw(st.sampled_from(TAILS if good else TAILS + BAD_TAILS))
        value = scheme + sp + token + tail
    if value and data.draw(st.integers(0, 3)) == 0:
        value = _mutate(value, data)
    assert key.user(value, now) == reference_user(SECRET, value, now, max_ttl)
