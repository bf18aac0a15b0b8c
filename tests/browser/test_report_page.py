"""The battle report's page in headless Chromium: after a short sale it renders without
a script or console error (it has no script at all, and its Content-Security-Policy
allows none), its numbers are the stats', its charts are the ones for the screen's
width, nothing overflows a phone's width; screenshots on a phone and a desktop."""

from __future__ import annotations

import time

import pytest

from flashgate.report.words import money, number, percent
from tests.browser.conftest import shot
from tests.support import ADMIN, check_invariants, event_body, new_id, now_ms, wait_for

pytestmark = pytest.mark.ci_required

WINDOW_MS = 2500


@pytest.fixture(scope="module")
def ended_sale(gw, r):
    """A sale of 2.5 s: s0 (3 units) sells out, s1 (6 units) sells 2; one order paid;
    milestones at 2 and 50 units; goals."""
    ev = new_id("rpage")
    t = now_ms()
    body = event_body(stock=(3, 6), name="午间秒杀 <Noon> sale", ends=t + WINDOW_MS,
                      milestones=[{"sold": 2, "reward": "帆布袋 tote"},
                                  {"sold": 50, "reward": "a car"}],
                      goals={"units": 6, "buyers": 4})
    body["skus"][0]["name"] = "绿茶 Green tea 500 g"
    gw.put_event(ev, body)
    acked = []
    for user, sku in [(f"p{i}", "s0") for i in range(5)] + [("q0", "s1"), ("q1", "s1")]:
        status, data, _ = gw.buy(ev, sku, user)
        if status == 200:
            acked.append(data)
    assert len(acked) == 5
    status, _, _ = gw.admin("POST", f"/api/v1/admin/orders/{acked[0]['order_id']}/paid")
    assert status == 200
    time.sleep(max(0.0, (body["ends_at_ms"] - now_ms()) / 1000))
    wait_for(lambda: gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]["attempts"] == 7,
             "every count flushed", timeout=3)
    wait_for(lambda: gw.admin("GET", f"/api/v1/admin/events/{ev}/report")[1]["final"],
             "the final report", timeout=3)
    check_invariants(r, gw, ev, body, acked)
    return ev, body, acked


def open_report(pages, gw, ev: str, size: str, lang: str):
    page = pages.open(size=size, lang=lang)
    page.set_extra_http_headers({"Authorization": f"Bearer {ADMIN}"})
    response = page.goto(f"http://127.0.0.1:{gw.port}/api/v1/admin/events/{ev}/report"
                         f"?format=html")
    assert response.status == 200
    return page


@pytest.mark.parametrize("size, lang", [("phone", "zh-CN"), ("desktop", "en-US")])
def test_the_report_page_renders_with_the_stats(gw, r, pages, ended_sale, size, lang):
    ev, body, acked = ended_sale
    st = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
    rep = gw.admin("GET", f"/api/v1/admin/events/{ev}/report")[1]
    page = open_report(pages, gw, ev, size, lang)
    code = lang[:2]
    assert page.evaluate("document.documentElement.lang") == code
    assert page.evaluate("document.scripts.length") == 0
    kpi = lambda k: page.locator(f'[data-k="{k}"]').inner_text()  # noqa: E731
    assert kpi("orders") == number(st["orders"]) == "5"
    assert kpi("units_sold") == f"{number(st['units_sold'])} / {number(9)}"
    assert kpi("revenue") == money(st["revenue"])
    assert kpi("revenue_paid") == money(st["revenue_paid"])
    assert kpi("buyers") == number(rep["buyers"]) == "5"
    assert kpi("peak_rps") == number(rep["peak_rps"]["attempts"])
    assert kpi("conversion") == percent(rep["conversion"])
    assert page.locator("#summary").inner_text() == rep["summary"][code]
    assert page.locator("#name").inner_text() == body["name"]
    assert page.locator("#status").inner_text() == ("最终战报" if code == "zh" else "Final report")
    for s in st["skus"]:
        cells = page.locator(f'tr[data-sku="{s["id"]}"] td').all_inner_texts()
        assert cells[2:6] == [number(s["stock"]), number(s["sold"]), number(s["left"]),
                              number(s["orders"])], cells
    assert "绿茶 Green tea 500 g" in page.locator('tr[data-sku="s0"]').inner_text()
    assert page.locator("#funnel svg").is_visible()
    assert page.locator('#funnel [data-step="pv"]').text_content() == number(st["pv"])
    # the charts drawn for this screen's width are the ones shown
    shown, hidden = ("narrow", "wide") if size == "phone" else ("wide", "narrow")
    for chart in ("#per-minute", "#per-second"):
        assert page.locator(f"{chart} .{shown} svg").is_visible()
        assert not page.locator(f"{chart} .{hidden} svg").is_visible()
    assert page.locator('#milestones tr[data-sold="2"]').inner_text().count("帆布袋 tote") == 1
    # nothing wider than the screen (the SKU table scrolls in its card)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(page, f"report-{size}-{code}")
    check_invariants(r, gw, ev, body, acked)


def test_the_report_page_of_an_unknown_event_is_the_404_page(gw, pages):
    page = pages.open(lang="en-US", allow=("status of 404",))
    page.set_extra_http_headers({"Authorization": f"Bearer {ADMIN}"})
    response = page.goto(f"http://127.0.0.1:{gw.port}/api/v1/admin/events/no-such-sale/report"
                         "?format=html")
    assert response.status == 404
    assert page.locator("#what").inner_text() == "No such sale"
