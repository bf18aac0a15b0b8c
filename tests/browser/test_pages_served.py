"""The pages as the gateway serves them: one self-contained HTML file per page (no
request to another origin), gzipped, in the language Accept-Language asks for, a 404
page for an unknown event, the assets route; and in Chromium, the 404 page renders
without a script error."""

from __future__ import annotations

import gzip
from http.client import HTTPConnection

import pytest

from flashgate.gateway.handlers.pages import language
from tests.support import event_body, new_id

pytestmark = pytest.mark.ci_required


def get(gw, path: str, headers: dict | None = None):
    conn = HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("header, lang", [
    (None, "zh"), ("", "zh"), ("en-US,en;q=0.9", "en"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    ("fr-FR,en;q=0.5,zh;q=0.4", "en"), ("fr", "zh"), ("en;q=0, zh;q=0.1", "zh"),
    ("de, en-GB;q=0.7, zh-TW;q=0.7", "en"), ("zh;q=abc", "zh"), ("*", "zh"),
])
def test_language_by_accept_language(header, lang):
    assert language(header.encode() if header is not None else None) == lang


def test_pages_are_served_whole_and_small(gw):
    ev = new_id("pg")
    gw.put_event(ev, event_body(stock=(5,)))
    for path in (f"/e/{ev}", f"/dashboard/{ev}"):
        status, headers, body = get(gw, path, {"Accept-Encoding": "gzip, br",
                                               "Accept-Language": "en"})
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Encoding"] == "gzip"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        html = gzip.decompress(body)
        assert html.startswith(b"<!doctype html>") and b'<html lang="en">' in html
        assert b"<!--#include" not in html and b"{{LANG}}" not in html
        # nothing from another origin
        assert b"http://" not in html and b"https://" not in html, path
        if path.startswith("/e/"):
            assert len(body) <= 60 * 1024, len(body)  # the sale page, compressed
        status, headers, plain = get(gw, path)
        assert status == 200 and "Content-Encoding" not in headers
        assert plain.startswith(b"<!doctype html>") and b'<html lang="zh">' in plain


def test_unknown_event_and_asset_get_the_404_page(gw):
    for path in ("/e/no-such-sale", "/dashboard/no-such-sale", "/assets/nope.js"):
        status, headers, body = get(gw, path)
        assert status == 404 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"<h1>404</h1>" in body
    status, headers, body = get(gw, "/assets/README.txt")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=86400"
    assert headers["ETag"].startswith('"') and "Content-Encoding" not in headers
    status, headers, packed = get(gw, "/assets/uPlot.iife.min.js", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    plain = get(gw, "/assets/uPlot.iife.min.js")[2]
    assert gzip.decompress(packed) == plain and len(packed) < len(plain) // 2


def test_the_404_page_renders(gw, pages):
    from tests.browser.conftest import shot

    page = pages.open(f"http://127.0.0.1:{gw.port}/e/no-such-sale", lang="en-US",
                      allow=("status of 404",))
    assert page.locator("#what").inner_text() == "No such sale"
    shot(page, "notfound-phone-en")
    page = pages.open(f"http://127.0.0.1:{gw.port}/e/no-such-sale", lang="zh-CN",
                      allow=("status of 404",))
    assert page.locator("#what").inner_text() == "没有这场活动"
