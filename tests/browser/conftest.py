"""Headless Chromium for the page tests: Debian's ``chromium`` driven by Playwright
for Python (``executable_path``: no browser download). Without either the tests skip
(marked ci_required: CI installs both, and a skip there fails).

Each page fails its test on a script error or a console error. Screenshots go to
``.artifacts/pages/`` at the repository's root (ignored by git)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "pages"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1440, "height": 900}}


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module: Playwright's sync API keeps an event loop running
    in this thread while it is open, and the tests after these (asyncio.run) need it
    gone."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python "
                                   "is not installed (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Pages:
    """New pages in fresh contexts (phone or desktop, a language), each watched for
    script and console errors, all closed at the end of the test."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts = []
        self.errors: list[str] = []

    def open(self, url: str | None = None, *, size: str = "phone", lang: str = "zh-CN",
             allow: tuple[str, ...] = ()):
        """A new page (``allow``: console errors containing one of these are expected,
        e.g. "status of 404" for a page that is itself a 404)."""
        ctx = self.browser.new_context(**(PHONE if size == "phone" else DESKTOP),
                                       locale=lang, extra_http_headers={
                                           "Accept-Language": lang})
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and not any(
            a in m.text for a in allow) and self.errors.append(f"console error: {m.text}"))
        if url is not None:
            page.goto(url)
        return page

    def close(self):
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(browser):
    p = Pages(browser)
    yield p
    p.close()
    assert not p.errors, p.errors


def shot(page, name: str) -> Path:
    """A screenshot of the whole page under .artifacts/pages/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
