"""The commit call's RESP, packed in C per reservation (gateway._commit.pack_commit),
is byte for byte what hiredis packs from the same arguments."""

import random

import hiredis
import pytest
from flashgate.gateway._buy import Purchase, SkuCore, hex_id

from flashgate.core import keys, scripts
from flashgate.gateway._commit import pack_bulks, pack_commit, reply_offsets

SKU = keys.SkuKeys("ev", "s1")
KEYS = SKU.commit()
PACKED_KEYS = pack_bulks(KEYS)


def reference(items, whole=False) -> bytes:
    """The call as lua/commit.lua documents it, packed by hiredis."""
    idem_keys = [p.idem_key for p in items if p.idem_key is not None]
    argv = [len(items), 0]
    for p in items:
        argv += scripts.reservation_args(p.order_id, p.user, p.qty, p.fp)
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
    # sold (2 values), an existing order (6), a refusal (1)
    reply = [5, 10, 1, 2, 0, 100, 9, b"o", 100, 1, 1, 2, 1]
    assert reply_offsets(reply, 3) == [4, 6, 12]
    assert reply_offsets(reply, 2) is None  # values left over
    assert reply_offsets(reply, 4) is None  # a part missing
    assert reply_offsets(reply[:5], 1) is None  # a sale without its price
    assert reply_offsets([5, 10, 1, 2, b"0", 100], 1) is None  # a code that is not an int
    assert reply_offsets((5, 10, 1, 2), 0) is None  # not a list
    assert reply_offsets([5, 10, 1, 2], 0) == []


def test_order_ids_are_the_prefix_and_the_sequence_in_hex():
    rng = random.Random(3)
    seqs = [0, 1, 9, 10, 15, 16, 255, 256, 2**32, 2**64 - 1]
    seqs += [rng.randrange(2**64) for _ in range(1000)]
    for seq in seqs:
        assert hex_id(b"ev.s1.b00t", seq) == b"ev.s1.b00t%x" % seq
    assert hex_id(b"", 0) == b"0"


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
