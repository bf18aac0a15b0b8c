"""The battle report (``GET /api/v1/admin/events/{id}/report``, its page and ``flashgate
report``) against a scripted load whose figures are known: one SKU sold out, another
partly sold across a price tier, milestones reached and not, goals, some orders paid, a
refusal of each kind the load provokes. The report equals the stats and the orders
export; it says "in progress" during the sale and is final after the end; the page
carries the numbers, escapes every name, speaks the language asked for; the command
writes the page, the JSON and a phone-sized PNG."""

from __future__ import annotations

import gzip
import json
import re
import struct
import time
from html import escape
from http.client import HTTPConnection

import pytest

from flashgate.report import share
from flashgate.report.words import money, number
from tests.integration.test_cli import clean_env, flashgate
from tests.integration.test_cli_client import free_port
from tests.support import ADMIN, check_invariants, event_body, new_id, now_ms, wait_for

NAME = '<script>alert("x")</script> 午间秒杀 & Co'
SKU1 = "Tea <img src=x onerror=alert(1)>"
REWARD = "<b>tote</b> bag"
WINDOW_MS = 3000  # the sale ends this long after the load begins


def get(gw, path: str, headers: dict | None = None, admin: bool = True):
    """``(status, headers, raw body)`` of a GET."""
    conn = HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        h = {"Authorization": f"Bearer {ADMIN}"} if admin else {}
        conn.request("GET", path, headers={**h, **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def report(gw, ev: str) -> dict:
    status, data, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/report")
    assert status == 200, data
    return data


def stats(gw, ev: str) -> dict:
    status, data, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")
    assert status == 200, data
    return data


@pytest.fixture(scope="module")
def sale(gw, r):
    """The load: s0 (stock 5, limit 1) sells out to a0..a4, a5 and a6 are refused
    sold_out; s1 (stock 10, limit 2, its first 2 units at 50, then 100) sells 4 units to
    b0 (1), b1 (2, across the tier), b2 (1), and b1's third is refused limit_exceeded;
    three orders are paid; after the end one buy is refused ended. Milestones at 3 and
    8 units are reached, 100 not; goals: 12 units, 1,000.00 revenue, 5 buyers."""
    ev = new_id("rep")
    t = now_ms()
    body = event_body(stock=(5, 10), limits=[1, 2], name=NAME, ends=t + WINDOW_MS,
                      milestones=[{"sold": 3, "reward": REWARD}, {"sold": 8, "reward": "cup"},
                                  {"sold": 100, "reward": "car"}],
                      goals={"units": 12, "revenue": 100_000, "buyers": 5})
    body["skus"][1].update(name=SKU1, tiers=[{"units": 2, "price": 50}])
    gw.put_event(ev, body)
    for i in range(6):  # page views by two visitors
        assert gw.request("GET", f"/api/v1/events/{ev}", headers=gw.who(f"view{i % 2}"))[0] == 200
    acked, refused = [], []
    for user, sku, qty in [*[(f"a{i}", "s0", 1) for i in range(7)],
                           ("b0", "s1", 1), ("b1", "s1", 2), ("b2", "s1", 1), ("b1", "s1", 1)]:
        status, data, _ = gw.buy(ev, sku, user, qty)
        (acked if status == 200 else refused).append(data)
    assert len(acked) == 8, refused
    assert sorted(x["error"] for x in refused) == ["limit_exceeded", "sold_out", "sold_out"]
    assert [o["amount"] for o in acked[5:]] == [50, 150, 100]
    paid = [acked[0], acked[1], acked[6]]
    for o in paid:
        status, data, _ = gw.admin("POST", f"/api/v1/admin/orders/{o['order_id']}/paid")
        assert status == 200 and data["status"] == "paid", data
    during = report(gw, ev)
    assert now_ms() < body["ends_at_ms"], "the load took longer than the sale's window"
    time.sleep(max(0.0, (body["ends_at_ms"] - now_ms()) / 1000) + 0.05)
    status, data, _ = gw.buy(ev, "s1", "late")
    assert (status, data["error"]) == (409, "ended")
    # every count flushed (the other worker's within lag_ms) and the report final
    wait_for(lambda: (s := stats(gw, ev))["attempts"] == 12 and s["rejections"]["ended"] == 1,
             "every count flushed", timeout=3)
    final = wait_for(lambda: (x := report(gw, ev))["final"] and x, "the final report",
                     timeout=3)
    check_invariants(r, gw, ev, body, acked)
    return {"ev": ev, "body": body, "acked": acked, "paid": paid, "during": during,
            "final": final}


def test_in_progress_during_the_sale_then_final(sale):
    during, final = sale["during"], sale["final"]
    assert during["final"] is False and during["state"] == "live"
    assert during["summary"]["en"].startswith("In progress: ")
    assert during["summary"]["zh"].startswith("进行中：")
    assert during["as_of_ms"] < sale["body"]["ends_at_ms"]
    assert final["final"] is True and final["state"] == "ended"
    assert final["as_of_ms"] >= sale["body"]["ends_at_ms"] + final["lag_ms"]
    assert final["summary"] == {"zh": "15件商品售出9件，8人抢到", "en": "9 of 15 units sold, 8 buyers"}


def test_the_figures_of_the_load(sale):
    rep = sale["final"]
    body = sale["body"]
    assert (rep["event_id"], rep["name"]) == (sale["ev"], NAME)
    assert (rep["starts_at_ms"], rep["ends_at_ms"]) == (body["starts_at_ms"], body["ends_at_ms"])
    assert (rep["stock"], rep["units_sold"], rep["orders"], rep["buyers"]) == (15, 9, 8, 8)
    assert (rep["paid_orders"], rep["units_paid"]) == (3, 4)
    assert rep["revenue"] == 5 * 100 + 50 + 150 + 100
    assert rep["revenue_paid"] == 100 + 100 + 150
    assert rep["attempts"] == 12
    assert {k: n for k, n in rep["rejections"].items() if n} == {
        "sold_out": 2, "limit_exceeded": 1, "ended": 1}
    s0, s1 = rep["skus"]
    assert (s0["id"], s0["sold"], s0["left"], s0["paid_orders"]) == ("s0", 5, 0, 2)
    assert s0["sold_out_ms"] == s0["sold_out_at_ms"] - body["starts_at_ms"] >= 0
    assert (s1["id"], s1["name"], s1["sold"], s1["left"]) == ("s1", SKU1, 4, 6)
    assert s1["sold_out_ms"] is None and rep["sold_out_ms"] is None
    assert s1["price"] == 100 and s1["paid_orders"] == 1
    # the funnel: page views, visitors, who tried, orders, paid
    assert [f["step"] for f in rep["funnel"]] == ["pv", "uv", "participants", "orders", "paid"]
    assert [f["count"] for f in rep["funnel"]][3:] == [8, 3]
    assert rep["funnel"][2]["count"] == rep["participants"] == 11
    # the rush: its peak is a second of the sale, at most every attempt
    peak = rep["peak_rps"]
    assert 1 <= peak["attempts"] <= 12
    assert body["starts_at_ms"] // 1000 * 1000 <= peak["at_ms"] <= body["ends_at_ms"]
    ps = rep["per_second"]
    assert ps["step_ms"] == 1000 and ps["from_ms"] == body["starts_at_ms"] // 1000 * 1000
    assert len(ps["attempts"]) == len(ps["orders"])
    assert sum(ps["orders"]) == 8 and max(ps["attempts"]) == peak["attempts"]
    assert sum(ps["attempts"]) in (11, 12)  # (the refusal after the end: in the end's second?)
    assert ps["attempts"][(peak["at_ms"] - ps["from_ms"]) // 1000] == peak["attempts"]
    # milestones: when each was reached, from the start
    ms = {m["sold"]: m for m in rep["milestones"]}
    assert ms[3]["reached"] and ms[8]["reached"] and not ms[100]["reached"]
    assert ms[3]["reward"] == REWARD
    for m in (ms[3], ms[8]):
        assert m["after_ms"] == m["reached_ms"] - body["starts_at_ms"] >= 0
    assert ms[3]["reached_ms"] <= ms[8]["reached_ms"]
    assert ms[100]["reached_ms"] is None and ms[100]["after_ms"] is None
    # the goals against what happened
    assert rep["goals"] == {
        "units": {"target": 12, "actual": 9, "attainment": 0.75, "reached": False},
        "revenue": {"target": 100_000, "actual": 800, "attainment": 0.008, "reached": False},
        "buyers": {"target": 5, "actual": 8, "attainment": 1.6, "reached": True}}
    assert rep["conversion"] == min(1.0, round(8 / rep["uv"], 4))


def test_the_report_equals_the_stats(sale, gw, r):
    ev = sale["ev"]
    rep, st = report(gw, ev), stats(gw, ev)
    for k in ("pv", "uv", "participants", "attempts", "orders", "units_sold", "units_paid",
              "revenue", "revenue_paid", "rejections", "sold_out_ms", "registered",
              "latency_ms", "lag_ms"):
        assert rep[k] == st[k], k
    assert abs(rep["buyers"] - st["buyers"]) <= 1  # (the stats' is an estimate)
    assert [{k: v for k, v in s.items() if k not in ("name", "price", "paid_orders")}
            for s in rep["skus"]] == st["skus"]
    assert [{k: v for k, v in m.items() if k != "after_ms"} for m in rep["milestones"]] \
        == st["milestones"]
    assert rep["stock"] == sum(s["stock"] for s in st["skus"])
    assert rep["funnel"][:4] == [{"step": k, "count": st[k]}
                                 for k in ("pv", "uv", "participants", "orders")]
    check_invariants(r, gw, ev, sale["body"], sale["acked"])


def test_the_report_equals_the_orders_export(sale, gw, r):
    ev, body = sale["ev"], sale["body"]
    rep = report(gw, ev)
    orders = gw.orders_export(ev)
    live = [o for o in orders if o["status"] in ("reserved", "paid")]
    paid = [o for o in orders if o["status"] == "paid"]
    assert {o["order_id"] for o in paid} == {o["order_id"] for o in sale["paid"]}
    assert rep["orders"] == len(orders)
    assert rep["paid_orders"] == len(paid) == rep["funnel"][4]["count"]
    assert rep["buyers"] == len({o["user_id"] for o in orders})
    assert rep["units_sold"] == sum(o["qty"] for o in live)
    assert rep["units_paid"] == sum(o["qty"] for o in paid)
    assert rep["revenue"] == sum(o["amount"] for o in live)
    assert rep["revenue_paid"] == sum(o["amount"] for o in paid)
    for s in rep["skus"]:
        mine = [o for o in orders if o["sku"] == s["id"]]
        assert (s["orders"], s["paid_orders"]) == (
            len(mine), sum(o["status"] == "paid" for o in mine))
        assert s["revenue"] == sum(o["amount"] for o in mine if o in live)
    # orders and units per minute, by the orders' created_ms
    start = body["starts_at_ms"]
    want: dict[int, list[int]] = {}
    for o in orders:
        m = want.setdefault((o["created_ms"] - start) // 60_000, [0, 0])
        m[0] += 1
        m[1] += o["qty"]
    got = {(m["from_ms"] - start) // 60_000: [m["orders"], m["units"]]
           for m in rep["per_minute"] if m["orders"]}
    assert got == want
    assert [m["from_ms"] for m in rep["per_minute"]] == [start + 60_000 * i
                                                         for i in range(len(rep["per_minute"]))]
    assert len(rep["per_minute"]) == -(-(body["ends_at_ms"] - start) // 60_000)
    check_invariants(r, gw, ev, body, sale["acked"])


def _kpi(html: str, key: str) -> str:
    m = re.search(rf'data-k="{key}">([^<]*)<', html)
    assert m, key
    return m.group(1)


def test_the_page_has_the_numbers_and_escapes_every_name(sale, gw):
    ev = sale["ev"]
    rep = report(gw, ev)
    status, headers, raw = get(gw, f"/api/v1/admin/events/{ev}/report?format=html&lang=en")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script may run
    assert headers["Cache-Control"] == "no-store"
    html = raw.decode()
    assert html.startswith("<!doctype html>") and '<html lang="en">' in html
    # self-contained: no script, nothing from anywhere, the charts inline
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    assert html.count("<svg") >= 4 and "<!--#include" not in html
    # operator-given strings escaped, never raw
    for raw_text in (NAME, SKU1, REWARD):
        assert raw_text not in html and escape(raw_text) in html
    assert "<img" not in html and "<b>tote" not in html
    # the numbers of the report
    assert _kpi(html, "orders") == "8" and _kpi(html, "buyers") == "8"
    assert _kpi(html, "units_sold") == "9 / 15"
    assert _kpi(html, "revenue") == escape(money(800))
    assert _kpi(html, "revenue_paid") == escape(money(350))
    assert _kpi(html, "peak_rps") == number(rep["peak_rps"]["attempts"])
    assert _kpi(html, "sold_out_ms") == "Not sold out"
    assert escape(rep["summary"]["en"]) in html and "Final report" in html
    for f in rep["funnel"]:
        assert re.search(rf'data-step="{f["step"]}">{number(f["count"])}\b', html), f
    row = re.search(r'<tr data-sku="s0">(.*?)</tr>', html).group(1)
    assert "<td>5</td><td>5</td><td>0</td><td>5</td><td>2</td>" in row  # stock sold left orders paid
    assert 'data-goal="buyers"' in html and "160.0%" in html
    assert "not reached" in html  # milestone 100
    # gzipped when the client takes it: the same page
    status, headers, gz = get(gw, f"/api/v1/admin/events/{ev}/report?format=html&lang=en",
                              {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    page = gzip.decompress(gz).decode()
    assert page.replace(re.search(r"as of: [^<]*", page).group(0), "") == \
        html.replace(re.search(r"as of: [^<]*", html).group(0), "")


@pytest.mark.parametrize("query, header, lang", [
    ("&lang=zh", "en-US,en;q=0.9", "zh"), ("&lang=en", "zh-CN", "en"),
    ("", "en-US,en;q=0.9", "en"), ("", "zh-CN,zh;q=0.9", "zh"), ("", None, "zh"),
    ("&lang=fr", "en", "en"),
])
def test_the_page_speaks_the_language_asked_for(sale, gw, query, header, lang):
    ev = sale["ev"]
    status, _, raw = get(gw, f"/api/v1/admin/events/{ev}/report?format=html{query}",
                         {"Accept-Language": header} if header else None)
    html = raw.decode()
    assert status == 200 and f'<html lang="{lang}">' in html
    rep = sale["final"]
    if lang == "zh":
        assert escape(rep["summary"]["zh"]) in html and "最终战报" in html and "未售罄" in html
    else:
        assert escape(rep["summary"]["en"]) in html and "Final report" in html


def test_unknown_event_bad_format_and_no_token(gw):
    status, headers, raw = get(gw, "/api/v1/admin/events/no-such-sale/report")
    assert status == 404 and json.loads(raw)["error"] == "not_found"
    status, headers, raw = get(gw, "/api/v1/admin/events/no-such-sale/report?format=html")
    assert status == 404 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<h1>404</h1>" in raw
    ev = new_id("repx")
    gw.put_event(ev, event_body(stock=(1,)))
    status, _, raw = get(gw, f"/api/v1/admin/events/{ev}/report?format=pdf")
    assert status == 400 and json.loads(raw)["error"] == "bad_request"
    for q in ("", "?format=html"):
        status, _, raw = get(gw, f"/api/v1/admin/events/{ev}/report{q}", admin=False)
        assert status == 401 and json.loads(raw)["error"] == "unauthenticated"


def test_before_the_start_and_a_sell_out(gw, r):
    """Before the start: nothing yet, in words; a sale that sells out: the time it took
    in the summary, overall and per SKU as the stats have it."""
    t = now_ms()
    early = new_id("repe")
    gw.put_event(early, event_body(stock=(4,), starts=t + 600_000, ends=t + 700_000))
    rep = report(gw, early)
    assert (rep["state"], rep["final"], rep["per_minute"], rep["per_second"]["attempts"]) == (
        "scheduled", False, [], [])
    assert rep["summary"] == {"en": "The sale has not started: 4 units on offer",
                              "zh": "活动尚未开始，共4件商品"}
    assert rep["peak_rps"] == {"attempts": 0, "at_ms": None}
    ev = new_id("reps")
    body = event_body(stock=(2, 1))
    gw.put_event(ev, body)
    acked = []
    for user, sku in (("u0", "s0"), ("u1", "s0"), ("u2", "s1")):
        status, data, _ = gw.buy(ev, sku, user)
        assert status == 200, data
        acked.append(data)
    gw.wait_state(ev, "sold_out")  # (every worker's view: the state is the public view's)
    rep, st = report(gw, ev), stats(gw, ev)
    assert rep["sold_out_ms"] == st["sold_out_ms"] == max(s["sold_out_ms"] for s in st["skus"])
    assert rep["state"] == "sold_out"
    from flashgate.report.words import duration

    assert rep["summary"]["en"] == (f"In progress: 3 units sold out in "
                                    f"{duration(rep['sold_out_ms'], 'en')}, 3 buyers")
    assert rep["summary"]["zh"] == (f"进行中：3件商品{duration(rep['sold_out_ms'], 'zh')}"
                                    f"售罄，3人抢到")
    check_invariants(r, gw, ev, body, acked)


# -- flashgate report -------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_command_writes_the_page_the_json_and_the_share_image(sale, gw, tmp_path):
    ev = sale["ev"]
    url = f"http://127.0.0.1:{gw.port}"
    out = tmp_path / "out" / "deeper"
    done = flashgate("report", ev, "--out", str(out), "--url", url,
                     env=clean_env(FLASHGATE_ADMIN_TOKEN=ADMIN))
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{ev}-report.html", f"{ev}-report.json", f"{ev}-share.png"]
    rep = json.loads((out / f"{ev}-report.json").read_text("utf-8"))
    now = report(gw, ev)
    assert {k: v for k, v in rep.items() if k != "as_of_ms"} == \
        {k: v for k, v in now.items() if k != "as_of_ms"}
    html = (out / f"{ev}-report.html").read_text("utf-8")
    assert '<html lang="zh">' in html and escape(rep["summary"]["zh"]) in html
    png = (out / f"{ev}-share.png").read_bytes()
    assert png_size(png) == (1080, 1920) and 20_000 < len(png) < 2_000_000
    assert done.stdout.splitlines()[0] == rep["summary"]["zh"]
    assert str(out / f"{ev}-share.png") in done.stdout
    if share.find_cjk_font() is None:
        assert "no font with Chinese characters" in done.stderr
    else:
        assert done.stderr == "", done.stderr
    # in English, and the JSON on stdout
    done = flashgate("report", ev, "--out", str(out), "--url", url, "--lang", "en", "--json",
                     env=clean_env(FLASHGATE_ADMIN_TOKEN=ADMIN))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"] == rep["summary"]
    assert '<html lang="en">' in (out / f"{ev}-report.html").read_text("utf-8")


def test_the_command_during_the_sale_and_its_refusals(gw, tmp_path):
    ev = new_id("repc")
    gw.put_event(ev, event_body(stock=(3,)))
    url = f"http://127.0.0.1:{gw.port}"
    env = clean_env(FLASHGATE_ADMIN_TOKEN=ADMIN)
    done = flashgate("report", ev, "--out", str(tmp_path / "a"), "--url", url, env=env)
    assert done.returncode == 0 and "not final" in done.stderr, done
    done = flashgate("report", "no-such-sale", "--out", str(tmp_path / "b"), "--url", url,
                     env=env)
    assert done.returncode == 4 and "not found" in done.stderr
    assert not (tmp_path / "b").exists()
    nobody = f"http://127.0.0.1:{free_port()}"
    done = flashgate("report", ev, "--out", str(tmp_path / "c"), "--url", nobody, env=env)
    assert done.returncode == 3 and "cannot reach the server" in done.stderr
    done = flashgate("report", ev, "--url", url, env=env)
    assert done.returncode == 2 and "--out" in done.stderr
    # a font that cannot be read: the page and the JSON are written, the image is not (5)
    done = flashgate("report", ev, "--out", str(tmp_path / "d"), "--url", url,
                     "--font", str(tmp_path / "no-such-font.ttf"), env=env)
    assert done.returncode == 5 and "share image" in done.stderr, done
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        f"{ev}-report.html", f"{ev}-report.json"]
    # a file where the directory should be
    (tmp_path / "f").write_text("x")
    done = flashgate("report", ev, "--out", str(tmp_path / "f"), "--url", url, env=env)
    assert done.returncode == 1 and "cannot write" in done.stderr


@pytest.mark.ci_required
def test_the_share_image_draws_chinese():
    """With a font that has Chinese characters (CI installs one), the image is drawn in
    Chinese without a warning; without one, in English, with a warning that says what
    to install."""
    rep = {"name": NAME, "final": True, "summary": {"zh": "5件商品1.2秒售罄，5人抢到",
                                                   "en": "5 units sold out in 1.2 s, 5 buyers"},
           "sold_out_ms": 1234, "units_sold": 5, "stock": 5, "buyers": 5, "orders": 5,
           "revenue": 500, "peak_rps": {"attempts": 40, "at_ms": 0}, "conversion": 0.5,
           "per_second": {"attempts": [40, 10, 0], "orders": [5, 0, 0]}, "goals": {},
           "milestones": [{"sold": 3, "reward": REWARD, "reached": True, "after_ms": 800}],
           "as_of_ms": now_ms()}
    english, notes = share.draw(rep, "en")
    assert png_size(english) == (1080, 1920) and notes == []
    font = share.find_cjk_font()
    if font is None:
        _, notes = share.draw(rep, "zh")
        assert len(notes) == 1 and "fonts-noto-cjk" in notes[0]
        pytest.skip("no font with Chinese characters (apt-get install fonts-wqy-zenhei)")
    chinese, notes = share.draw(rep, "zh")
    assert notes == [] and png_size(chinese) == (1080, 1920) and chinese != english
