"""Fault injection under buying load, checked Jepsen-style.

Every client outcome is recorded as ok (200), fail (a definite 4xx) or
indeterminate (5xx, reset, timeout). Afterwards: ok ⊆ orders in Redis ⊆ ok ∪
indeterminate, plus the invariants of every test (sold <= stock, Σ buyers == sold ==
orders in the stream, nobody over the limit)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time

import pytest
import redis

from flashgate.embedded import EmbeddedRedis
from tests.support import Gateway, check_invariants, event_body, new_id, read_response

# FLASHGATE_SOAK=10 makes every load phase 10 times longer (soak runs, by hand)
SOAK = float(os.environ.get("FLASHGATE_SOAK", "1"))


class History:
    def __init__(self):
        self.ok: dict[str, dict] = {}  # user -> order
        self.fail: set[str] = set()
        self.indeterminate: set[str] = set()
        self.other_5xx: dict[int, int] = {}  # anything but 503 is a defect

    def check(self, r: redis.Redis, ev: str, body: dict) -> dict:
        check_invariants(r, None, ev, body, list(self.ok.values()), exact=False)
        stored: dict[str, int] = {}
        oversold = 0
        for sku in body["skus"]:
            p = "fg:{" + ev + ":" + sku["id"] + "}:"
            stored.update({k.decode(): int(v) for k, v in r.hgetall(p + "buyers").items()})
            oversold += max(0, int(r.get(p + "sold") or 0) - int(r.get(p + "stock") or 0))
        lost = set(self.ok) - set(stored)
        phantom = set(stored) - set(self.ok) - self.indeterminate
        assert not lost, f"acknowledged orders lost: {sorted(lost)[:5]}"
        assert not phantom, f"orders nobody may have asked for: {sorted(phantom)[:5]}"
        assert not (set(stored) & self.fail), "a refused request left an order"
        assert not self.other_5xx, f"answers other than 503 from the server: {self.other_5xx}"
        return {"acknowledged": len(self.ok), "failed": len(self.fail),
                "indeterminate": len(self.indeterminate), "stored": len(stored),
                "lost": len(lost), "oversold": oversold,
                "indeterminate_committed": len(set(stored) & self.indeterminate)}


async def buyer_loop(port: int, ev: str, history: History, users, until: float,
                     enough=None):
    """One keep-alive client buying for fresh users until ``until`` (or until
    ``enough()`` says so); reconnects when the server closes or resets the connection."""
    reader = writer = None
    for user in users:
        if time.monotonic() >= until or (enough is not None and enough()):
            break
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = json.dumps({"sku": "s0"}).encode()
            writer.write((f"POST /api/v1/events/{ev}/buy HTTP/1.1\r\nHost: t\r\n"
                          f"X-User-Id: {user}\r\nContent-Length: {len(payload)}\r\n\r\n")
                         .encode() + payload)
            answer = await read_response(reader, timeout=5)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            answer = None
        if answer is None:
            history.indeterminate.add(user)
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        status, data = answer
        if status == 200:
            history.ok[user] = data
        elif 400 <= status < 500:
            history.fail.add(user)
        else:
            history.indeterminate.add(user)
            if status != 503:
                history.other_5xx[status] = history.other_5xx.get(status, 0) + 1
    if writer is not None:
        writer.close()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_killed_and_restarted_from_its_aof(tmp_path, fsync, capsys):
    """kill -9 of Redis under load, restart from the AOF on the same port. While it
    is away: purchases 503, reads served, /readyz 503. After: ready again within 5 s,
    selling resumes; with appendfsync always no acknowledged order is lost (the
    process crash loses nothing with everysec either: the kernel has the data)."""
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, appendfsync=fsync).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=2).start()
    r = redis.Redis.from_url(server.url)
    ev = new_id("crash")
    body = event_body(stock=(100_000,))
    gw.put_event(ev, body)
    history = History()
    kill_at = time.monotonic() + 1.0 * SOAK
    stop_at = kill_at + 3.0 * SOAK
    away: dict = {}

    async def fault():
        await asyncio.sleep(max(0.0, kill_at - time.monotonic()))
        server.kill()
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        status, _, headers = await loop.run_in_executor(None, gw.buy, ev, "s0", "while-away")
        away["buy"] = status
        away["retry_after"] = headers.get("Retry-After")
        away["view"] = (await loop.run_in_executor(
            None, gw.request, "GET", f"/api/v1/events/{ev}"))[0]
        away["ready"] = (await loop.run_in_executor(None, gw.request, "GET", "/readyz"))[0]
        await asyncio.sleep(0.2)
        EmbeddedRedis(data, appendfsync=fsync, port=server.port).start()
        away["restarted"] = time.monotonic()

    async def main():
        users = [[f"c{k}-{i}" for i in range(100_000)] for k in range(8)]
        await asyncio.gather(fault(), *(buyer_loop(gw.port, ev, history, u, stop_at)
                                       for u in users))

    try:
        asyncio.run(main())
        gw.wait_ready(timeout=5)
        recovery = time.monotonic() - away["restarted"]
        status, order, _ = gw.buy(ev, "s0", "after-restart")
        assert status == 200, order
        history.ok["after-restart"] = order
        history.indeterminate.add("while-away")
        assert away["buy"] == 503 and away["retry_after"] and away["view"] == 200, away
        assert away["ready"] == 503, away
        r = redis.Redis.from_url(server.url)
        figures = history.check(r, ev, body)
        assert history.ok and figures["lost"] == 0
        with capsys.disabled():
            print(f"\n[redis kill -9, appendfsync {fsync}] kills=1 {figures} "
                  f"recovery_s={recovery:.2f}")
    finally:
        gw.stop(signal.SIGKILL)
        r.close()
        stopper = redis.Redis(port=server.port)
        try:
            stopper.shutdown(nosave=True)
        except (redis.ConnectionError, redis.ResponseError):
            pass


def test_workers_killed_three_times_during_a_sale(tmp_path, capsys):
    """kill -9 of a worker three times while buyers hammer: the supervisor restarts
    it, what it had in flight was never acknowledged, the other worker goes on
    selling, and every unit is sold in the end."""
    from tests.integration.test_operations import worker_pids

    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=2).start()
    r = redis.Redis.from_url(server.url)
    ev = new_id("wkill")
    body = event_body(stock=(3000,))
    gw.put_event(ev, body)
    history = History()
    start = time.monotonic()
    kills = []

    async def killer():
        loop = asyncio.get_running_loop()
        for at in (0.5, 1.3, 2.1):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            pids = await loop.run_in_executor(None, worker_pids, gw)
            if pids:
                os.kill(pids[len(kills) % len(pids)], signal.SIGKILL)
                kills.append(pids[len(kills) % len(pids)])

    async def main(until, prefix):
        users = [[f"{prefix}{k}-{i}" for i in range(100_000)] for k in range(8)]
        jobs = [buyer_loop(gw.port, ev, history, u, until) for u in users]
        if prefix == "w":
            jobs.append(killer())
        await asyncio.gather(*jobs)

    try:
        asyncio.run(main(start + 3.0 * SOAK, "w"))
        gw.wait_ready(timeout=10)
        # whatever is left sells to late buyers: no unit is stranded
        asyncio.run(main(time.monotonic() + 5.0, "late"))
        figures = history.check(r, ev, body)
        sold = int(r.get("fg:{" + ev + ":s0}:sold"))
        assert len(kills) == 3
        assert sold == 3000, f"units left unsold: {3000 - sold}"
        with capsys.disabled():
            print(f"\n[worker kill -9 x{len(kills)}] {figures} sold={sold}")
    finally:
        gw.stop(signal.SIGKILL)
        r.close()
        server.stop()


def test_the_whole_gateway_restarts_during_a_sale(tmp_path, capsys):
    """SIGTERM the gateway mid-sale, start a new one on the same Redis: it recovers
    the event and every counter from Redis, goes on selling, and the totals add up."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    r = redis.Redis.from_url(server.url)
    ev = new_id("restart")
    body = event_body(stock=(10_000,))
    history = History()
    try:
        first = Gateway(server.url, tmp_path / "gw1", workers=2).start()
        first.put_event(ev, body)

        async def load(port, prefix, seconds, enough=None):
            until = time.monotonic() + seconds
            users = [[f"{prefix}{k}-{i}" for i in range(100_000)] for k in range(8)]
            await asyncio.gather(*(buyer_loop(port, ev, history, u, until, enough)
                                   for u in users))

        # the restart comes mid-sale: after some hundreds of units, whatever the speed
        asyncio.run(load(first.port, "a", 30.0, enough=lambda: len(history.ok) >= 300))
        sold_before = int(r.get("fg:{" + ev + ":s0}:sold"))
        assert 0 < sold_before < 10_000, sold_before  # the restart comes mid-sale
        assert first.stop() == 0
        second = Gateway(server.url, tmp_path / "gw2", workers=2).start()
        try:
            second.wait_event(ev)
            view = second.request("GET", f"/api/v1/events/{ev}")[1]
            assert view["skus"][0]["sold"] == sold_before  # recovered from Redis
            asyncio.run(load(second.port, "b", 8.0))
            figures = history.check(r, ev, body)
            sold = int(r.get("fg:{" + ev + ":s0}:sold"))
            assert sold == 10_000
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                stats = second.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
                attempts = len(history.ok) + len(history.fail) + len(history.indeterminate)
                if stats["attempts"] == attempts:
                    break
                time.sleep(0.1)
            assert stats["attempts"] == attempts, (stats["attempts"], attempts)
            assert stats["units_sold"] == sold and stats["orders"] == len(history.ok)
            with capsys.disabled():
                print(f"\n[gateway restart] sold before={sold_before} {figures} "
                      f"attempts counted={stats['attempts']}")
        finally:
            second.stop()
    finally:
        r.close()
        server.stop()


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (libfaketime)")
def test_a_worker_whose_clock_is_off_refuses_to_sell(tmp_path, monkeypatch):
    """A gateway whose wall clock is 5 s ahead of Redis TIME (bound: 2 s) says so in
    /readyz and its log, answers purchases 503 and sells nothing."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    r = redis.Redis.from_url(server.url)
    monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    gw = Gateway(server.url, tmp_path / "gw", workers=1)
    gw.args = ["faketime", "-f", "+5s", *gw.args]
    gw.args[gw.args.index("--log-level") + 1] = "info"
    try:
        gw.start(wait_ready=False)
        ev = new_id("skew")
        body = event_body(stock=(10,))
        status, _, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", body)
        assert status == 201
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and gw.request("GET", "/readyz")[0] != 503:
            time.sleep(0.05)
        assert gw.request("GET", "/readyz")[0] == 503
        for i in range(5):
            status, data, _ = gw.buy(ev, "s0", f"u{i}")
            assert (status, data["error"]) == (503, "unavailable"), data
        assert any("clock differs from Redis TIME" in line for line in gw.output)
        check_invariants(r, None, ev, body, [])
        assert int(r.get("fg:{" + ev + ":s0}:sold")) == 0
    finally:
        gw.stop(signal.SIGKILL)
        r.close()
        server.stop()


def test_redis_slow_then_cut_off_then_healed(tmp_path, capsys):
    """Between gateway and Redis: 30 ms of latency (the commit queue stays bounded:
    503 beyond it), then the link goes silent in the middle of commits (the
    watchdog gives up on the lost replies: 503, never sold twice), then it heals and
    selling resumes."""
    from tests.faultproxy import FaultProxy

    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    r = redis.Redis.from_url(server.url)
    proxy = FaultProxy(server.port).start()
    gw = Gateway(f"redis://127.0.0.1:{proxy.port}/0", tmp_path / "gw", workers=2,
                 extra=["--commit-queue", "64"]).start()
    ev = new_id("proxy")
    # more than 32 clients can buy in 7 s: the purchase after the heal must find a unit
    body = event_body(stock=(1_000_000,))
    history = History()
    phases: dict = {}
    try:
        gw.put_event(ev, body)

        async def faults():
            await asyncio.sleep(0.5)
            proxy.delay = 0.03
            await asyncio.sleep(1.0)
            phases["slow_ok"] = len(history.ok)
            proxy.blackhole = True  # replies in flight are lost from here
            await asyncio.sleep(3.0)  # the watchdog (2 s) closes the silent link
            proxy.blackhole = False
            proxy.delay = 0.0
            proxy.cut()
            phases["healed_at"] = time.monotonic()

        async def main():
            until = time.monotonic() + 7.0 * SOAK
            users = [[f"p{k}-{i}" for i in range(100_000)] for k in range(32)]
            await asyncio.gather(faults(), *(buyer_loop(gw.port, ev, history, u, until)
                                             for u in users))

        asyncio.run(main())
        gw.wait_ready(timeout=10)
        status, order, _ = gw.buy(ev, "s0", "after-heal")
        assert status == 200, order
        history.ok["after-heal"] = order
        figures = history.check(r, ev, body)
        assert figures["indeterminate"] > 0, "the faults did not bite"
        with capsys.disabled():
            print(f"\n[redis slow, cut, healed] {figures} ok_before_cut={phases['slow_ok']}")
    finally:
        gw.stop(signal.SIGKILL)
        proxy.stop()
        r.close()
        server.stop()


def test_the_drain_ends_within_its_grace_period(tmp_path):
    """SIGTERM while a purchase is stuck on a stalled Redis: the gateway still exits 0
    within the configured grace period (plus the watchdog's bound)."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=1, extra=["--drain-grace", "0.5"]).start()
    ev = new_id("grace")
    body = event_body(stock=(10,))
    r = redis.Redis.from_url(server.url)
    try:
        gw.put_event(ev, body)
        os.kill(server.proc.pid, signal.SIGSTOP)

        async def stuck_then_term():
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            payload = b'{"sku":"s0"}'
            writer.write((f"POST /api/v1/events/{ev}/buy HTTP/1.1\r\nHost: t\r\n"
                          f"X-User-Id: u1\r\nContent-Length: {len(payload)}\r\n\r\n")
                         .encode() + payload)
            await writer.drain()
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 10)
            writer.close()
            return code, time.monotonic() - t0

        code, took = asyncio.run(stuck_then_term())
        assert code == 0
        assert took < 0.5 + 2.0 + 1.0, f"the drain took {took:.1f} s"
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(0.2)  # the stuck commit may still run: indeterminate, never unsafe
        check_invariants(r, None, ev, body, [], exact=False)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        gw.stop(signal.SIGKILL)
        r.close()
        server.stop()
