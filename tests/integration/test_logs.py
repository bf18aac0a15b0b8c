"""The logs (flashgate/logs.py): JSON lines on stdout, the happenings with their
fields, --log-format text, and --access-log. Real gateways (tests/support.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from flashgate import __version__
from tests.support import (
    ADMIN,
    Gateway,
    check_invariants,
    event_body,
    log_entry,
    new_id,
    wait_for,
    worker_pids,
)

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
INFO = ("--log-level", "info")


def assert_json_lines(lines: list[str], procs=("supervisor", "worker")) -> list[dict]:
    """Every line is a log line: a JSON object with ts, level, proc, logger and msg
    (and a worker's number on a worker's line)."""
    assert lines
    out = []
    for line in lines:
        entry = log_entry(line)
        assert entry is not None, f"not a JSON log line: {line!r}"
        assert TS.match(entry["ts"]), entry
        assert entry["level"] in ("debug", "info", "warning", "error", "critical"), entry
        assert entry["proc"] in procs and entry["logger"].startswith(("flashgate", "asyncio")), \
            entry
        assert ("worker" in entry) == (entry["proc"] == "worker"), entry
        out.append(entry)
    return out


def test_stdout_is_json_lines_with_the_happenings_of_a_sale(redis_server, r, tmp_path):
    gw = Gateway(redis_server.url, tmp_path, workers=2, extra=INFO, split_stderr=True).start()
    try:
        start = gw.wait_happening("start")
        assert (start["proc"], start["version"], start["port"], start["workers"]) == \
            ("supervisor", __version__, gw.port, 2), start
        assert start["listen"] == f"127.0.0.1:{gw.port}" and start["identity"] == "dev", start
        assert start["redis"] == redis_server.url and start["access_log"] is False, start
        ready = gw.wait_happening("ready", proc="supervisor")
        assert ready["url"] == f"http://127.0.0.1:{gw.port}" and ready["workers"] == 2, ready
        assert sorted(e["worker"] for e in gw.happenings("ready", proc="worker")) == [0, 1]

        ev = new_id("logs")
        body = event_body(stock=(3, 5), milestones=[{"sold": 2, "reward": "tote"}])
        gw.put_event(ev, body)
        created = gw.wait_happening("event_created", event_id=ev)
        assert (created["source"], created["skus"]) == ("api", ["s0", "s1"]), created
        assert created["starts_at_ms"] == body["starts_at_ms"], created
        assert gw.admin("PUT", f"/api/v1/admin/events/{ev}", dict(body, name="renamed"))[0] == 200
        assert gw.wait_happening("event_changed", event_id=ev)["source"] == "api"
        assert gw.admin("POST", f"/api/v1/admin/events/{ev}/pause")[0] == 200
        assert gw.wait_happening("paused", event_id=ev)["level"] == "info"
        assert gw.admin("POST", f"/api/v1/admin/events/{ev}/resume")[0] == 200
        gw.wait_happening("resumed", event_id=ev)
        assert gw.admin("POST", f"/api/v1/admin/events/{ev}/skus/s1/stock", {"add": 2})[0] == 200
        added = gw.wait_happening("stock_added", event_id=ev)
        assert (added["sku"], added["added"], added["stock"], added["sold"]) == ("s1", 2, 7, 0)

        orders = []
        for i in range(3):
            status, order, _ = gw.buy(ev, "s0", f"buyer{i}")
            assert status == 200, order
            orders.append(order)
        status, data, _ = gw.buy(ev, "s0", "late")
        assert (status, data["error"]) == (409, "sold_out")
        sold_out = gw.wait_happening("sold_out", event_id=ev)
        assert (sold_out["sku"], sold_out["sold"], sold_out["stock"]) == ("s0", 3, 3), sold_out
        assert sold_out["proc"] == "worker", sold_out
        reached = gw.wait_happening("milestone_reached", event_id=ev)
        # by the worker that made the sale that reached it, once
        assert (reached["sold"], reached["reward"]) == (2, "tote"), reached
        assert reached["order_id"] == orders[1]["order_id"], (reached, orders)
        gw.settle_output(quiet=0.5)
        assert len(gw.happenings("sold_out", event_id=ev)) == 1
        assert len(gw.happenings("milestone_reached", event_id=ev)) == 1
        assert not gw.happenings("request"), "a request line without --access-log"
        check_invariants(r, gw, ev, body, orders)
    finally:
        assert gw.stop() == 0
    drain = gw.happenings("drain")
    assert [d["phase"] for d in drain] == ["start", "done"], drain
    assert drain[0]["workers"] == 2 and drain[1]["killed"] == 0, drain
    entries = assert_json_lines(gw.output)
    assert {e["proc"] for e in entries} == {"supervisor", "worker"}
    # the banner, for people, is on stderr
    assert "listening on http://" in "".join(gw.errors)
    assert not any("listening on" in line for line in gw.output)


@pytest.mark.expected_log(r" supervisor ERROR flashgate: worker \d \(pid \d+\) exited with -9; "
                          r"restarting$")
def test_a_killed_worker_is_logged_as_died_then_restarted(redis_server, tmp_path):
    gw = Gateway(redis_server.url, tmp_path, workers=2, extra=INFO).start()
    before = worker_pids(gw)
    os.kill(before[0], signal.SIGKILL)
    died = gw.wait_happening("worker_died", timeout=15)
    assert (died["level"], died["child"], died["pid"]) == ("error", "worker", before[0]), died
    assert (died["exit_code"], died["signal"]) == (-9, "SIGKILL"), died
    assert died["worker_id"] in (0, 1), died
    restarted = gw.wait_happening("worker_restarted")
    assert restarted["worker_id"] == died["worker_id"] and restarted["old_pid"] == before[0]
    assert restarted["pid"] not in before, (restarted, before)
    # the new worker says it is ready
    again = gw.wait_happening("ready", timeout=30, pid=restarted["pid"])
    assert again["worker"] == died["worker_id"], again


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_the_access_log_has_a_line_per_request(redis_server, r, tmp_path):
    """With --access-log (and whatever --log-level says), one line per request: every
    kind of answer (bytes, a purchase's Pending, a coroutine's, a refusal of the
    connection), with its status; nothing else changes."""
    gw = Gateway(redis_server.url, tmp_path, workers=2, extra=["--access-log"],
                 split_stderr=True).start()
    ev = new_id("access")
    body = event_body(stock=(2,))
    gw.put_event(ev, body)  # a coroutine's answer: 201
    view = f"/api/v1/events/{ev}"
    for _ in range(5):
        assert gw.request("GET", "/livez")[0] == 200
    assert gw.request("GET", "/api/v1/events/nothing-here")[0] == 404
    orders = []
    for user in ("a1", "a2"):
        status, order, _ = gw.buy(ev, "s0", user)
        assert status == 200, order
        orders.append(order)
    assert gw.buy(ev, "s0", "a3")[0] == 409
    assert gw.request("GET", "/api/v1/admin/events", headers={})[0] == 401
    answer = raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                  b"Content-Length: 2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer

    def lines(path):
        return [e for e in gw.happenings("request") if e["path"] == path]

    # (each worker writes its lines every 0.2 s)
    wait_for(lambda: len(lines("/livez")) >= 5 and len(lines(f"{view}/buy")) >= 3
             and lines("/api/v1/admin/events") and lines(None), "every request's line")
    gw.settle_output(quiet=0.5)
    live = lines("/livez")
    assert len(live) == 5, live
    for e in live:
        assert (e["proc"], e["logger"], e["level"], e["method"]) == \
            ("worker", "flashgate.access", "info", "GET"), e
        assert e["status"] == 200 and e["bytes"] > 20 and e["duration_us"] >= 0, e
        assert e["client_ip"] == "127.0.0.1" and e["worker"] in (0, 1), e
        assert e["msg"] == "GET /livez 200", e
    assert {e["status"] for e in lines(view)} == {200}  # (put_event's reads: every worker)
    assert sorted(e["status"] for e in lines(f"{view}/buy")) == [200, 200, 409]
    assert [e["status"] for e in lines(f"/api/v1/admin/events/{ev}")] == [201]
    assert [e["status"] for e in lines("/api/v1/events/nothing-here")] == [404]
    assert [e["status"] for e in lines("/api/v1/admin/events")] == [401]
    [refused] = lines(None)
    assert (refused["method"], refused["status"], refused["client_ip"]) == (None, 400, "127.0.0.1")
    assert_json_lines(gw.output)
    check_invariants(r, gw, ev, body, orders)


def test_text_logs_are_todays_lines_and_the_banner_on_stdout(redis_server, tmp_path):
    gw = Gateway(redis_server.url, tmp_path, workers=1, split_stderr=True,
                 extra=[*INFO, "--log-format", "text", "--access-log"]).start()
    assert gw.request("GET", "/livez")[0] == 200
    time.sleep(0.5)  # (the access log's next flush)
    assert gw.stop() == 0
    text = "".join(gw.output)
    assert "listening on http://" in text and not gw.errors, gw.errors
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{stamp} supervisor INFO flashgate: flashgate {re.escape(__version__)} "
                     rf"starting on 127\.0\.0\.1:{gw.port}: 1 worker, dev identity$", text,
                     re.M), text
    assert re.search(rf"^{stamp} worker-0 INFO flashgate\.worker: worker 0 ready", text, re.M)
    assert re.search(rf'^{stamp} worker-0 INFO flashgate\.access: 127\.0\.0\.1 "GET /livez" 200 '
                     r"\d+ \d+us$", text, re.M), text
    assert not gw.entries(), "a JSON line in the text log"
    assert ADMIN not in text
