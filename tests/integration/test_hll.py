"""The worker's HyperLogLog of unique visitors against Redis's own: the same
registers for the same visitors, so PFMERGE of our dump counts what PFADD would."""

from __future__ import annotations

import pytest

from flashgate.core._hll import HyperLogLog
from tests.support import new_id


def pfadd_all(r, key: str, items: list[str]) -> None:
    for i in range(0, len(items), 5000):
        r.pfadd(key, *items[i:i + 5000])


@pytest.mark.parametrize("n", [1, 7, 100, 3000, 60000])
def test_dump_has_exactly_the_registers_pfadd_builds(r, n):
    users = [f"user-{i}" for i in range(n)] + ["用户", "u" * 8, "u" * 15, "u" * 17, ""]
    ours, theirs = new_id("hll"), new_id("hll")
    h = HyperLogLog()
    for u in users:
        h.add(u)
    r.set(ours, h.dump())
    pfadd_all(r, theirs, users)
    assert r.pfcount(ours) == r.pfcount(theirs)
    # Redis's key is sparse while small: merge it into a dense empty one to compare
    dense = new_id("hll")
    r.set(dense, HyperLogLog().dump())
    r.pfmerge(dense, dense, theirs)
    assert r.get(dense)[16:] == h.dump()[16:], "a register differs from Redis's"


def test_merging_dumps_is_the_union_and_idempotent(r):
    a, b = HyperLogLog(), HyperLogLog()
    users = [f"v{i}" for i in range(20000)]
    for u in users[:12000]:
        a.add(u)
    for u in users[8000:]:
        b.add(u)
    k, ka, kb, ref = (new_id("hll") for _ in range(4))
    r.set(ka, a.dump())
    r.set(kb, b.dump())
    r.pfmerge(k, ka, kb)
    r.pfmerge(k, ka, kb)  # again: nothing changes
    pfadd_all(r, ref, users)
    assert r.pfcount(k) == r.pfcount(ref)
    assert abs(r.pfcount(k) - 20000) < 20000 * 0.03


def test_dirty_flag_and_bad_strings():
    h = HyperLogLog()
    assert not h.dirty
    h.add("x")
    assert h.dirty
    h.dump()
    assert not h.dirty
    h.add("x")  # already counted: no register grows
    assert not h.dirty
    h.add("\ud800")  # a lone surrogate has no UTF-8 form: ignored, no exception
    assert not h.dirty
    assert sum(h.register(i) for i in range(16384)) > 0
    with pytest.raises(IndexError):
        h.register(16384)
