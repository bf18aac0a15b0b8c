"""The lifecycle scenario's reading of a SKU's stream: which orders' units were sold
again, and when (bench/lifecycle.py), on a stream written by hand."""

from bench.lifecycle import pays, pct, resales

P = "fg:{e:s}:"


class FakeRedis:
    """XRANGE and HMGET of one stream and one hash of records (decoded replies)."""

    def __init__(self, entries, records):
        self.entries = entries
        self.records = records

    def xrange(self, key, start, end, count):
        assert key == P + "orders" and start == "-"
        return self.entries

    def hmget(self, key, ids):
        assert key == P + "order_by_id"
        return [self.records.get(i) for i in ids]


def entry(n, kind, ts, *orders):
    fields = {"type": kind, "ts": str(ts)}
    fields.update({oid: f"u{oid}|{qty}|100" for oid, qty in orders})
    return (f"{ts}-{n}", fields)


def test_resales_match_returned_units_oldest_first():
    # stock 2: a and b take it; a expires at 3000 and b is cancelled at 3500; d and e
    # take the returned units: a's at 3010 (10 ms), b's at 3520
    entries = [
        entry(0, "created", 1000, ("a", 1), ("b", 1)),
        entry(2, "expired", 3000, ("a", 1)),
        entry(3, "created", 3010, ("d", 1)),
        entry(4, "paid", 3011, ("d", 1)),
        entry(5, "cancelled", 3500, ("b", 1)),
        entry(6, "created", 3520, ("e", 1)),
        entry(7, "paid", 3600, ("e", 1)),
    ]
    records = {"a": "expired|ua|1|100|1000|2500|updated_ms=3000"}
    got = resales(FakeRedis(entries, records), P, stock=2, starts_at_ms=900)
    assert got["orders_created"] == 4 and got["created_entries"] == 3
    assert got["orders_expired"] == 1 and got["orders_cancelled"] == 1
    assert got["orders_paid"] == 2
    assert got["resale_ms"] == [10]  # the expired order's; the cancelled one is not counted
    assert got["expired_resold"] == 1
    assert got["expiry_lag_ms"] == [500]  # expired at 3000, due at 2500
    assert got["first_sold_out_ms"] == 100  # both units held at 1000
    assert got["sold_out_for_good_ms"] == 2700  # the second unit paid at 3600


def test_fresh_stock_goes_first_and_unsold_returns_are_not_resold():
    entries = [
        entry(0, "created", 1000, ("a", 1)),
        entry(1, "expired", 3000, ("a", 1)),
        entry(2, "created", 3100, ("b", 1)),  # the never-sold unit
    ]
    got = resales(FakeRedis(entries, {}), P, stock=2, starts_at_ms=0)
    assert got["resale_ms"] == [] and got["expired_resold"] == 0
    assert got["first_sold_out_ms"] is None and got["sold_out_for_good_ms"] is None


def test_pay_share_and_percentiles():
    share = sum(pays(f"e.s.{i}", 60) for i in range(10_000)) / 10_000
    assert 0.57 < share < 0.63
    assert pays("e.s.x", 100) and not pays("e.s.x", 0)
    assert pct([5, 1, 3], 50) == 3 and pct([], 99) is None
