"""The commit call's RESP, packed in C per reservation (gateway._commit.pack_commit),
is byte for byte what hiredis packs from the same arguments."""

import random

import hiredis
import pytest

from flashgate.core import keys, scripts
from flashgate.gateway._buy import Purchase, SkuCore, order_id, siphash24
from flashgate.gateway._commit import pack_bulks, pack_commit, reply_offsets
from tests.reference.purchase import reservation_args

SKU = keys.SkuKeys("ev", "s1")
KEYS = SKU.commit()
PACKED_KEYS = pack_bulks(KEYS)


def reference(items, whole=False) -> bytes:
    """The call as lua/commit.lua documents it, packed by hiredis."""
    idem_keys = [p.idem_key for p in items if p.idem_key is not None]
    argv = [len(items)]
    for p in items:
        argv += reservation_args(p.order_id, p.user, p.qty, p.fp)
    args = scripts.COMMIT.args(KEYS + idem_keys, argv)
    if whole:
        args[0:2] = ["EVAL", scripts.COMMIT.source]
    return hiredis.pack_command(tuple(args))


def purchase(rng: random.Random, seq: int) -> Purchase:
    user = "".join(rng.choice("abcXYZ019_-") for _ in range(rng.randint(1, 64)))
    qty = rng.choice((1, 1, 2, 9, 10, 99, 100, 12345, 10**9))
    p = Purchase(SkuCore(), user, qty)
    if rng.random() < 0.3:
        key = "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(rng.randint(1, 255)))
        p.fp = f"s1:{qty}"
        p.idem_key = SKU.idem(user, key)
    p.order_id = b"ev.s1.b00t%x" % seq
    return p


@pytest.mark.parametrize("whole", [False, True])
def test_packed_commit_equals_hiredis_packing(whole):
    rng = random.Random(7)
    head = scripts.COMMIT.packed_head(whole=whole)
    seq = 0
    for n in (0, 1, 2, 9, 10, 11, 99, 100, 256):
        for _ in range(5):
            items = []
            for _ in range(n):
                seq += rng.randint(1, 1 << 20)
                items.append(purchase(rng, seq))
            assert pack_commit(head, PACKED_KEYS, items) == reference(items, whole)


def test_packed_keys_are_bulk_strings():
    assert pack_bulks(["a", b"bc", ""]) == b"$1\r\na\r\n$2\r\nbc\r\n$0\r\n\r\n"


def test_packing_refuses_what_is_not_a_purchase_or_a_positive_qty():
    head = scripts.COMMIT.packed_head()
    with pytest.raises(TypeError):
        pack_commit(head, PACKED_KEYS, [object()])
    bad = Purchase(SkuCore(), "u", 1)
    bad.order_id = b"o"
    bad.qty = 0
    with pytest.raises(ValueError):
        pack_commit(head, PACKED_KEYS, [bad])


def test_reply_offsets_of_each_part_shape():
    # sold (2 values), an existing order (7), a refusal (1), sold across tiers (4)
    reply = [5, 10, 1, 2, 0, 100, 9, b"o", 100, 1, 1, 2, b"", 1, 17, 100, 1090, b"1x100,1x990"]
    assert reply_offsets(reply, 4) == [4, 6, 13, 14]
    reply = reply[:14]
    assert reply_offsets(reply, 3) == [4, 6, 13]
    assert reply_offsets(reply, 2) is None  # values left over
    assert reply_offsets(reply, 4) is None  # a part missing
    assert reply_offsets(reply[:5], 1) is None  # a sale without its price
    assert reply_offsets([5, 10, 1, 2, b"0", 100], 1) is None  # a code that is not an int
    assert reply_offsets((5, 10, 1, 2), 0) is None  # not a list
    assert reply_offsets([5, 10, 1, 2], 0) == []


def _siphash24_reference(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 as its paper specifies it, in Python, for any message length."""
    mask = (1 << 64) - 1

    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & mask

    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D,
         k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n):
        for _ in range(n):
            v[0] = (v[0] + v[1]) & mask; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)  # noqa: E702
            v[2] = (v[2] + v[3]) & mask; v[3] = rotl(v[3], 16) ^ v[2]  # noqa: E702
            v[0] = (v[0] + v[3]) & mask; v[3] = rotl(v[3], 21) ^ v[0]  # noqa: E702
            v[2] = (v[2] + v[1]) & mask; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)  # noqa: E702

    tail = len(msg) % 8
    words = [int.from_bytes(msg[i:i + 8], "little") for i in range(0, len(msg) - tail, 8)]
    words.append(int.from_bytes(msg[len(msg) - tail:], "little") | ((len(msg) & 0xFF) << 56))
    for m in words:
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_siphash_is_the_reference():
    key = bytes(range(16))
    # the paper's example (its appendix A): the 15-byte message 00 01 .. 0e
    assert _siphash24_reference(key, bytes(range(15))) == 0xA129CA6149BE45E5
    rng = random.Random(5)
    for _ in range(2000):
        k = rng.randbytes(16)
        w = rng.randrange(2**64)
        assert siphash24(k, w) == _siphash24_reference(k, w.to_bytes(8, "little"))


def test_order_ids_are_unique_and_say_nothing_of_the_sequence():
    key = bytes(range(16))
    ids = [order_id(b"ev.s1.b00t", key, seq) for seq in range(200_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == len(b"ev.s1.b00t") + 16 and i.startswith(b"ev.s1.b00t") for i in ids)
    tails = [int(i[-16:], 16) for i in ids[:2000]]
    # neighbours are not neighbours: about half of the 64 bits differ between seq and seq+1
    flips = [bin(a ^ b).count("1") for a, b in zip(tails, tails[1:], strict=False)]
    assert 28 < sum(flips) / len(flips) < 36
    # another key, another permutation
    other = [order_id(b"ev.s1.b00t", bytes(16), seq) for seq in range(1000)]
    assert not set(other) & set(ids[:1000])
    with pytest.raises(ValueError):
        order_id(b"p", b"short", 1)


def test_the_c_functions_refuse_what_would_crash_them():
    # None where C reads bytes or str: errors, never a read of memory that is not there
    head = scripts.COMMIT.packed_head()
    p = Purchase(SkuCore(), "u", 1)
    p.order_id = None
    with pytest.raises(TypeError):
        pack_commit(head, PACKED_KEYS, [p])
    with pytest.raises(TypeError):
        pack_commit(None, PACKED_KEYS, [])
    with pytest.raises(TypeError):
        pack_commit(head, None, [])
    with pytest.raises(TypeError):
        Purchase(SkuCore(), "u", 1, b"fingerprint")
    p = Purchase(SkuCore(), "u", 1)
    p.order_id = b"o"
    p.fp = None
    with pytest.raises(TypeError):
        pack_commit(head, PACKED_KEYS, [p])
