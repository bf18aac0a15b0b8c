"""The commit call's RESP, packed in C per reservation (gateway._commit.pack_commit),
is byte for byte what hiredis packs from the same arguments."""

import random

import hiredis
import pytest

from flashgate.core import store
from flashgate.gateway._commit import Purchase, hex_id, pack_commit, reply_offsets

KEYS = store.commit_keys("fg:{ev:s1}:")


def reference(items, whole=False) -> bytes:
    """The call as the argument list the script documents, packed by hiredis."""
    argv = ["fg:{ev:s1}:", len(items), 0]
    for p in items:
        argv += store.reservation_args(p.order_id, p.user, p.qty, p.idem, p.fp)
    args = store.COMMIT.args(KEYS, argv)
    if whole:
        args[0:2] = ["EVAL", store.COMMIT.source]
    return hiredis.pack_command(tuple(args))


def purchase(rng: random.Random, seq: int) -> Purchase:
    user = "".join(rng.choice("abcXYZ019_-") for _ in range(rng.randint(1, 64)))
    qty = rng.choice((1, 1, 2, 9, 10, 99, 100, 12345, 10**9))
    idem = None
    fp = ""
    if rng.random() < 0.3:
        idem = "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(rng.randint(1, 255)))
        fp = f"s1:{qty}"
    p = Purchase(None, user, qty, idem, fp, None, 0)
    p.order_id = b"ev.s1.b00t%x" % seq
    return p


@pytest.mark.parametrize("whole", [False, True])
def test_packed_commit_equals_hiredis_packing(whole):
    rng = random.Random(7)
    head, count = store.COMMIT.packed_head(KEYS, ["fg:{ev:s1}:"], whole=whole)
    seq = 0
    for n in (0, 1, 2, 9, 10, 11, 99, 100, 256):
        for _ in range(5):
            items = []
            for _ in range(n):
                seq += rng.randint(1, 1 << 20)
                items.append(purchase(rng, seq))
            assert pack_commit(head, count, items) == reference(items, whole)


def test_packing_refuses_what_is_not_a_purchase_or_a_positive_qty():
    head, count = store.COMMIT.packed_head(KEYS, ["fg:{ev:s1}:"])
    with pytest.raises(TypeError):
        pack_commit(head, count, [object()])
    bad = Purchase(None, "u", 1, None, "", None, 0)
    bad.qty = 0
    with pytest.raises(ValueError):
        pack_commit(head, count, [bad])


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
    # None where C reads bytes or str, and a key that is not a str: errors, never a
    # read of memory that is not there
    from flashgate.gateway._commit import answer_sale, sale_template

    head, count = store.COMMIT.packed_head(KEYS, ["fg:{ev:s1}:"])
    p = Purchase(None, "u", 1, None, "", None, 0)
    p.order_id = None
    with pytest.raises(TypeError):
        pack_commit(head, count, [p])
    with pytest.raises(TypeError):
        pack_commit(None, count, [])
    with pytest.raises(TypeError):
        Purchase(None, "u", 1, b"key", "", None, 0)
    with pytest.raises(TypeError):
        answer_sale(None, b"o", "u")
    t = sale_template(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n{%s,%s}", 3)
    assert answer_sale(t, b"o", "u") == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{o,u}"
    with pytest.raises(TypeError):
        answer_sale(t, None, "u")
