"""GET /metrics: the format (promtool), and the figures of a scripted load summed over
the instance's workers, a killed worker's restart counted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashgate.core.outcomes import REJECTIONS
from tests.support import Gateway, check_invariants, event_body, new_id, wait_for, worker_pids


def scrape(gw) -> tuple[str, dict]:
    status, body, headers = gw.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode() if isinstance(body, bytes) else str(body)
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.mark.ci_required  # .ci/run installs promtool (Debian's prometheus package)
def test_metrics_pass_promtool(gw, r):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    ev = new_id("prom")
    body = event_body(stock=(2,), limits=(1,))
    gw.put_event(ev, body)
    acked = [data for status, data, _ in (gw.buy(ev, "s0", user) for user in ("a", "b", "c"))
             if status == 200]
    text, samples = scrape(gw)
    out = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()
    for name in ("flashgate_requests_total", "flashgate_buy_outcomes_total",
                 "flashgate_buy_latency_seconds_bucket", "flashgate_commit_batch_size_bucket",
                 "flashgate_commit_redis_roundtrip_seconds_bucket",
                 "flashgate_commit_unreplicated_total",
                 "flashgate_commit_queue_depth", "flashgate_parked_purchases",
                 "flashgate_redis_connected", "flashgate_units_sold", "flashgate_units_left",
                 "flashgate_worker_restarts_total"):
        assert any(k[0] == name for k in samples), name
    check_invariants(r, gw, ev, body, acked)


def test_figures_of_a_scripted_load_across_workers(gw, r):
    """Every answer of a scripted load, whichever of the 2 workers gave it, is in the
    scrape of either worker: outcomes by reason, attempts, units sold and left per SKU."""
    ev = new_id("figs")
    body = event_body(stock=(5, 4), limits=(1, 1))
    gw.put_event(ev, body)
    seen = Counter()
    attempts = 0
    acked = []

    def buy(sku, user, qty=1, headers=None):
        nonlocal attempts
        attempts += 1
        status, data, _ = gw.buy(ev, sku, user, qty, headers)
        seen["sold" if status == 200 else data["error"]] += 1
        if status == 200:
            acked.append(data)

    for i in range(8):  # 5 sold, 3 sold out
        buy("s0", f"u{i}")
    for i in range(3):  # 3 sold
        buy("s1", f"v{i}")
    buy("s1", "v0")  # limit exceeded
    buy("s1", "w", qty=0)  # a malformed quantity
    buy("nope", "w")  # no such SKU
    assert seen["sold"] == 8 and seen["sold_out"] == 3 and seen["limit_exceeded"] == 1
    want = {reason: seen.get(reason, 0) for reason in ("sold", *REJECTIONS)}

    def counted():
        _, s = scrape(gw)
        got = {r: value(s, "flashgate_buy_outcomes_total", event=ev, reason=r) or 0
               for r in want}
        return s if got == want else None

    s = wait_for(counted, "the scripted load's outcomes in a scrape", timeout=5)
    for _ in range(6):  # whichever worker answers the scrape, the same totals
        s = wait_for(counted, "the same figures from every worker", timeout=5)
    assert value(s, "flashgate_buy_attempts_total", event=ev) == attempts
    assert value(s, "flashgate_buy_latency_seconds_count") >= 8
    assert value(s, "flashgate_buy_outcomes_total", event=ev, reason="paused") is None
    assert value(s, "flashgate_units_sold", event=ev, sku="s0") == 5
    assert value(s, "flashgate_units_left", event=ev, sku="s0") == 0
    assert value(s, "flashgate_units_sold", event=ev, sku="s1") == 3
    assert value(s, "flashgate_units_left", event=ev, sku="s1") == 1
    assert value(s, "flashgate_workers") == 2
    assert value(s, "flashgate_redis_connected", worker="0") == 1
    assert value(s, "flashgate_redis_connected", worker="1") == 1
    assert value(s, "flashgate_commit_batch_size_count") >= 1
    assert value(s, "flashgate_requests_total", route="buy", status="200") >= 8
    check_invariants(r, gw, ev, body, acked)


@pytest.mark.expected_log(r" supervisor ERROR flashgate: worker \d \(pid \d+\) exited with -9; "
                          r"restarting$")
def test_a_killed_worker_is_counted_and_its_counts_kept(redis_server, r, tmp_path):
    gw = Gateway(redis_server.url, tmp_path, workers=2).start()
    ev = new_id("mkill")
    body = event_body(stock=(20,), limits=(1,))
    gw.put_event(ev, body)
    acked = []
    for i in range(6):
        status, data, _ = gw.buy(ev, "s0", f"k{i}")
        assert status == 200
        acked.append(data)

    def sold(n):
        def check():
            _, s = scrape(gw)
            return s if value(s, "flashgate_buy_outcomes_total", event=ev, reason="sold") == n \
                else None
        return check

    s = wait_for(sold(6), "6 sales in a scrape")
    time.sleep(0.7)  # every worker's snapshot written since (--stats-interval 0.5 s)
    assert value(s, "flashgate_worker_restarts_total") == 0
    before = worker_pids(gw)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(worker_pids(gw)) == 2 and before[0] not in worker_pids(gw),
             "a new worker in place of the killed one", timeout=15)
    gw.wait_ready()
    status, data, _ = gw.buy(ev, "s0", "after")
    assert status == 200
    acked.append(data)
    s = wait_for(sold(7), "the killed worker's sales kept, the new one's added")
    assert value(s, "flashgate_worker_restarts_total") == 1
    assert value(s, "flashgate_workers") == 2
    assert value(s, "flashgate_units_sold", event=ev, sku="s0") == 7
    assert value(s, "flashgate_buy_latency_seconds_count") == 7  # this gateway's only sales
    assert value(s, "flashgate_requests_total", route="buy", status="200") == 7
    check_invariants(r, gw, ev, body, acked)


def test_requests_by_route_and_status(gw):
    """The router's answers by operationId and status, summed over the workers."""
    time.sleep(0.7)  # earlier tests' requests: in every worker's snapshot
    _, before = scrape(gw)

    def count(s, route, status):
        return value(s, "flashgate_requests_total", route=route, status=status) or 0

    for _ in range(10):
        assert gw.request("GET", "/livez")[0] == 200
    for _ in range(3):
        assert gw.request("GET", "/no/such/path")[0] == 404
    assert gw.request("GET", "/api/v1/admin/events/none/stats")[0] == 401

    def counted():
        _, s = scrape(gw)
        return (count(s, "livez", "200") - count(before, "livez", "200") == 10
                and count(s, "unknown", "404") - count(before, "unknown", "404") == 3
                and count(s, "unknown", "401") - count(before, "unknown", "401") == 1
                and s)

    wait_for(counted, "the requests counted by route and status")
