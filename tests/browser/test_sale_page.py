"""The buyer's sale page (``GET /e/{event_id}``) in headless Chromium against a real
gateway and Redis: the countdown on the server's clock opens the sale, a buy shows its
order, a load from elsewhere moves "only N left" and the order feed, sold out, pause
and resume, the end, "remind me", a token handed over in the fragment or by
postMessage, refusals in words, Retry-After, a lost answer retried with its
Idempotency-Key, the language switch. Every test that sells ends with
``check_invariants`` over the orders the page showed and those the test made.

Screenshots (phone and desktop; before the start, live, sold out, paused, ended) go
to ``.artifacts/pages/``."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.browser.conftest import shot
from tests.support import check_invariants, new_id, now_ms

pytestmark = pytest.mark.ci_required

LOAD_USERS = [f"u{i}" for i in range(1, 7)]  # masked by the stream as u***1 ...


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def sale(starts: int, ends: int, tea: int = 6, cup: int = 3, **extra) -> dict:
    return {
        "name": "Noon flash sale", "starts_at_ms": starts, "ends_at_ms": ends,
        "skus": [
            {"id": "tea", "name": "Green tea 500 g", "price": 990, "original_price": 2990,
             "stock": tea, "per_user_limit": 1,
             "tiers": [{"units": 2, "price": 100}, {"units": 2, "price": 500}]},
            {"id": "cup", "name": "Tea cup", "price": 1500, "original_price": 3900,
             "stock": cup, "per_user_limit": 1},
        ],
        "milestones": [{"sold": 3, "reward": "free tote bag"},
                       {"sold": tea + cup, "reward": "free tea cup"}],
        **extra,
    }


def url(gw, ev: str) -> str:
    return f"http://127.0.0.1:{gw.port}/e/{ev}"


def buy_button(page, sku: str):
    return page.locator(f'[data-sku="{sku}"] button.buy')


def page_orders(page, ev: str) -> list[dict]:
    """The orders the page showed (their ids in the DOM), as the page received them."""
    shown = page.eval_on_selector_all("[data-order-id]", "els => els.map(e => e.dataset.orderId)")
    got = json.loads(page.evaluate(f"sessionStorage.getItem('fg.orders.{ev}')") or "[]")
    by_id = {o["order_id"]: o for o in got}
    assert set(shown) <= set(by_id), (shown, list(by_id))
    return [by_id[o] for o in shown]


def server_skew_ms(gw, ev: str) -> float:
    """The server's clock minus this host's (the midpoint of a view's round trip)."""
    t0 = time.time() * 1000
    _, view, _ = gw.request("GET", f"/api/v1/events/{ev}")
    t1 = time.time() * 1000
    return view["server_time_ms"] - (t0 + t1) / 2


def load_buy(gw, ev: str, sku: str, users, acked: list) -> None:
    for u in users:
        status, data, _ = gw.buy(ev, sku, u)
        assert status == 200, (status, data)
        acked.append(data)


def test_countdown_opens_the_sale_then_orders_load_and_sold_out(gw, r, pages):
    ev = new_id("sale")
    t = now_ms()
    body = sale(t + 60_000, t + 180_000)
    gw.put_event(ev, body)
    phone = pages.open(url(gw, ev), lang="zh-CN")
    desk = pages.open(url(gw, ev), size="desktop", lang="en-US")
    btn = buy_button(phone, "tea")
    expect(btn).to_be_disabled()
    expect(btn).to_have_text("即将开抢")
    expect(phone.locator("body")).to_have_attribute("data-state", "scheduled")
    expect(desk.locator('[data-sku="tea"] .ladder li.cur')).to_contain_text("First 2 at ¥1.00")
    expect(desk.locator('[data-sku="tea"] .strike')).to_have_text("¥29.90")
    expect(phone.locator("#cd")).to_have_text(re.compile(r"^00:0[01]:\d\d$"))  # about a minute
    # remind me: the name, then the register's 200 shown
    phone.fill("#name-input", "alice")
    phone.click("#remind")
    expect(phone.locator("#reminded")).to_be_visible()
    expect(phone.locator("#remind")).to_be_hidden()
    status, regs, _ = gw.admin("GET", f"/api/v1/admin/events/{ev}/registrations")
    assert status == 200 and b'"alice"' in (regs if isinstance(regs, bytes) else
                                             json.dumps(regs).encode()), regs
    shot(phone, "sale-before-phone")
    shot(desk, "sale-before-desktop")
    # the start moved to 2 s from now (the page learns it from the stream); the moment
    # the button opens, by this host's clock (the server's: same machine)
    phone.evaluate("""() => { const b = document.querySelector('[data-sku="tea"] button.buy');
        window.fgOpened = null;
        new MutationObserver(() => { if (!b.disabled && window.fgOpened === null)
            window.fgOpened = Date.now(); }).observe(b, {attributes: true}); }""")
    starts = body["starts_at_ms"] = now_ms() + 2000
    gw.put_event(ev, body)
    skew = server_skew_ms(gw, ev)
    expect(phone.locator("#cd")).to_contain_text("00:00:0", timeout=1000)
    assert now_ms() < starts - 300 and btn.is_disabled()
    phone.wait_for_function("() => window.fgOpened !== null", timeout=starts - now_ms() + 3000)
    opened = phone.evaluate("window.fgOpened") + skew  # on the server's clock
    assert -150 <= opened - starts <= 1000, f"opened {opened - starts:.0f} ms after the start"
    expect(phone.locator("body")).to_have_attribute("data-state", "live")
    expect(buy_button(desk, "tea")).to_be_enabled(timeout=2000)
    # a buy: the order shown (id, amount at the first tier, pay by)
    btn.click()
    order = phone.locator("#mine [data-order-id]")
    expect(order).to_have_count(1)
    expect(order).to_contain_text("¥1.00")
    expect(phone.locator('[data-sku="tea"] .msg.ok')).to_contain_text("抢到了")
    acked = page_orders(phone, ev)
    assert [o["user_id"] for o in acked] == ["alice"] and acked[0]["amount"] == 100
    # a load from elsewhere: "only N left" falls, the feed moves with masked buyers
    expect(desk.locator('[data-sku="tea"] .left')).to_have_text("Only 5 left")
    load_buy(gw, ev, "tea", LOAD_USERS[:2], acked)
    expect(phone.locator('[data-sku="tea"] .left')).to_have_text("仅剩 3 件")
    expect(desk.locator('[data-sku="tea"] .left')).to_have_text("Only 3 left")
    expect(desk.locator("#feed")).to_contain_text("u***2 got Green tea 500 g ×1")
    expect(phone.locator("#feed li")).to_have_count(3)
    expect(desk.locator("#miles li.hit")).to_have_count(1)  # 3 sold: the tote bag
    expect(desk.locator('[data-sku="tea"] .now')).to_have_text("¥5.00")  # the second tier
    shot(phone, "sale-live-phone")
    shot(desk, "sale-live-desktop")
    # sold out: every button closes, the end state shows the numbers
    load_buy(gw, ev, "tea", LOAD_USERS[2:5], acked)
    expect(buy_button(phone, "tea")).to_be_disabled()
    expect(buy_button(phone, "tea")).to_have_text("已抢光")
    expect(buy_button(phone, "cup")).to_be_enabled()
    load_buy(gw, ev, "cup", LOAD_USERS[:3], acked)
    for page in (phone, desk):
        expect(page.locator("body")).to_have_attribute("data-state", "sold_out")
        expect(buy_button(page, "cup")).to_be_disabled()
    expect(desk.locator("#note")).to_contain_text("9 of 9 units sold")
    expect(desk.locator("#note")).to_contain_text("Sold out about")
    expect(desk.locator("#miles")).to_contain_text("Every reward unlocked")
    shot(phone, "sale-soldout-phone")
    shot(desk, "sale-soldout-desktop")
    check_invariants(r, gw, ev, body, acked)


def test_pause_resume_and_the_end(gw, r, pages):
    ev = new_id("sale")
    t = now_ms()
    body = sale(t - 1000, t + 600_000)
    gw.put_event(ev, body)
    page = pages.open(url(gw, ev), lang="en-US")
    btn = buy_button(page, "cup")
    expect(btn).to_be_enabled()
    expect(btn).to_have_text("Buy now")
    # the kill switch shows within a tick or so, and resume opens again
    status, data, _ = gw.admin("POST", f"/api/v1/admin/events/{ev}/pause")
    assert status == 200 and data["paused"] is True
    expect(btn).to_be_disabled(timeout=1000)
    expect(btn).to_have_text("Paused")
    expect(page.locator("#note")).to_contain_text("paused")
    shot(page, "sale-paused-phone")
    status, data, _ = gw.admin("POST", f"/api/v1/admin/events/{ev}/resume")
    assert status == 200 and data["paused"] is False
    expect(btn).to_be_enabled(timeout=1000)
    # a buy, then the end
    page.fill("#name-input", "bob")
    btn.click()
    expect(page.locator("#mine [data-order-id]")).to_have_count(1)
    acked = page_orders(page, ev)
    load_buy(gw, ev, "tea", ["u1"], acked)
    body["ends_at_ms"] = now_ms() + 1500  # the end brought forward: the page follows
    gw.put_event(ev, body)
    page.wait_for_function("() => document.body.dataset.state === 'ended'",
                           timeout=max(0, body["ends_at_ms"] - now_ms()) + 3000)
    assert now_ms() >= body["ends_at_ms"] - 200
    for sku in ("tea", "cup"):
        expect(buy_button(page, sku)).to_be_disabled()
        expect(buy_button(page, sku)).to_have_text("Ended")
    expect(page.locator("#cd")).to_have_text("Ended")
    expect(page.locator("#note")).to_have_text("2 of 9 units sold")
    expect(page.locator("#remind")).to_be_hidden()
    shot(page, "sale-ended-phone")
    check_invariants(r, gw, ev, body, acked)


def test_token_from_the_fragment_and_from_a_message(prod_gw, r, pages):
    gw = prod_gw
    ev = new_id("sale")
    t = now_ms()
    body = sale(t - 1000, t + 600_000)
    gw.put_event(ev, body)
    carol = gw.token("carol")
    urls: list[str] = []
    page = pages.open(lang="en-US")
    page.on("request", lambda req: urls.append(req.url))
    page.goto(url(gw, ev) + "#token=" + carol)
    expect(page.locator("#who")).to_have_text("Signed in as carol")
    # read, kept for the session, gone from the address bar
    assert "token" not in page.evaluate("location.href") and "#" not in page.url
    assert page.evaluate("sessionStorage.getItem('fg.token')") == carol
    buy_button(page, "tea").click()
    expect(page.locator("#mine [data-order-id]")).to_have_count(1)
    acked = page_orders(page, ev)
    assert [o["user_id"] for o in acked] == ["carol"]
    page.reload()  # the session keeps the token, the page its orders
    expect(page.locator("#who")).to_have_text("Signed in as carol")
    expect(page.locator("#mine [data-order-id]")).to_have_count(1)
    # another buyer, without a token: asked to sign in, no request made
    other = pages.open(url(gw, ev), lang="en-US")
    other.on("request", lambda req: urls.append(req.url))
    expect(other.locator("#who")).to_have_text("Open this page from the shop's app to sign in")
    buy_button(other, "tea").click()
    expect(other.locator('[data-sku="tea"] .msg.err')).to_have_text(
        "Open this page from the shop's app to sign in")
    shot(other, "sale-signin-phone")
    # the embedding app hands the token over by postMessage
    dave = gw.token("dave")
    other.evaluate("t => window.postMessage({type: 'flashgate-token', token: t}, location.origin)",
                   dave)
    expect(other.locator("#who")).to_have_text("Signed in as dave")
    buy_button(other, "tea").click()
    expect(other.locator("#mine [data-order-id]")).to_have_count(1)
    acked += page_orders(other, ev)
    assert [o["user_id"] for o in acked] == ["carol", "dave"]
    assert not [u for u in urls if carol in u or dave in u], "a token in a URL"
    check_invariants(r, gw, ev, body, acked)


def test_refusals_in_words_retry_after_a_lost_answer_and_the_language(gw, r, pages):
    ev = new_id("sale")
    t = now_ms()
    body = sale(t - 1000, t + 600_000)
    gw.put_event(ev, body)
    page = pages.open(url(gw, ev), lang="en-US",
                      allow=("status of 409", "status of 429", "status of 503", "ERR_FAILED"))
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.fill("#name-input", "erin")
    # the answer of the first try is lost on the way back: the page retries with the
    # same Idempotency-Key and shows the one order
    sent: list[str] = []

    def lose_first(route):
        sent.append(route.request.headers.get("idempotency-key"))
        if len(sent) == 1:
            route.fetch()  # the server takes it...
            route.abort()  # ...and its answer never arrives
        else:
            route.continue_()

    buy_path = f"**/api/v1/events/{ev}/buy"
    page.route(buy_path, lose_first)
    tea = buy_button(page, "tea")
    tea.click()
    expect(page.locator("#mine [data-order-id]")).to_have_count(1)
    assert len(sent) == 2 and sent[0] == sent[1] and len(sent[0]) == 32, sent
    acked = page_orders(page, ev)
    assert [o["user_id"] for o in acked] == ["erin"]
    page.unroute(buy_path)
    # a 409 in words
    tea.click()
    expect(page.locator('[data-sku="tea"] .msg.err')).to_have_text(
        "You have reached the limit per buyer")
    # a 429: the reason, and the button closed for Retry-After; then a 503 (a commit
    # whose reply was lost answers so): its key is kept for the next click
    keys: list[str] = []

    def refuse(status: int, error: str, wait: str):
        def answer(route):
            keys.append(route.request.headers.get("idempotency-key"))
            route.fulfill(status=status, headers={"Retry-After": wait,
                                                  "Content-Type": "application/json"},
                          body=json.dumps({"error": error, "message": "slow down"}))
        return answer

    page.route(buy_path, refuse(429, "rate_limited", "2"))
    cup = buy_button(page, "cup")
    cup.click()
    msg = page.locator('[data-sku="cup"] .msg.err')
    expect(msg).to_have_text("Too many requests, try again in a moment")
    expect(cup).to_be_disabled()
    expect(cup).to_contain_text("Try again in")
    t0 = time.monotonic()
    expect(cup).to_be_enabled(timeout=4000)
    assert 1.0 <= time.monotonic() - t0 <= 3.5
    assert "slow down" not in page.inner_text("body")  # words, never the raw object
    page.unroute(buy_path)
    page.route(buy_path, refuse(503, "unavailable", "1"))
    cup.click()
    expect(msg).to_have_text("Busy, try again in a moment")
    expect(cup).to_be_enabled(timeout=3000)
    page.unroute(buy_path)
    page.route(buy_path, lambda route: (keys.append(route.request.headers.get(
        "idempotency-key")), route.continue_()))
    cup.click()
    expect(page.locator("#mine [data-order-id]")).to_have_count(2)
    assert len(keys) == 3 and keys[0] != keys[1] == keys[2], keys
    page.unroute(buy_path)
    acked = page_orders(page, ev)
    assert sorted(o["sku"] for o in acked) == ["cup", "tea"]
    # the language switch: every word, the answers shown too
    page.click("button.lang")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(page.locator('[data-sku="tea"] .msg.err')).to_have_text("已达每人限购数量")
    expect(buy_button(page, "tea")).to_have_text("立即抢购")
    expect(page.locator("#mine h2")).to_have_text("我的订单")
    page.reload()  # the choice stays
    expect(page.locator("#mine h2")).to_have_text("我的订单")
    page.click("button.lang")
    expect(page.locator("#mine h2")).to_have_text("Your orders")
    check_invariants(r, gw, ev, body, acked)
