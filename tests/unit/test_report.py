"""The report's parts without a gateway: its words (durations, money, the summary in
both languages), the report built from given figures, the page and the share image of
the edge cases a load rarely shows (nothing sold yet, a goal of 0, a long name)."""

from __future__ import annotations

import struct

import pytest

from flashgate.core.events import parse_event
from flashgate.report import build, page, share, words


@pytest.mark.parametrize("ms, zh, en", [
    (0, "0.0秒", "0.0 s"), (104, "0.1秒", "0.1 s"), (9_949, "9.9秒", "9.9 s"),
    (12_400, "12秒", "12 s"), (60_000, "1分钟", "1 min"), (192_000, "3分12秒", "3 min 12 s"),
    (3_600_000, "1小时", "1 h"), (3_725_000, "1小时2分", "1 h 2 min"),
])
def test_durations(ms, zh, en):
    assert (words.duration(ms, "zh"), words.duration(ms, "en")) == (zh, en)


def test_money_and_numbers():
    assert words.money(0) == "¥0.00" and words.money(123_456_789) == "¥1,234,567.89"
    assert words.money(-5) == "-¥0.05"
    assert words.number(1234567) == "1,234,567" and words.percent(0.0123) == "1.2%"


def event(**extra):
    body = {"name": "Noon <sale>", "starts_at_ms": 1_000_000, "ends_at_ms": 1_180_000,
            "skus": [{"id": "tea", "name": "Tea", "price": 990, "stock": 500}], **extra}
    return parse_event("noon", body)


def stats(**over):
    s = {"as_of_ms": 1_200_000, "lag_ms": 500, "pv": 0, "uv": 0, "participants": 0,
         "buyers": 0, "attempts": 0, "orders": 0, "units_sold": 0, "units_paid": 0,
         "revenue": 0, "revenue_paid": 0, "rejections": {"sold_out": 0},
         "conversion": 0.0, "sold_out_ms": None,
         "latency_ms": {"p50": None, "p99": None, "p999": None},
         "skus": [{"id": "tea", "stock": 500, "sold": 0, "left": 500, "orders": 0,
                   "revenue": 0, "units_paid": 0, "revenue_paid": 0, "units_returned": 0,
                   "added": 0, "sold_out_at_ms": None, "sold_out_ms": None}],
         "milestones": [], "registered": 0}
    s.update(over)
    return s


def order(i: int, created_ms: int, qty: int = 1, status: str = "reserved") -> dict:
    return {"order_id": f"noon.tea.{i}", "sku": "tea", "user_id": f"u{i % 7}", "qty": qty,
            "amount": 990 * qty, "status": status, "created_ms": created_ms}


def test_nothing_sold_yet_renders_and_draws():
    ev = event(goals={"units": 0, "buyers": 10})
    rep = build.build(ev, "ended", stats(), [], [])
    assert rep["final"] and rep["per_minute"] == [
        {"from_ms": 1_000_000 + 60_000 * i, "to_ms": 1_060_000 + 60_000 * i, "orders": 0,
         "units": 0} for i in range(3)]
    assert rep["per_second"] == {"from_ms": None, "step_ms": 1000, "attempts": [],
                                 "orders": []}
    assert rep["goals"] == {
        "units": {"target": 0, "actual": 0, "attainment": None, "reached": True},
        "buyers": {"target": 10, "actual": 0, "attainment": 0.0, "reached": False}}
    assert rep["summary"] == {"zh": "500件商品售出0件，0人抢到",
                              "en": "0 of 500 units sold, 0 buyers"}
    for lang in ("zh", "en"):
        html = page.render(rep, lang)
        assert "Noon &lt;sale&gt;" in html and "<sale>" not in html
    png, _ = share.draw(rep, "en")
    assert struct.unpack(">II", png[16:24]) == (1080, 1920)


def test_a_sell_out_built_from_orders_and_series():
    ev = event(milestones=[{"sold": 100, "reward": "tote"}])
    orders = ([order(i, 1_000_500) for i in range(300)]
              + [order(300 + i, 1_061_000, 2, "paid") for i in range(100)])
    points = [{"ts_ms": 1_000_000 + 1000 * i, "attempts": a, "orders": 0, "units": 0,
               "rejections": {}, "left": {}, "subscribers": 0}
              for i, a in enumerate([900, 4000, 120, 0, 0, 3] + [0] * 174)]
    st = stats(orders=400, units_sold=500, uv=2000, sold_out_ms=192_000,
               milestones=[{"sold": 100, "reward": "tote", "reached": True,
                            "reached_ms": 1_000_700}])
    rep = build.build(ev, "ended", st, orders, points)
    assert rep["buyers"] == 7 and rep["paid_orders"] == 100
    assert rep["per_minute"][:2] == [
        {"from_ms": 1_000_000, "to_ms": 1_060_000, "orders": 300, "units": 300},
        {"from_ms": 1_060_000, "to_ms": 1_120_000, "orders": 100, "units": 200}]
    assert rep["peak_rps"] == {"attempts": 4000, "at_ms": 1_001_000}
    assert rep["per_second"]["attempts"] == [900, 4000, 120, 0, 0, 3] + [0] * 5
    assert rep["milestones"][0]["after_ms"] == 700
    assert rep["summary"]["en"] == "500 units sold out in 3 min 12 s, 7 buyers"
    assert rep["summary"]["zh"] == "500件商品3分12秒售罄，7人抢到"
    html = page.render(rep, "zh")
    assert "峰值 4,000/s" in html and 'data-k="sold_out_ms">3分12秒<' in html


def test_a_long_name_is_cut_in_the_image():
    ev = event()
    ev.name = "秒杀" * 120
    rep = build.build(ev, "live", stats(as_of_ms=1_010_000), [], [])
    assert not rep["final"]
    png, _ = share.draw(rep, "zh")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sale_of_months_is_counted_in_bounded_buckets():
    """per_minute stays within 720 buckets of whole minutes (a sale defined over months
    once made the report build and draw millions of minutes)."""
    ev = event(ends_at_ms=1_000_000 + 90 * 86_400_000)
    orders = [order(0, 1_000_500), order(1, 1_000_000 + 45 * 86_400_000, 3)]
    rep = build.build(ev, "ended", stats(as_of_ms=1_000_000 + 91 * 86_400_000), orders, [])
    mins = rep["per_minute"]
    step = mins[0]["to_ms"] - mins[0]["from_ms"]
    assert len(mins) <= 720 and step % 60_000 == 0 and step == 180 * 60_000
    assert mins[-1]["to_ms"] >= ev.ends_at_ms and sum(m["units"] for m in mins) == 4
    assert all(b["from_ms"] == a["to_ms"] for a, b in zip(mins, mins[1:], strict=False))
    html = page.render(rep, "en")
    assert html.count("<rect") < 4 * 720 + 200
