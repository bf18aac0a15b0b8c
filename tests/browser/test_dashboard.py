"""The operator's dashboard (GET /dashboard/{event_id}) in headless Chromium against a
real gateway and Redis: the sign-in with the admin token (kept in sessionStorage, sent
as the bearer header, never in a URL), the tiles and charts following a load, the
controls (pause and resume, stock added, an order paid and another cancelled, each
confirmed in the page first) with the API's answer in words, a busy server and a
refused token, and the 404 page of an unknown event. Every test that sells ends with
the invariant check."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import shot
from tests.support import ADMIN, check_invariants, event_body, new_id, wait_for

pytestmark = pytest.mark.ci_required

WAIT = 10_000  # ms: the longest any figure may take to show (they come within seconds)


def url(gw, ev: str) -> str:
    return f"http://127.0.0.1:{gw.port}/dashboard/{ev}"


def signed_in(pages, gw, ev: str, *, size: str = "desktop", lang: str = "en-US",
              allow: tuple[str, ...] = ()):
    """A dashboard page signed in with the admin token, its first stats shown."""
    page = pages.open(url(gw, ev), size=size, lang=lang, allow=allow)
    page.fill("#token", ADMIN)
    page.click("#signin-btn")
    page.wait_for_selector("#dash", state="visible")
    page.wait_for_function("() => window.fgDash.stats !== null && window.fgDash.stream")
    return page


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def view(gw, ev: str) -> dict:
    status, body, _ = gw.request("GET", f"/api/v1/events/{ev}")
    assert status == 200, (status, body)
    return body


def confirm(page, button: str, *, ok: bool = True) -> None:
    """Click a control, then the in-page confirmation's OK (or Back)."""
    page.click(button)
    page.wait_for_selector("#confirm", state="visible")
    page.click("#confirm-ok" if ok else "#confirm-no")
    page.wait_for_selector("#confirm", state="hidden")


def answer(page, pattern: str) -> str:
    """The control's answer once it matches ``pattern`` (a regex)."""
    loc = page.locator("#answer")
    page.wait_for_function(
        "([sel, re]) => new RegExp(re).test(document.querySelector(sel).textContent)",
        arg=["#answer", pattern], timeout=WAIT)
    return loc.inner_text()


def test_sign_in_keeps_the_token_in_the_tab(gw, pages):
    ev = new_id("dash")
    gw.put_event(ev, event_body(stock=(5,)))
    page = pages.open(url(gw, ev), size="phone", lang="zh-CN", allow=("status of 401",))
    requests = []
    page.on("request", lambda req: requests.append((req.url, req.headers)))
    assert text(page, "#signin h1") == "登录运营看板"
    shot(page, "dashboard-signin-phone-zh")
    page.click("#signin-btn")  # nothing typed
    assert text(page, "#signin-msg") == "请输入管理令牌"
    page.fill("#token", "not-the-token")
    page.click("#signin-btn")
    page.wait_for_function("() => document.querySelector('#signin-msg').textContent.includes('不正确')")
    assert page.locator("#dash").is_hidden()
    assert page.evaluate("sessionStorage.getItem('fg.admin')") is None
    shot(page, "dashboard-wrong-token-phone-zh")

    page.click("#lang")  # the switch: English
    assert text(page, "#signin h1") == "Sign in to the dashboard"
    page.fill("#token", "still-wrong")
    page.click("#signin-btn")
    page.wait_for_function(
        "() => document.querySelector('#signin-msg').textContent.startsWith('Wrong admin token')")

    page.fill("#token", ADMIN)
    page.click("#signin-btn")
    page.wait_for_selector("#dash", state="visible")
    page.wait_for_function("() => window.fgDash.stats !== null")
    assert page.evaluate("sessionStorage.getItem('fg.admin')") == ADMIN
    assert ADMIN not in page.evaluate("location.href") and ADMIN not in page.url
    assert page.input_value("#token") == ""
    assert text(page, "#v-sold") == "0" and text(page, "#state") == "Live"
    # the token went as the bearer header, never in a URL
    stats = [h for u, h in requests if u.endswith(f"/api/v1/admin/events/{ev}/stats")]
    assert stats and all(h.get("authorization") == f"Bearer {ADMIN}" for h in stats)
    assert not any(ADMIN in u for u, _ in requests)

    page.reload()  # the tab keeps the session
    page.wait_for_selector("#dash", state="visible")
    assert page.locator("#signin").is_hidden()
    page.click("#signout")
    page.wait_for_selector("#signin", state="visible")
    assert page.evaluate("sessionStorage.getItem('fg.admin')") is None


def test_tiles_and_charts_follow_a_load(gw, r, pages):
    ev = new_id("dash")
    body = event_body(stock=(60, 30), milestones=[{"sold": 45, "reward": "a tote bag"}])
    gw.put_event(ev, body)
    page = signed_in(pages, gw, ev)
    assert text(page, "#v-sold") == "0"
    assert text(page, '[data-sku="s0"] .left') == "60"
    page.wait_for_function("() => window.fgDash.series !== null")

    acked, refused = [], []
    for i in range(100):  # 100 buyers for 60 units of s0, 45 of them for 30 of s1
        for sku in ("s0", "s1") if i < 45 else ("s0",):
            status, got, _ = gw.buy(ev, sku, f"load{i:03d}")
            (acked if status == 200 else refused).append(got)
    assert len(acked) == 90 and {b["error"] for b in refused} == {"sold_out"}

    page.wait_for_function("() => document.querySelector('#v-sold').textContent === '90'",
                           timeout=WAIT)
    for sku in ("s0", "s1"):
        page.wait_for_function(
            f"() => document.querySelector('[data-sku=\"{sku}\"] .left').textContent === '0'",
            timeout=WAIT)
    page.wait_for_function("() => document.querySelectorAll('#feed .user').length >= 20",
                           timeout=WAIT)
    users = page.locator("#feed .user").all_inner_texts()
    assert all(re.fullmatch(r"l\*\*\*\d", u) for u in users), users
    # the orders/s chart: a complete second of the series with orders in it
    # (every order counted in the complete seconds of the series)
    page.wait_for_function(
        "() => { const s = window.fgDash.series;"
        " return s.orders.reduce((a, n, i) => a + (s.final[i] ? n : 0), 0) === 90; }",
        timeout=WAIT)
    series = page.evaluate("window.fgDash.series")
    assert max(series["orders"]) > 0 and len(series["ts"]) == len(series["orders"])
    assert series["left"]["s0"][-1] == 0 and series["left"]["s1"][-1] == 0
    assert page.evaluate("window.fgDash.charts") == ["orders", "left"]
    page.wait_for_function("() => window.fgDash.state === 'sold_out'", timeout=WAIT)
    assert text(page, "#state") == "Sold out"
    assert text(page, "#v-orders") == "90"
    assert abs(int(text(page, "#v-participants")) - 100) <= 2  # (an estimate)
    assert text(page, "#v-p99").endswith("ms")
    page.wait_for_function(  # 40 refused for s0, 15 for s1
        "() => document.querySelector('#rej li[data-code=\"sold_out\"] b')?.textContent === '55'",
        timeout=WAIT)
    page.wait_for_selector("#milestones li.reached", timeout=WAIT)
    assert "a tote bag" in text(page, "#milestones li.reached")
    shot(page, "dashboard-load-desktop-en")

    phone = signed_in(pages, gw, ev, size="phone", lang="zh-CN")
    phone.wait_for_function("() => window.fgDash.series !== null"
                            " && window.fgDash.series.orders.some((n) => n > 0)", timeout=WAIT)
    assert text(phone, "#state") == "已抢光" and text(phone, "#v-sold") == "90"
    shot(phone, "dashboard-load-phone-zh")
    check_invariants(r, gw, ev, body, acked)


def test_controls_ask_then_act(gw, r, pages):
    ev = new_id("dash")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    acked = []
    for user in ("ctl-a", "ctl-b"):
        status, got, _ = gw.buy(ev, "s0", user)
        assert status == 200, got
        acked.append(got)
    page = signed_in(pages, gw, ev, allow=("status of 404", "status of 409"))

    confirm(page, "#pause", ok=False)  # asked, and declined: nothing happens
    assert view(gw, ev)["state"] == "live" and page.locator("#answer").is_hidden()
    confirm(page, "#pause")
    answer(page, r"^Sale paused \(state now: Paused\)$")
    assert view(gw, ev)["state"] == "paused"
    assert gw.buy(ev, "s0", "ctl-c")[1]["error"] == "paused"
    assert page.locator("#pause").is_disabled()
    confirm(page, "#resume")
    answer(page, r"^Sale resumed \(state now: Live\)$")
    assert view(gw, ev)["state"] == "live"

    page.fill("#stock-n", "0")  # refused in the page, nothing asked
    page.click("#add-stock")
    assert page.locator("#confirm").is_hidden()
    answer(page, "^Enter a whole number")
    page.select_option("#stock-sku", "s0")
    page.fill("#stock-n", "5")
    confirm(page, "#add-stock")
    answer(page, r"^Added 5 units to s0: stock 15, 13 left$")
    assert view(gw, ev)["skus"][0]["stock"] == 15

    paid, cancelled = acked
    page.fill("#order-id", paid["order_id"])
    confirm(page, "#order-paid")
    answer(page, rf"^Order {re.escape(paid['order_id'])} is paid \(1 × sku 0, ¥1\.00\)$")
    page.fill("#order-id", cancelled["order_id"])
    confirm(page, "#order-cancel")
    answer(page, rf"^Order {re.escape(cancelled['order_id'])} is cancelled")
    for o, status in ((paid, "paid"), (cancelled, "cancelled")):
        got = gw.request("GET", f"/api/v1/orders/{o['order_id']}", headers=gw.who(o["user_id"]))
        assert got[0] == 200 and got[1]["status"] == status, got
    # a cancelled order cannot be paid: said so, in words
    confirm(page, "#order-paid")
    answer(page, r"is cancelled: it cannot be marked paid$")
    page.fill("#order-id", f"{ev}.s0.nope")
    confirm(page, "#order-cancel")
    answer(page, r"^No order has the id ")
    # the cancelled unit is back on sale
    page.wait_for_function(
        "() => document.querySelector('[data-sku=\"s0\"] .left').textContent === '14'", timeout=WAIT)
    shot(page, "dashboard-controls-desktop-en")
    check_invariants(r, gw, ev, body, acked)


def test_busy_server_and_refused_token(gw, pages):
    ev = new_id("dash")
    gw.put_event(ev, event_body(stock=(5,)))
    page = signed_in(pages, gw, ev, allow=("status of 503", "status of 401"))
    busy = '{"error": "unavailable", "message": "overloaded"}'
    page.route("**/stats", lambda route: route.fulfill(
        status=503, content_type="application/json", body=busy, headers={"Retry-After": "1"}))
    page.wait_for_selector("#busy", state="visible", timeout=WAIT)
    assert text(page, "#busy").startswith("Server busy")
    assert "stale" in page.get_attribute("#dash", "class")
    page.unroute("**/stats")  # it keeps asking, and recovers
    page.wait_for_selector("#busy", state="hidden", timeout=WAIT)

    refused = '{"error": "unauthenticated", "message": "missing or invalid identity"}'
    page.route("**/stats", lambda route: route.fulfill(
        status=401, content_type="application/json", body=refused))
    page.wait_for_selector("#signin", state="visible", timeout=WAIT)
    assert text(page, "#signin-msg") == "The server refused the admin token: sign in again"
    assert page.evaluate("sessionStorage.getItem('fg.admin')") is None
    assert page.locator("#dash").is_hidden()


def test_unknown_event_gets_the_404_page(gw, pages):
    page = pages.open(size="desktop", lang="en-US", allow=("status of 404",))
    got = page.goto(url(gw, "no-such-sale"))
    assert got.status == 404
    assert text(page, "#what") == "No such sale"
    wait_for(lambda: page.locator("#token").count() == 0, "no sign-in form", timeout=1)
