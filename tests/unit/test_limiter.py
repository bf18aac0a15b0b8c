"""GCRA limiter: limits, retry-after, the fixed-size table and its eviction rule.

Time is simulated: every test feeds now_us itself, nothing sleeps.
"""

import math

import pytest

from flashgate.limiter import MAX_NOW_US, Gcra, Limiter

SEC = 1_000_000  # microseconds
MS = 1_000
SLOT_BYTES = 16
ALIGN_SLACK = 64


def count_allowed(hit, times):
    return sum(1 for t in times if hit(t) == 0)


# --- GCRA arithmetic -------------------------------------------------------------


def test_burst_then_refusal_with_retry_after():
    g = Gcra(rate=10, burst=3)  # T = 100 ms, tau = 200 ms
    t0 = 5 * SEC
    assert [g.hit("a", t0) for _ in range(3)] == [0, 0, 0]
    # TAT = t0 + 300 ms; allowed again once TAT - now <= tau, i.e. at t0 + 100 ms
    assert g.hit("a", t0) == 100 * MS
    assert g.hit("a", t0 + 40 * MS) == 60 * MS
    assert g.hit("a", t0 + 100 * MS - 1) == 1
    assert g.hit("a", t0 + 100 * MS) == 0
    assert g.hit("a", t0 + 100 * MS) == 100 * MS  # refusals were not counted


def test_retry_after_is_rounded_up_to_a_time_that_is_allowed():
    g = Gcra(rate=3, burst=1)  # T = 333333.33 us: not a whole number of us
    assert g.hit("a", 0) == 0
    wait = g.hit("a", 0)
    assert wait == 333_334
    assert g.hit("a", wait - 1) == 1
    assert g.hit("a", wait) == 0


def test_fractional_burst():
    g = Gcra(rate=1, burst=1.5)  # tau = T / 2
    assert g.hit("a", 0) == 0
    assert g.hit("a", 0) == 500 * MS
    assert g.hit("a", 500 * MS) == 0


def test_refused_key_gets_no_credit_for_hammering():
    g = Gcra(rate=2, burst=2)
    assert g.hit("a", 0) == 0 and g.hit("a", 0) == 0
    for t in range(0, 500 * MS, MS):
        assert g.hit("a", t) > 0
    assert g.hit("a", 500 * MS) == 0


def test_idle_key_gets_its_full_burst_back_and_no_more():
    g = Gcra(rate=10, burst=4)
    for _ in range(4):
        assert g.hit("a", 0) == 0
    later = 60 * SEC
    assert [g.hit("a", later) for _ in range(5)] == [0, 0, 0, 0, 100 * MS]


@pytest.mark.parametrize(
    ("rate", "burst", "duration", "step"),
    [
        (50, 10, 10 * SEC, MS),
        (1000, 1, 3 * SEC, MS),
        (3, 5, 20 * SEC, MS),
        (0.5, 2, 30 * SEC, MS),
        (100_000, 100, 10 * MS, 1),
    ],
)
def test_sustained_rate_allows_exactly_rate_times_t_plus_burst(rate, burst, duration, step):
    # Hammer one key (and the global bucket) every `step` us over [0, duration].
    times = range(0, duration + 1, step)
    expected = math.floor(rate * duration / SEC) + burst
    keyed = Gcra(rate, burst)
    assert count_allowed(lambda t: keyed.hit("k", t), times) == expected
    glob = Gcra(rate, burst, capacity=1)
    assert count_allowed(glob.hit_global, times) == expected


def test_sustained_rate_with_irregular_arrivals():
    g = Gcra(rate=20, burst=5)
    # arrivals every 7 ms never earn more than one request per T on average
    times = range(0, 10 * SEC + 1, 7 * MS)
    allowed = count_allowed(lambda t: g.hit("k", t), times)
    assert 20 * 10 + 5 - 1 <= allowed <= 20 * 10 + 5


@pytest.mark.parametrize("rate", [0, 0.0, -1, -math.inf, math.inf])
def test_disabled_always_allows_and_stores_nothing(rate):
    g = Gcra(rate, burst=1)
    for t in range(1000):
        assert g.hit("a", 0) == 0
        assert g.hit(f"k{t}", t) == 0
        assert g.hit_global(0) == 0
    assert len(g) == 0
    assert g.capacity == 0
    assert g.memory_bytes == 0


def test_distinct_keys_are_independent():
    g = Gcra(rate=1, burst=2)
    assert g.hit("a", 0) == 0 and g.hit("a", 0) == 0
    assert g.hit("a", 0) > 0
    assert g.hit("b", 0) == 0 and g.hit("b", 0) == 0
    assert g.hit("b", 0) > 0
    assert g.hit("c", 0) == 0
    assert len(g) == 3


def test_global_bucket_is_separate_from_keys():
    g = Gcra(rate=10, burst=2)
    assert g.hit_global(0) == 0 and g.hit_global(0) == 0
    assert g.hit_global(0) == 100 * MS
    assert g.hit("a", 0) == 0  # keys are not limited by the global bucket
    assert g.hit_global(100 * MS) == 0
    assert len(g) == 1  # the global bucket is not a table entry


def test_len_counts_entries_live_at_the_latest_time_seen():
    g = Gcra(rate=1, burst=1)
    for k in ("a", "b", "c"):
        g.hit(k, 0)
    assert len(g) == 3
    g.hit("d", SEC // 2)
    assert len(g) == 4
    g.hit("e", SEC)  # a, b, c expire at exactly 1 s
    assert len(g) == 2


def test_any_hashable_key_unhashable_refused():
    g = Gcra(rate=1, burst=1)
    assert g.hit(b"10.0.0.1", 0) == 0
    assert g.hit(("10.0.0.1", 443), 0) == 0
    with pytest.raises(TypeError):
        g.hit(["not", "hashable"], 0)


# --- the table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "slots"), [(1, 8), (8, 8), (9, 16), (1000, 1024), (65536, 65536)]
)
def test_capacity_rounds_up_to_a_power_of_two(asked, slots):
    g = Gcra(rate=1, burst=1, capacity=asked)
    assert g.capacity == slots
    assert g.memory_bytes == slots * SLOT_BYTES + ALIGN_SLACK


def test_one_mebi_slot_table_is_16_mib():
    g = Gcra(rate=1, burst=1, capacity=1 << 20)
    assert g.memory_bytes == 16 * 1024 * 1024 + ALIGN_SLACK


def test_memory_stays_bounded_under_a_million_distinct_keys():
    g = Gcra(rate=1, burst=1, capacity=1 << 16)
    before = g.memory_bytes
    hit = g.hit
    refused = 0
    for i in range(1_000_000):
        # one new key per microsecond; T = 1 s, so none expires during the run
        refused += hit(f"bot-{i}", i) != 0
    assert refused == 0  # an unseen (or forgotten) key is never refused
    assert g.memory_bytes == before
    assert g.capacity == 1 << 16
    assert len(g) <= g.capacity
    assert len(g) > g.capacity * 0.9  # the table is full...
    assert g.evictions >= 1_000_000 - g.capacity  # ...and kept only the newest entries


def test_limited_key_stays_limited_while_a_flood_passes_through():
    # Realistic: 64 Ki slots, per-IP 10/s burst 20; 100k bot IPs arrive once each
    # over 10 s (so at any time only the last 100 ms of them are live), while one
    # abusive IP hammers every millisecond. It must get exactly its allowance.
    g = Gcra(rate=10, burst=20, capacity=1 << 16)
    abuser_allowed = 0
    flood_refused = 0
    bot = 0
    for t in range(0, 10 * SEC + 1, MS):
        abuser_allowed += g.hit("203.0.113.7", t) == 0
        for _ in range(10):
            if bot < 100_000:
                flood_refused += g.hit(f"198.18.{bot >> 8}.{bot & 255}", t) != 0
                bot += 1
    assert bot == 100_000
    assert flood_refused == 0
    assert abuser_allowed == 20 + 10 * 10
    assert len(g) < 2_000  # most flood entries have expired


def test_limited_key_survives_a_flood_that_overflows_the_table():
    # A tiny table flooded far beyond its size: every flood entry stays live for
    # the whole run, the table evicts tens of thousands of them, yet the key at its
    # limit (TAT > now + tau) always outlives the flood entries (TAT <= now + T).
    # The abuser spends its burst before the flood: only a key at its limit is
    # promised to survive (forgetting a key that is not limited is merely lenient,
    # and whether that happens depends on the per-process hash seed).
    g = Gcra(rate=1, burst=5, capacity=64)
    allowed = sum(g.hit("abuser", 0) == 0 for _ in range(10))
    assert allowed == 5
    bot = 0
    for t in range(MS, 3 * SEC + 1, MS):
        allowed += g.hit("abuser", t) == 0
        for _ in range(33):
            assert g.hit(f"bot-{bot}", t) == 0
            bot += 1
    assert g.evictions > 90_000
    assert allowed == 5 + 3


def test_eviction_only_makes_the_limiter_more_lenient():
    # One bucket (8 slots). A limited key with burst 1 is the live entry nearest
    # to expiring, so 8 newer keys push it out: it is forgotten (allowed early),
    # and none of the newcomers is ever refused.
    g = Gcra(rate=1, burst=1, capacity=8)
    assert g.hit("a", 0) == 0
    assert g.hit("a", 1) > 0
    for i in range(8):
        assert g.hit(f"n{i}", 2 + i) == 0
    assert g.evictions == 1
    assert g.hit("a", 10) == 0  # forgotten: more lenient, never stricter
    assert len(g) == 8


def test_expired_entries_are_reused_without_eviction():
    g = Gcra(rate=1000, burst=1, capacity=8)  # entries live 1 ms
    for i in range(10_000):
        assert g.hit(f"k{i}", i * MS) == 0
    assert g.evictions == 0
    assert len(g) == 1


# --- Limiter ---------------------------------------------------------------------


def test_limiter_defaults_disable_everything():
    lim = Limiter()
    for _ in range(100):
        assert lim.check_ip("1.2.3.4", 0) == 0
        assert lim.check_user("u1", 0) == 0
        assert lim.check_global(0) == 0
    assert lim.ip.memory_bytes == lim.user.memory_bytes == lim.glob.memory_bytes == 0


def test_limiter_applies_each_limit_to_its_own_table():
    lim = Limiter(
        ip_rate=10,
        ip_burst=2,
        user_rate=1,
        user_burst=1,
        global_rate=1000,
        global_burst=3,
        capacity=1024,
    )
    assert isinstance(lim.ip, Gcra) and isinstance(lim.user, Gcra) and isinstance(lim.glob, Gcra)
    assert (lim.ip.rate, lim.ip.burst, lim.ip.capacity) == (10, 2, 1024)
    assert (lim.user.rate, lim.user.burst, lim.user.capacity) == (1, 1, 1024)
    assert (lim.glob.rate, lim.glob.burst) == (1000, 3)
    assert lim.glob.capacity == 8  # only the key-less bucket is used

    assert lim.check_ip("x", 0) == 0 and lim.check_ip("x", 0) == 0
    assert lim.check_ip("x", 0) == 100 * MS
    assert lim.check_user("x", 0) == 0  # same string, other table
    assert lim.check_user("x", 0) == SEC
    assert lim.ip.hit("y", 0) == 0  # the attributes are the live instances
    assert len(lim.ip) == 2 and len(lim.user) == 1

    assert [lim.check_global(0) for _ in range(4)] == [0, 0, 0, 1 * MS]
    assert lim.check_global(1 * MS) == 0


def test_limiter_validates_its_arguments():
    with pytest.raises(ValueError, match="burst"):
        Limiter(ip_rate=1, ip_burst=0)
    with pytest.raises(ValueError, match="capacity"):
        Limiter(capacity=0)
    with pytest.raises(ValueError, match="NaN"):
        Limiter(global_rate=math.nan)


# --- argument validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 0.999), "burst must be >= 1"),
        ((1, 0), "burst must be >= 1"),
        ((1, -5), "burst must be >= 1"),
        ((1, math.nan), "burst must be >= 1"),
        ((1, math.inf), "burst must be finite"),
        ((math.nan, 1), "NaN"),
        ((1, 1, 0), "capacity must be >= 1"),
        ((1, 1, -1), "capacity must be >= 1"),
        ((1, 1, (1 << 40) + 1), "capacity must be <="),
        ((1e-300, 1), "spans more than"),
        ((0, 0.5), "burst must be >= 1"),  # checked even when disabled
    ],
)
def test_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        Gcra(*args)


def test_now_must_be_in_range():
    g = Gcra(rate=1, burst=1)
    for bad in (-1, MAX_NOW_US + 1):
        with pytest.raises(ValueError, match="now_us"):
            g.hit("a", bad)
        with pytest.raises(ValueError, match="now_us"):
            g.hit_global(bad)
    with pytest.raises(OverflowError):
        g.hit("a", 1 << 64)
    assert g.hit("a", MAX_NOW_US) == 0
    assert g.hit("a", MAX_NOW_US) == SEC
    assert g.hit_global(MAX_NOW_US) == 0


def test_repr():
    assert repr(Gcra(10, 20, 100)) == "Gcra(rate=10.0, burst=20.0, capacity=128)"
