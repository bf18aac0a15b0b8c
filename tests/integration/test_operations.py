"""Price ladder, rate limits through the server, worker supervision, drain, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis

from flashgate.gateway._token import TokenKey
from tests.support import (
    ADMIN,
    Gateway,
    check_invariants,
    event_body,
    new_id,
    now_ms,
    read_response,
    wait_for,
    worker_pids,
)


def test_price_ladder_is_decided_at_commit(gw, r):
    ev = new_id("tier")
    body = event_body(stock=(6,), limits=(3,))
    body["skus"][0]["tiers"] = [{"units": 2, "price": 10}, {"units": 1, "price": 50}]
    gw.put_event(ev, body)
    prices = []
    for user, qty in (("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", 1)):
        status, order, _ = gw.buy(ev, "s0", user, qty)
        assert status == 200, order
        prices.append((order["unit_price"], order["amount"]))
    # units 0-1 at 10, unit 2 at 50, then the base price 100; an order's unit price is
    # the one of its first unit
    assert prices == [(10, 10), (10, 10), (50, 50), (100, 200), (100, 100)]
    status, data, _ = gw.buy(ev, "s0", "f")
    assert (status, data["error"]) == (409, "sold_out")
    orders = gw.orders_export(ev)
    check_invariants(r, gw, ev, body, orders)
    stats = gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
    assert stats["revenue"] == 10 + 10 + 50 + 200 + 100


@pytest.fixture(scope="module")
def limited_gw(redis_server, tmp_path_factory):
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("lim"), workers=1,
                extra=["--user-rate", "1", "--user-burst", "2"], shared=True)
    g.start()
    yield g
    g.close()


def test_rate_limit_answers_429_with_retry_after(limited_gw, r):
    gw = limited_gw
    ev = new_id("rl")
    body = event_body(stock=(100,), limits=(1,))
    gw.put_event(ev, body)
    answers = [gw.buy(ev, "s0", "hammer") for _ in range(4)]
    assert [a[0] for a in answers[:2]] == [200, 409]  # the burst of 2 passes the limiter
    status, data, headers = answers[2]
    assert (status, data["error"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert answers[3][0] == 429
    # another user is not affected
    status, calm, _ = gw.buy(ev, "s0", "calm")
    assert status == 200
    check_invariants(r, gw, ev, body, [answers[0][1], calm])


@pytest.fixture
def own_gw(redis_server, tmp_path):
    """A gateway of the test's own (started by the test), stopped with its checks."""
    return Gateway(redis_server.url, tmp_path, workers=2)


@pytest.mark.expected_log(r" supervisor ERROR flashgate: worker \d \(pid \d+\) exited with -9; "
                          r"restarting$")
def test_a_killed_worker_is_restarted(own_gw, r):
    gw = own_gw.start()
    ev = new_id("kill")
    body = event_body(stock=(20,), limits=(1,))
    gw.put_event(ev, body)
    before = worker_pids(gw)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    def replaced():
        pids = worker_pids(gw)
        return pids if len(pids) == 2 and before[0] not in pids else None

    now = wait_for(replaced, "a new worker in place of the killed one", timeout=15)
    assert before[1] in now, (before, now)
    gw.wait_ready()
    orders = []
    for i in range(20):
        status, order, _ = gw.buy(ev, "s0", f"after{i}")
        assert status == 200, order
        orders.append(order)
    check_invariants(r, gw, ev, body, orders)


def test_sigterm_drains_requests_in_flight(own_gw, r, capsys):
    """Pipelined buys are in flight when SIGTERM arrives: every one is answered, the
    commits finish, and the gateway exits 0."""
    gw = own_gw.start()
    ev = new_id("drain")
    body = event_body(stock=(100000,), limits=(1,))
    gw.put_event(ev, body)
    results: list = []

    async def conn(k, started):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        data = b"".join(gw.buy_bytes(ev, "s0", f"d{k}x{i}") for i in range(100))
        writer.write(data)
        await writer.drain()
        started.append(k)
        for _ in range(100):
            answer = await read_response(reader)
            if answer is None:
                results.append(("closed", None))
                break
            results.append(answer)
        writer.close()

    async def main():
        started: list = []
        tasks = [asyncio.create_task(conn(k, started)) for k in range(20)]
        while len(started) < 20:
            await asyncio.sleep(0.001)
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(main())
    assert gw.proc.wait(30) == 0
    statuses = [s for s, _ in results]
    assert "closed" not in statuses, "a pipelined request lost its answer"
    assert statuses == [200] * 2000, {s: statuses.count(s) for s in set(statuses)}
    figures = check_invariants(r, None, ev, body, [b for _, b in results])
    with capsys.disabled():
        print(f"\n[SIGTERM under load] in flight=2000 answered=2000 failed=0 {figures}")


def test_token_command_mints_a_valid_token():
    secret = "k" * 32
    out = subprocess.run([sys.executable, "-m", "flashgate.cli", "token", "u42", "--ttl", "60",
                          "--secret", secret], capture_output=True, text=True, check=True).stdout
    bearer = b"Bearer " + out.strip().encode()
    assert TokenKey(secret.encode()).user(bearer, now_ms()) == "u42"
    assert TokenKey(b"other").user(bearer, now_ms()) is None
    missing = subprocess.run([sys.executable, "-m", "flashgate.cli", "token", "u42"],
                             capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items()
                                  if k != "FLASHGATE_USER_SECRET"})
    assert missing.returncode == 2 and "secret" in missing.stderr


def test_rate_limits_follow_the_proxy_protocol_client(redis_server, tmp_path, r):
    """Behind an L4 balancer speaking the PROXY protocol (v1 or v2) the per-IP limit
    applies to the header's client; the balancer's own health checks (v2 LOCAL)
    pass; a connection from it without a header is refused and sells nothing."""
    gw = Gateway(redis_server.url, tmp_path, workers=1,
                 extra=["--ip-rate", "1", "--ip-burst", "1",
                        "--proxy-protocol-from", "127.0.0.0/8"]).start(wait_ready=False)
    ev = new_id("pp")
    body = event_body(stock=(100,), limits=(1,))
    v2_local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"

    def v1(client: str) -> bytes:
        family, dst = ("TCP6", "::1") if ":" in client else ("TCP4", "127.0.0.1")
        return f"PROXY {family} {client} {dst} 40000 80\r\n".encode()

    def call(header: bytes, method: str, path: str, doc=None, headers=()):
        payload = json.dumps(doc).encode() if doc is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)

        async def go():
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                writer.write(header + head.encode() + b"\r\n" + payload)
                return await read_response(reader, 10)
            finally:
                writer.close()

        return asyncio.run(go())

    def buy(header: bytes, user: str):
        return call(header, "POST", f"/api/v1/events/{ev}/buy", {"sku": "s0", "qty": 1},
                    [("X-User-Id", user)])

    try:
        deadline = time.monotonic() + 15
        while call(v2_local, "GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready through a LOCAL health check"
            time.sleep(0.1)
        status, data = call(b"", "GET", "/readyz")
        assert (status, data["error"]) == (400, "bad_request")  # no header: refused
        status, _ = call(v1("198.51.100.9"), "PUT", f"/api/v1/admin/events/{ev}", body,
                         [("Authorization", f"Bearer {ADMIN}")])
        assert status in (200, 201)
        acked = []
        status, order = buy(v1("198.51.100.1"), "a1")
        assert status == 200, order
        acked.append(order)
        assert buy(v1("198.51.100.1"), "a2")[0] == 429  # same client, over its rate
        status, order = buy(v1("2001:db8::1"), "a3")  # another client
        assert status == 200, order
        acked.append(order)
        assert buy(b"", "a4")[0] == 400  # no header: refused, nothing sold
        # (the API is behind the balancer too: the checks read Redis only)
        figures = check_invariants(r, None, ev, body, acked)
        assert figures["s0"]["sold"] == 2
    finally:
        gw.stop()


def test_rate_limits_follow_the_client_behind_a_trusted_proxy(redis_server, tmp_path, r):
    """With 127.0.0.1 as a trusted proxy, the per-IP limit applies to the
    X-Forwarded-For client; without that setting the header changes nothing."""
    trusting = Gateway(redis_server.url, tmp_path / "t", workers=1,
                       extra=["--ip-rate", "1", "--ip-burst", "1",
                              "--trusted-proxies", "127.0.0.0/8"]).start()
    plain = Gateway(redis_server.url, tmp_path / "p", workers=1,
                    extra=["--ip-rate", "1", "--ip-burst", "1"]).start()
    ev = new_id("xff")
    body = event_body(stock=(100,), limits=(1,))
    try:
        trusting.put_event(ev, body)
        plain.wait_event(ev)
        acked = []

        def buy(gw, user, client):
            return gw.buy(ev, "s0", user, headers={"X-Forwarded-For": client})

        status, order, _ = buy(trusting, "a1", "198.51.100.1")
        assert status == 200
        acked.append(order)
        assert buy(trusting, "a2", "198.51.100.1")[0] == 429  # same client, over its rate
        status, order, _ = buy(trusting, "a3", "198.51.100.2")  # another client
        assert status == 200
        acked.append(order)
        status, order, _ = buy(plain, "b1", "198.51.100.3")
        assert status == 200
        acked.append(order)
        # not trusted: every request is 127.0.0.1's, whatever the header says
        assert buy(plain, "b2", "198.51.100.4")[0] == 429
        check_invariants(r, trusting, ev, body, acked)
    finally:
        trusting.stop()
        plain.stop()


def _out_of_the_box(data_dir) -> Gateway:
    """``flashgate serve`` as a new user runs it: no Redis, no event, no token given."""
    gw = Gateway("", data_dir)
    gw.args = [sys.executable, "-m", "flashgate.cli", "serve", "--host", "127.0.0.1",
               "--port", "0", "--workers", "2", "--data-dir", str(data_dir)]
    return gw.start()


def test_serve_out_of_the_box_sells_the_demo_from_an_embedded_redis(tmp_path):
    data = tmp_path / "data"
    gw = _out_of_the_box(data)
    try:
        banner = "".join(gw.output)
        redis_url = re.search(r"embedded redis-server on (unix://\S+)", banner).group(1)
        # not a terminal: the banner names the token's file, it does not print the token
        token_file = re.search(r"admin token: in (\S+)", banner).group(1)
        token = open(token_file).read().strip()
        assert token not in banner
        # the banner's own buy command, run as printed
        buy = re.search(r"curl -X POST -H 'X-User-Id: (\w+)' -d '(.*)' http://[^/]+(/\S+)",
                        banner)
        assert buy, banner
        user, body, path = buy.group(1), json.loads(buy.group(2)), buy.group(3)
        status, view, _ = gw.request("GET", path.rsplit("/", 1)[0])
        assert status == 200 and view["state"] == "live", view
        status, order, _ = gw.request("POST", path, body, headers={"X-User-Id": user})
        assert status == 200, order
        deadline = time.monotonic() + 5  # counters reach Redis at the next flush
        while True:
            status, stats, _ = gw.request("GET", f"/api/v1/admin/events/{view['id']}/stats",
                                          headers={"Authorization": f"Bearer {token}"})
            assert status == 200, stats
            if (stats["attempts"] >= 1 and stats["orders"] >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert stats["attempts"] >= 1 and stats["orders"] >= 1, stats
    finally:
        assert gw.stop() == 0, "".join(gw.output)
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as s:
        s.connect(redis_url.removeprefix("unix://"))  # the embedded server stopped with it
    assert list((data / "redis").rglob("*.aof*")), "no append-only file"
    assert token_file == str(data / "admin_token")

    # Started again on the same data: the same event, the order, the same admin token.
    gw = _out_of_the_box(data)
    try:
        banner = "".join(gw.output)
        assert re.search(r"admin token: in (\S+)", banner).group(1) == token_file
        assert open(token_file).read().strip() == token
        status, again, _ = gw.request("GET", f"/api/v1/orders/{order['order_id']}",
                                      headers={"Authorization": f"Bearer {token}"})
        assert (status, again) == (200, order)
        redis_url = re.search(r"embedded redis-server on (unix://\S+)", banner).group(1)
        r = redis.Redis.from_url(redis_url)
        try:
            check_invariants(r, None, view["id"], view, [order])
        finally:
            r.close()
    finally:
        assert gw.stop() == 0, "".join(gw.output)


def test_a_redis_that_may_evict_keys_is_warned_of(r, redis_server, caplog):
    """Evicted keys lose orders: serving against a Redis with a maxmemory and an
    evicting policy logs a warning (and still serves: the operator decides)."""
    from flashgate.config import Config
    from flashgate.gateway.supervisor import prepare

    cfg = Config(redis=redis_server.url, demo=False)
    caplog.set_level("WARNING", logger="flashgate")
    asyncio.run(prepare(cfg))
    assert "may evict" not in caplog.text
    old = r.config_get("maxmemory*")
    try:
        r.config_set("maxmemory", 8 << 30)
        r.config_set("maxmemory-policy", "allkeys-lru")
        asyncio.run(prepare(cfg))
    finally:
        r.config_set("maxmemory-policy", old["maxmemory-policy"])
        r.config_set("maxmemory", old["maxmemory"])
    assert "maxmemory-policy allkeys-lru" in caplog.text
