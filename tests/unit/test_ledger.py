"""The stock ledger without I/O: each rule, and a randomized run of several workers'
ledgers against a model of the commit script, checking the invariants throughout."""

import random

import pytest

from flashgate.core._stock import (
    BUYER_SHARD,
    ENDED,
    LIMIT_EXCEEDED,
    NOT_STARTED,
    OK,
    PAUSED,
    PROBE,
    SOLD_OUT,
    WAIT,
    Ledger,
)

T0 = 1_000_000
T1 = 2_000_000


def ledger(stock=5, sold=0, limit=1):
    lg = Ledger()
    return lg, lg.add_sku(stock, sold, limit, T0, T1)


def test_window_is_half_open():
    lg, s = ledger()
    assert lg.reserve(s, "u", 1, T0 - 1, False) == NOT_STARTED
    assert lg.reserve(s, "u", 1, T1, False) == ENDED
    assert lg.reserve(s, "u", 1, T1 + 5, False) == ENDED
    assert lg.reserve(s, "u", 1, T0, False) == OK
    assert lg.state(s)[2] == 1


def test_paused_refuses():
    lg, s = ledger()
    lg.set_paused(s, True)
    assert lg.reserve(s, "u", 1, T0, False) == PAUSED
    lg.set_paused(s, False)
    assert lg.reserve(s, "u", 1, T0, False) == OK


def test_sold_out_only_when_redis_said_so():
    lg, s = ledger(stock=2)
    assert lg.reserve(s, "a", 1, T0, False) == OK
    assert lg.reserve(s, "b", 1, T0, False) == OK
    # both units in flight: not sold out yet, the batch may fail
    assert lg.reserve(s, "c", 1, T0, False) == WAIT
    lg.settle(s, "a", 1, 1)
    lg.settle(s, "b", 1, 0)  # e.g. another worker took it first
    lg.observe(s, 1, 2)
    assert lg.reserve(s, "c", 1, T0, False) == OK
    lg.settle(s, "c", 1, 1)
    lg.observe(s, 2, 2)
    assert lg.reserve(s, "d", 1, T0, False) == SOLD_OUT
    assert lg.left(s) == 0
    lg.verify()


def test_qty_above_left_with_nothing_in_flight_is_sold_out():
    lg, s = ledger(stock=3, limit=5)
    lg.observe(s, 2, 3)
    assert lg.reserve(s, "a", 2, T0, False) == SOLD_OUT
    assert lg.reserve(s, "a", 1, T0, False) == OK


def test_user_limit_known_locally():
    lg, s = ledger(stock=10, limit=2)
    assert lg.reserve(s, "a", 2, T0, False) == OK
    lg.settle(s, "a", 2, 2)
    lg.observe(s, 2, 10)
    assert lg.reserve(s, "a", 1, T0, False) == LIMIT_EXCEEDED
    assert lg.reserve(s, "a", 3, T0, False) == LIMIT_EXCEEDED
    # an Idempotency-Key replay must reach Redis, which returns the original order:
    # it goes as a probe that holds no units
    assert lg.reserve(s, "a", 1, T0, True) == PROBE
    assert lg.state(s)[2] == 0
    lg.settle(s, "a", 0, 0)
    lg.verify()


def test_a_lowered_limit_leaves_earlier_buyers_at_it():
    # e.g. the event re-created after Redis lost its data, before a refresh tick
    lg, s = ledger(stock=10, limit=2)
    assert lg.reserve(s, "a", 2, T0, False) == OK
    lg.settle(s, "a", 2, 2)
    lg.configure(s, 10, 1, T0, T1, False)  # no error, in any build
    lg.verify()  # I3 holds against the highest limit the buyer table has seen
    assert lg.reserve(s, "a", 1, T0, False) == LIMIT_EXCEEDED
    assert lg.reserve(s, "b", 1, T0, False) == OK
    lg.settle(s, "b", 1, 1)
    lg.forget_buyers(s)  # from here on the new limit is the only one
    assert lg.reserve(s, "a", 1, T0, False) == OK
    lg.settle(s, "a", 1, 1)
    lg.verify()


@pytest.mark.parametrize("stock,shards", [
    (0, 1), (1, 1), (BUYER_SHARD, 1), (BUYER_SHARD + 1, 2), (10 * BUYER_SHARD, 16),
    (10**12, 4096),
])
def test_buyer_table_is_split_by_stock(stock, shards):
    lg, s = ledger(stock=stock)
    assert lg.buyer_shards(s) == shards


def test_a_sharded_buyer_table_knows_every_buyer():
    # 20,000 buyers over 8 shards: each is refused a second unit from memory, the
    # table reads back whole, and forget_buyers empties every shard
    lg, s = ledger(stock=8 * BUYER_SHARD, limit=1)
    assert lg.buyer_shards(s) == 8
    users = [f"u{i}" for i in range(20_000)]
    for u in users:
        assert lg.reserve(s, u, 1, T0, False) == OK
        lg.settle(s, u, 1, 1)
    lg.observe(s, len(users), 8 * BUYER_SHARD)
    lg.verify()  # also: every buyer sits in the shard of its hash, reachable
    assert lg.buyer_count(s) == len(users)
    assert all(lg.bought(s, u) == 1 for u in users)
    assert lg.bought(s, "someone-else") == 0
    assert all(lg.reserve(s, u, 1, T0, False) == LIMIT_EXCEEDED for u in users)
    lg.forget_buyers(s)
    assert lg.buyer_count(s) == 0 and lg.buyer_shards(s) == 8
    assert lg.bought(s, users[0]) == 0
    assert lg.reserve(s, users[0], 1, T0, False) == OK


def test_a_buyer_table_shard_grows_and_keeps_every_count():
    # one shard (stock <= BUYER_SHARD) grows from 8 slots to thousands while users
    # buy 1 to 3 units each, in several purchases
    lg, s = ledger(stock=BUYER_SHARD, limit=3)
    assert lg.buyer_shards(s) == 1
    want = {}
    for i in range(3000):
        u = f"buyer-{i}"
        for _ in range(i % 3 + 1):
            assert lg.reserve(s, u, 1, T0, False) == OK
            lg.settle(s, u, 1, 1)
            want[u] = want.get(u, 0) + 1
        if i % 500 == 0:
            lg.verify()
    lg.verify()
    assert lg.buyer_count(s) == len(want)
    assert all(lg.bought(s, u) == n for u, n in want.items())
    assert all(lg.check(s, u, 1, T0) == (OK if n < 3 else LIMIT_EXCEEDED) for u, n in want.items())


def test_idempotent_requests_probe_where_others_are_refused():
    lg, s = ledger(stock=1, limit=1)
    assert lg.reserve(s, "a", 1, T0 - 1, True) == PROBE  # not started
    assert lg.reserve(s, "a", 1, T1, True) == PROBE  # ended
    assert lg.reserve(s, "a", 1, T0, True) == OK  # a normal admission holds its unit
    assert lg.reserve(s, "b", 1, T0, True) == PROBE  # would wait
    lg.settle(s, "a", 1, 1)
    lg.observe(s, 1, 1)
    assert lg.reserve(s, "a", 1, T0, True) == PROBE  # sold out: maybe a's replay
    assert lg.reserve(s, "c", 1, T0, False) == SOLD_OUT
    assert lg.state(s)[2] == 0
    lg.verify()


def test_own_units_in_flight_make_the_same_user_wait():
    lg, s = ledger(stock=10, limit=1)
    assert lg.reserve(s, "a", 1, T0, False) == OK
    assert lg.reserve(s, "a", 1, T0, False) == WAIT  # may become limit_exceeded
    assert lg.reserve(s, "b", 1, T0, False) == OK  # others are not held up
    lg.settle(s, "a", 1, 0)
    assert lg.reserve(s, "a", 1, T0, False) == OK


def test_batches_in_arrival_order_and_cleared():
    lg = Ledger()
    a = lg.add_sku(5, 0, 1, T0, T1)
    b = lg.add_sku(5, 0, 1, T0, T1)
    lg.push(b, "x")
    lg.push(a, "y")
    lg.push(b, "z")
    assert lg.take_batches() == [(b, ["x", "z"]), (a, ["y"])]
    assert lg.take_batches() == []
    assert lg.pending_count(a) == 0


def test_forget_buyers_after_units_return():
    lg, s = ledger(stock=5, limit=1)
    lg.reserve(s, "a", 1, T0, False)
    lg.settle(s, "a", 1, 1)
    assert lg.reserve(s, "a", 1, T0, False) == LIMIT_EXCEEDED
    lg.forget_buyers(s)
    assert lg.reserve(s, "a", 1, T0, False) == OK


def test_bad_arguments():
    lg = Ledger()
    with pytest.raises(ValueError):
        lg.add_sku(5, 0, 0, T0, T1)
    with pytest.raises(ValueError):
        lg.add_sku(-1, 0, 1, T0, T1)
    s = lg.add_sku(5, 0, 1, T0, T1)
    with pytest.raises(IndexError):
        lg.reserve(s + 1, "u", 1, T0, False)
    with pytest.raises(ValueError):
        lg.reserve(s, "u", 0, T0, False)


class ModelRedis:
    """The commit script's decisions for one SKU (without window / idempotency)."""

    def __init__(self, stock, limit):
        self.stock, self.limit, self.sold, self.buyers = stock, limit, 0, {}

    def commit(self, batch):
        out = []
        for user, qty in batch:
            if self.buyers.get(user, 0) + qty > self.limit:
                out.append(False)
            elif self.sold + qty > self.stock:
                out.append(False)
            else:
                self.sold += qty
                self.buyers[user] = self.buyers.get(user, 0) + qty
                out.append(True)
        return out


@pytest.mark.parametrize("seed", range(20))
def test_random_workers_never_oversell_nor_undersell(seed):
    """Several workers' ledgers against one model Redis: nothing oversold, no user over
    the limit, no SOLD_OUT while a unit is still open, and every unit sold at the end."""
    rnd = random.Random(seed)
    stock, limit = rnd.randint(1, 12), rnd.randint(1, 3)
    redis = ModelRedis(stock, limit)
    workers = []
    for _ in range(rnd.randint(1, 4)):
        lg = Ledger()
        workers.append((lg, lg.add_sku(stock, 0, limit, T0, T1), []))
    users = [f"u{i}" for i in range(stock * 3)]
    for _step in range(400):
        lg, s, inflight = rnd.choice(workers)
        action = rnd.random()
        if action < 0.6:
            user, qty = rnd.choice(users), rnd.randint(1, limit)
            code = lg.reserve(s, user, qty, T0, False)
            if code == OK:
                lg.push(s, (user, qty))
            elif code == SOLD_OUT:
                # sold only grows here, so the ledger's view is never ahead of Redis:
                # SOLD_OUT must mean Redis really has fewer than qty units open
                assert lg.left(s) < qty, "sold_out while enough units were open"
                assert redis.stock - redis.sold < qty, "sold_out while Redis had units"
        elif action < 0.85:
            for _, batch in lg.take_batches():
                inflight.append(batch)
        elif inflight:
            batch = inflight.pop(0)
            for (user, qty), sold in zip(batch, redis.commit(batch), strict=True):
                lg.settle(s, user, qty, qty if sold else 0)
            lg.observe(s, redis.sold, redis.stock)
        lg.verify()
        assert redis.sold <= redis.stock
        assert all(v <= limit for v in redis.buyers.values())
    # drain everything in flight, then keep buying with fresh users until sold out
    for lg, s, inflight in workers:
        for batch in inflight + [b for _, b in lg.take_batches()]:
            for (user, qty), sold in zip(batch, redis.commit(batch), strict=True):
                lg.settle(s, user, qty, qty if sold else 0)
        lg.observe(s, redis.sold, redis.stock)
        inflight.clear()
    n = 0
    while redis.sold < redis.stock:
        lg, s, _ = workers[n % len(workers)]
        lg.observe(s, redis.sold, redis.stock)
        user = f"late{n}"
        assert lg.reserve(s, user, 1, T0, False) == OK, "a unit is open but the ledger refused"
        lg.settle(s, user, 1, 1 if redis.commit([(user, 1)])[0] else 0)
        n += 1
    for lg, s, _ in workers:
        lg.observe(s, redis.sold, redis.stock)
        assert lg.reserve(s, "someone", 1, T0, False) == SOLD_OUT
        assert lg.state(s)[2] == 0
        lg.verify()
    assert redis.sold == redis.stock


def test_check_changes_nothing():
    lg, s = ledger(stock=1, limit=1)
    assert lg.check(s, "a", 1, T0) == OK
    assert lg.check(s, "a", 1, T0) == OK
    assert lg.state(s)[2] == 0
    assert lg.reserve(s, "a", 1, T0, False) == OK
    assert lg.check(s, "b", 1, T0) == WAIT
    assert lg.check(s, "a", 1, T0) == WAIT
    assert lg.check(s, "a", 1, T0 - 1) == NOT_STARTED


def test_units_that_came_back_clear_the_buyer_table_whoever_reports_them():
    """Fewer units sold than Redis last said (a cancel, an expiry, lost data): the
    local buyer table may be too strict, whether a refresh or a commit reply says so."""
    lg, s = ledger(stock=5, limit=1)
    assert lg.reserve(s, "u1", 1, T0, False) == OK
    lg.settle(s, "u1", 1, 1)
    lg.observe(s, 1, 5)  # the commit reply: u1 holds 1
    assert lg.reserve(s, "u1", 1, T0, False) == LIMIT_EXCEEDED
    # Redis gave u1's unit back; u2's commit reply is the first to say sold 0 + 1
    assert lg.reserve(s, "u2", 1, T0, False) == OK
    lg.settle(s, "u2", 1, 1)
    lg.observe(s, 1, 5)  # not fewer than before: the buyer table stands
    assert lg.reserve(s, "u1", 1, T0, False) == LIMIT_EXCEEDED
    lg.observe(s, 0, 5)  # fewer: dropped
    assert lg.bought(s, "u1") == 0 and lg.bought(s, "u2") == 0
    assert lg.reserve(s, "u1", 1, T0, False) == OK
    lg.verify()
